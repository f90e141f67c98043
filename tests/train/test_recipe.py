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


def test_run_control_fields_come_from_the_config_declarations():
    """What a resume may change is declared on the fields (`recipe.run_control`): the shared
    `RunConfig` ones for both commands, plus the student's loader / DDP timeout settings.
    Precision and memory layout change what a step computes, so a resume must keep them."""
    from md.student_train import StudentTrainConfig
    from md.teacher_train import TeacherTrainConfig
    from md.train.loop import RUN_CONTROL_FIELDS, loop_settings, training_identity
    from md.train.recipe import RunConfig, run_control_fields

    shared = {"device", "num_workers", "log_every", "checkpoint_every", "stop_after", "progress"}
    assert RUN_CONTROL_FIELDS == run_control_fields(RunConfig) == shared
    assert run_control_fields(TeacherTrainConfig) == shared
    assert run_control_fields(StudentTrainConfig) == shared | {
        "prefetch_factor",
        "pin_memory",
        "prefetch_batches",
        "device_inputs",
        "image_cache",
        "dist_timeout_s",
        "transfer_stats",
    }
    assert loop_settings(StudentTrainConfig(), 10).run_control == run_control_fields(
        StudentTrainConfig
    )
    config = {
        "lr": 0.1,
        "amp": "bf16",
        "channels_last": True,
        "stop_after": 3,
        "prefetch_factor": 4,
    }
    assert training_identity(config, run_control_fields(StudentTrainConfig)) == {
        "lr": 0.1,
        "amp": "bf16",
        "channels_last": True,
    }


def test_loop_settings_come_from_the_config_in_one_place():
    from md.teacher_train import TeacherTrainConfig
    from md.train.loop import loop_settings

    cfg = TeacherTrainConfig(
        lr=0.5,
        momentum=0.8,
        weight_decay=0.2,
        warmup_iters=50,
        warmup_start_lr=0.01,
        seed=7,
        amp="bf16",
        channels_last=True,
        log_every=3,
        checkpoint_every=9,
        stop_after=4,
        progress=False,
    )
    s = loop_settings(cfg, 20, sync_batchnorm=False, find_unused_parameters=True)
    assert (s.iterations, s.lr, s.momentum, s.weight_decay, s.warmup_start_lr, s.seed) == (
        20,
        0.5,
        0.8,
        0.2,
        0.01,
        7,
    )
    assert s.warmup_iters == 20  # never longer than the run
    assert (s.amp, s.channels_last, s.log_every, s.checkpoint_every, s.stop_after) == (
        "bf16",
        True,
        3,
        9,
        4,
    )
    assert not s.progress and not s.sync_batchnorm and s.find_unused_parameters


def test_both_commands_presets_are_the_size_presets():
    from md.student_train import PRESETS as STUDENT
    from md.teacher_train import PRESETS as TEACHER
    from md.train.recipe import SIZE_PRESETS

    assert TEACHER == SIZE_PRESETS
    assert set(STUDENT) == set(SIZE_PRESETS)
    for name, values in SIZE_PRESETS.items():
        assert {k: STUDENT[name][k] for k in values} == values  # the student adds, never changes
