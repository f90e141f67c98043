import itertools
import math

import pytest
import torch

from md.errors import MdError
from md.models.checkpoint import file_sha256, load_checkpoint, weights_sha256
from md.train.checkpoint import save_checkpoint
from md.train.recipe import lr_at, make_optimizer
from md.train.sampling import IterationBatchSampler

KW = {"lr": 1e-2, "iterations": 3500, "warmup_iters": 500, "warmup_start_lr": 1e-6}


def test_lr_schedule_matches_md_recipe():
    # MD §4.2: linear from 1e-6 to 1e-2 over 500 iterations, then cosine annealing.
    assert lr_at(0, **KW) == pytest.approx(1e-6)
    assert lr_at(250, **KW) == pytest.approx(1e-6 + (1e-2 - 1e-6) * 0.5)
    assert lr_at(500, **KW) == pytest.approx(1e-2)
    assert lr_at(500 + 1500, **KW) == pytest.approx(0.5e-2)  # half-way through the cosine
    assert lr_at(3499, **KW) < 1e-7
    lrs = [lr_at(i, **KW) for i in range(500, 3500)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_no_weight_decay_on_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = make_optimizer(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
    decay, no_decay = opt.param_groups
    assert [p.ndim for p in decay["params"]] == [4]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_batch_order_is_a_function_of_seed_and_iteration():
    full = list(IterationBatchSampler(10, 4, 8, seed=3))
    resumed = list(IterationBatchSampler(10, 4, 8, seed=3, start=5))
    assert resumed == full[5:]
    # Each epoch is a permutation: the first 10 positions cover every index once.
    first_epoch = [i for batch in full for i, _ in batch][:10]
    assert sorted(first_epoch) == list(range(10))
    assert list(IterationBatchSampler(10, 4, 8, seed=4)) != full


def test_checkpoint_round_trip_and_tamper(tmp_path):
    sd = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2)}
    path = tmp_path / "m.pt"
    save_checkpoint(path, {"task": "detection", "model_kind": "teacher", "weights": sd})
    ck = load_checkpoint(path, task="detection", model_kind="teacher")
    assert torch.equal(ck["weights"]["w"], sd["w"]) and ck["weights_sha256"] == weights_sha256(sd)
    assert len(file_sha256(path)) == 64
    with pytest.raises(MdError, match="not segmentation"):
        load_checkpoint(path, task="segmentation")
    with pytest.raises(MdError, match="student"):
        load_checkpoint(path, model_kind="student")
    ck["weights"]["w"][0, 0] = 99.0  # edit the weights but keep the recorded hash
    torch.save(ck, path)
    with pytest.raises(MdError, match="damaged"):
        load_checkpoint(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MdError, match=r"junk\.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def test_lr_math_is_cosine():
    mid = lr_at(500 + 750, lr=1.0, iterations=3500, warmup_iters=500, warmup_start_lr=0.0)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
