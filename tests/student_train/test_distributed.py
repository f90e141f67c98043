"""Multi-process student training (DDP under torchrun, gloo on CPU).

- the distributed shard-aware sampler: disjoint shards per rank, the ranks' parts of an
  iteration = the one-process global batch with the same shard groups G, a pure function of
  (seed, iteration), G = 1 unchanged;
- the pieces that keep a W-rank step equal to a one-process step on the global batch: loss
  normalisers (focal loss positives, weighted CE weight sums) and BatchNorm statistics over
  the global batch, checked on 2 spawned gloo ranks against one process;
- end to end with torchrun: 2 ranks vs 1 process with the same global batch and G (weights
  within a stated tolerance), rank-0-only outputs, a prefix-free checkpoint; resume (slow).

Tolerances: every 2-rank vs 1-process comparison is between two float32 computations of the
same sums in different orders (DDP averages two half-batch gradients, `SyncBatchNorm2d` pools
two half-batch statistics by the parallel-variance formula where torch's BatchNorm takes them
over the whole batch, losses sum half batches), so the bounds come from float32 arithmetic
(u = 2^-24), not from what one CPU's kernels give (an Intel Xeon differs from an AMD EPYC by
~70x here):

- one step (`test_rank_losses_and_batchnorm_average_to_the_one_process_batch`): the longest
  sums hold n <= 4 * 64 * 64 = 2^14 terms. A float32 sum in any order is within n * u
  = 2^-10 of sum|terms| (Higham, Accuracy and Stability, 4.2), and with probability
  1 - 2 exp(-lambda^2 / 2) within lambda * sqrt(n) * u (Higham & Mary, SISC 2019): 2^-14
  at lambda = 8. Losses are sums of nonnegative terms (focal, weighted CE, box): relative
  2^-13 for the two runs. Gradients: 2^-12 of the tensor's largest |element| (norm-wise,
  not element-wise: an element that is a cancelling sum has no relative accuracy), i.e.
  the two runs' 2^-13 with sum|terms| up to 2x the largest gradient. BatchNorm running
  statistics: momentum * 2^-12 * sqrt(E[x^2]) (means) and * E[x^2] (variances) per
  channel, the scales of the pooled sums, plus 4 ulp for the lerp that writes them.
  Measured here: gradients 1.7e-6 (2^-19), losses 1e-7; without the synced normalisers
  the gradients differ by 4.6e-2 to 1.6 and the losses by 1.8e-3, without synchronised
  BatchNorm the statistics by 2.7e-3 or more.
- end to end (4 SGD-with-momentum steps under torchrun): the gradient rounding above, carried
  through the steps, plus the kinks that rounding can flip (a ReLU input or a max-pool tie
  within rounding of the switch moves one term of a gradient sum of >= 10^3 terms), give
  a difference that is a small share of the total update p_end - p_start, not of p:
  measured 4e-5 of the update on an AMD EPYC (besides last-bit differences), 1.8e-3 on an
  Intel Xeon (trunk.layer2.0.conv1.weight), where the one fixed 5e-6 failed.
  We allow 2^-6 (1.6e-2) of each tensor's update plus 2 ulp(max|p_end|) (the final
  parameter add rounds once per side); running statistics likewise relative to their
  change from (0, 1). The logged loss of step k is the loss at the step-k weights: within
  2^-6 of how far the steps moved it (|L_k - L_0|) plus the one-step 2^-13. For scale:
  without the synced loss normalisers the parameters differ by up to 0.07, without
  synchronised BatchNorm by 0.17, with G = 1 instead of 2 (other batches) by 0.21, hundreds
  to thousands of times the bound (`test_the_update_bound_catches_an_unsynced_run`).
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from md.models.checkpoint import load_checkpoint
from md.models.heads import DetectionHead, SegmentationHead
from md.student_train.loader import ShardAwareSampler
from md.train import distributed
from md.train.metrics_log import read_log
from tests.conftest import REPO, run_cli

TINY = ["--preset", "cpu-tiny", "progress=false"]
# Global batch 4 over the 2 shards of `full_store` (8 samples, shards of 4): G = 2 groups.
RUN = ("batch_size=4", "iterations=4", "flip=true", "crop=64", "log_every=1")


# --- sampler -----------------------------------------------------------------------------------


def _sampler(groups=2, batch=8, seed=0, mask=None):
    mask = np.ones(40, dtype=bool) if mask is None else mask  # 10 shards of 4
    return ShardAwareSampler(40, 4, mask, batch, seed, window_shards=2, groups=groups)


def test_one_group_keeps_the_single_process_batches():
    # Recorded from the sampler before shard groups existed: G = 1 must not move.
    s = ShardAwareSampler(40, 4, np.ones(40, dtype=bool), 5, 0, window_shards=2)
    assert [[r for r, _ in s.batch(i)] for i in (0, 7, 8)] == [
        [32, 33, 14, 34, 12],
        [26, 37, 24, 25, 36],
        [27, 26, 8, 25, 11],
    ]
    assert s.batch(0)[0][1] == 4031503310960682583
    assert s.rank_batch(3) == s.batch(3)


def test_ranks_read_disjoint_shards():
    s = _sampler(groups=4, batch=8)
    for world in (2, 4):
        owned = [
            {int(k) for g in s.rank_groups(r, world) for k in s.group_shards(g)}
            for r in range(world)
        ]
        assert set().union(*owned) == set(range(10))
        assert sum(map(len, owned)) == 10  # pairwise disjoint
        for r in range(world):
            read = {row // 4 for i in range(30) for row, _ in s.rank_batch(i, r, world)}
            assert read <= owned[r]


def test_rank_parts_make_up_the_one_process_global_batch():
    one = _sampler(groups=4, batch=8)  # a one-process run with G = 4
    for world in (1, 2, 4):
        s = _sampler(groups=4, batch=8)  # what each of `world` ranks builds
        for i in (0, 5, 23):
            parts = [s.rank_batch(i, r, world) for r in range(world)]
            assert all(len(p) == 8 // world for p in parts)
            assert sorted(k for p in parts for k in p) == sorted(one.batch(i))
    # G = W: concatenating the ranks' parts in rank order is the global batch itself.
    s = _sampler(groups=2, batch=8)
    assert s.rank_batch(9, 0, 2) + s.rank_batch(9, 1, 2) == s.batch(9)


def test_grouped_batches_are_a_function_of_seed_and_iteration():
    a = _sampler(groups=2)
    assert [a.batch(i) for i in range(12)] == [_sampler(groups=2).batch(i) for i in range(12)]
    assert _sampler(groups=2).rank_batch(17, 1, 2) == a.rank_batch(17, 1, 2)  # resume at 17
    assert a.batch(0) != _sampler(groups=2, seed=1).batch(0)
    # No two positions share an augmentation seed (flips / crops differ across ranks).
    seeds = [aug for i in range(12) for _, aug in a.batch(i)]
    assert len(set(seeds)) == len(seeds)
    # Each group covers its own rows once per epoch of that group.
    for g in range(2):
        rows = [r for i in range(5) for r, _ in a.batch(i)[4 * g : 4 * g + 4]]  # 20 = one epoch
        owned = {int(k) for k in a.group_shards(g)}
        assert sorted(rows) == sorted(r for r in range(40) if r // 4 in owned)


def test_sampler_refuses_groups_it_cannot_fill():
    with pytest.raises(ValueError, match="does not divide"):
        _sampler(groups=3, batch=8)
    mask = np.zeros(40, dtype=bool)
    mask[:8] = True  # 2 written shards
    with pytest.raises(ValueError, match="2 written shards"):
        _sampler(groups=4, mask=mask)
    with pytest.raises(ValueError, match="cannot be split"):
        _sampler(groups=2).rank_groups(0, 4)


# --- config errors (before any process waits on another) ----------------------------------------


def _one_line_error(*args: str) -> str:
    err = run_cli("train-student", *TINY, *args, expect=2)
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_global_batch_must_divide_by_the_processes(full_store, tmp_path, monkeypatch):
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    err = _one_line_error(
        "--store", str(full_store), "--out", str(tmp_path / "s.pt"), "batch_size=3"
    )
    assert "batch_size=3" in err and "multiple of 2" in err
    err = _one_line_error(
        "--store", str(full_store), "--out", str(tmp_path / "s.pt"), "shard_groups=3"
    )
    assert "shard_groups=3" in err and "multiple of the 2 processes" in err


def test_shard_groups_need_enough_shards(full_store, tmp_path):
    err = _one_line_error(
        "--store",
        str(full_store),
        "--out",
        str(tmp_path / "s.pt"),
        "batch_size=4",
        "shard_groups=4",
    )
    assert "2 shards for shard_groups=4" in err and "--shard-size" in err


def test_world_size_without_torchrun_is_a_clear_error(full_store, tmp_path, monkeypatch):
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    for k in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    err = _one_line_error(
        "--store", str(full_store), "--out", str(tmp_path / "s.pt"), "batch_size=4"
    )
    assert "WORLD_SIZE=2" in err and "torchrun" in err


def test_normalisers_are_local_outside_a_synced_step():
    n = torch.tensor(0.0)
    assert distributed.share_of_total(n).item() == 1.0
    with distributed.synced_normalisers(distributed.SINGLE):
        assert not distributed.syncing_normalisers()
        assert distributed.share_of_total(torch.tensor(3)).item() == 3


# --- 2 gloo ranks vs one process: loss normalisers and BatchNorm --------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _heads_and_batches(g: torch.Generator):
    """A segmentation head (BatchNorm, ENet-like class weights) and a detection head (focal
    loss over positives), with a global batch of 4 whose halves differ in positives / labels."""
    torch.manual_seed(0)
    seg = SegmentationHead(
        {"c3": 8, "c5": 16},
        num_classes=3,
        psp_channels=8,
        c3_channels=4,
        decoder_channels=8,
        dropout=0.0,
        class_weights=[0.2, 1.0, 3.0],
    )
    det = DetectionHead({"c3": 8, "c4": 8, "c5": 8}, neck_channels=8, tower_depth=1)
    seg_feats = {
        "c3": torch.randn(4, 8, 8, 8, generator=g),
        "c5": torch.randn(4, 16, 2, 2, generator=g),
    }
    labels = torch.randint(0, 3, (4, 64, 64), generator=g)
    labels[:2] = (labels[:2] > 0).long() * 2  # rank 0's half: weights 0.2 / 3.0 only
    det_feats = {f"c{k}": torch.randn(4, 8, 64 >> k, 64 >> k, generator=g) for k in (3, 4, 5)}
    boxes = [
        torch.tensor([[8.0, 4.0, 20.0, 40.0], [30.0, 10.0, 46.0, 50.0]]),
        torch.zeros(0, 4),
        torch.tensor([[10.0, 10.0, 24.0, 44.0]]),
        torch.zeros(0, 4),
    ]
    return seg, det, (seg_feats, {"labels": labels}), (det_feats, {"boxes": boxes})


def _take(batch, rows: slice):
    feats, targets = batch
    return ({k: v[rows] for k, v in feats.items()}, {k: v[rows] for k, v in targets.items()})


def _loss_and_grads(head, batch):
    feats, targets = batch
    loss = sum(head.loss(head(feats, (64, 64)), targets).values())
    head.zero_grad()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in head.parameters()]


LOSS_RTOL = 2.0**-13  # two runs' lambda * sqrt(n) * u, n = 2^14 nonnegative terms, lambda = 8
GRAD_NORMWISE = 2.0**-12  # the same, with sum|terms| up to 2x the tensor's largest gradient
U32 = 2.0**-24  # float32 unit roundoff


def _check_batchnorm_statistics(whole: torch.nn.Module, part: torch.nn.Module) -> None:
    """The rank's running statistics (pooled over the ranks) against the one-process ones."""
    pairs = [
        (a, b)
        for a, b in zip(whole.modules(), part.modules(), strict=True)
        if isinstance(a, torch.nn.BatchNorm2d)
    ]
    assert all(isinstance(b, distributed.SyncBatchNorm2d) for _, b in pairs)  # none: detection
    for one, rank in pairs:
        assert torch.equal(rank.num_batches_tracked, one.num_batches_tracked)
        m = one.momentum  # running = (1 - m) * (0 or 1) + m * batch statistic, from (0, 1)
        mean = one.running_mean.double() / m
        var = (one.running_var.double() - (1 - m)) / m
        second_moment = var + mean**2  # E[x^2]: the scale of both pooled sums
        for name, scale in (("running_mean", second_moment.sqrt()), ("running_var", second_moment)):
            a, b = getattr(one, name).double(), getattr(rank, name).double()
            bound = m * GRAD_NORMWISE * scale + 4 * U32 * a.abs()
            assert bool(((b - a).abs() <= bound).all()), (name, float((b - a).abs().max()))


def _rank_vs_one_process(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        env = distributed.DistEnv(rank, world, rank)
        seg, det, seg_batch, det_batch = _heads_and_batches(torch.Generator().manual_seed(1))
        mine = slice(rank * 4 // world, (rank + 1) * 4 // world)
        for head, batch in ((seg, seg_batch), (det, det_batch)):
            whole = copy.deepcopy(head).train()  # one process, the global batch
            loss_1, grads_1 = _loss_and_grads(whole, batch)
            part = distributed.convert_batchnorm(copy.deepcopy(head), torch.device("cpu")).train()
            with distributed.synced_normalisers(env):
                loss_r, grads_r = _loss_and_grads(part, _take(batch, mine))
            loss_w = distributed.mean_over_ranks({"l": loss_r}, env)["l"]
            for gr in grads_r:  # what DDP does with the gradients
                dist.all_reduce(gr)
                gr /= world
            # Bounds: module docstring (float32 sums of <= 2^14 terms in two orders).
            assert abs(loss_w - loss_1) <= LOSS_RTOL * abs(loss_1), (type(head), loss_w, loss_1)
            for g1, gw in zip(grads_1, grads_r, strict=True):
                diff, scale = float((gw - g1).abs().max()), float(g1.abs().max())
                assert diff <= GRAD_NORMWISE * scale, (type(head), diff, scale)
            _check_batchnorm_statistics(whole, part)
    finally:
        dist.destroy_process_group()


def test_rank_losses_and_batchnorm_average_to_the_one_process_batch():
    mp.spawn(_rank_vs_one_process, args=(2, _free_port()), nprocs=2, join=True)


# --- end to end: torchrun --nproc-per-node 2 -m md.cli train-student -----------------------------


def torchrun(out: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "md.cli",
        "train-student",
        "--out",
        str(out),
        *TINY,
        *args,
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def two_ranks(full_store, tmp_path_factory) -> tuple[Path, str]:
    """An uninterrupted 2-rank run (and rank 0's stdout)."""
    out = tmp_path_factory.mktemp("ddp") / "two.pt"
    return out, torchrun(out, "--store", str(full_store), *RUN).stdout


def _initial_weights(ck: dict) -> dict[str, torch.Tensor]:
    """The student's weights before training: they depend on the seed only (run.py)."""
    from md.models import build_model

    torch.manual_seed(ck["config"]["seed"])
    model = build_model("student", ck["task"], **ck["model_args"])
    return model.state_dict()


def _update_bound(a: torch.Tensor, b: torch.Tensor, start: torch.Tensor) -> tuple[float, float]:
    """(max |b - a|, the float32 bound derived in the module docstring) for one tensor."""
    a, b, start = a.double(), b.double(), start.double()
    update = float((a - start).abs().max())
    ulp = float(torch.finfo(torch.float32).eps) * float(a.abs().max())
    return float((b - a).abs().max()), 2.0**-6 * update + 2 * ulp


def _train_losses(out: Path) -> list[dict]:
    return [
        r
        for r in read_log(out.with_name(out.stem + ".metrics.jsonl"))
        if r.get("kind", "train") == "train"
    ]


def test_two_ranks_match_one_process_with_the_same_groups(
    two_ranks, full_store, synth_det, tmp_path
):
    two, stdout = two_ranks
    one = tmp_path / "one.pt"
    run_cli(
        "train-student",
        "--out",
        str(one),
        "--store",
        str(full_store),
        *TINY,
        *RUN,
        "shard_groups=2",
    )
    assert stdout.count("wrote ") == 1  # rank 0 alone reports
    a, b = load_checkpoint(one)["weights"], load_checkpoint(two)["weights"]
    assert a.keys() == b.keys() and not any(k.startswith("module.") for k in b)
    start = _initial_weights(load_checkpoint(one))
    for k in a:
        diff, bound = _update_bound(a[k], b[k], start[k])
        assert diff <= bound, (k, diff, bound)
    # Rank 0 wrote one log; its losses (averaged over the ranks) are the global batch's.
    la, lb = _train_losses(one), _train_losses(two)
    assert [r["iteration"] for r in lb] == list(range(4))
    for ra, rb in zip(la, lb, strict=True):
        for key in ("loss/cls", "loss/box", "loss/attention", "loss/semantic", "loss/total"):
            # The step-k loss at weights within 2^-6 of their update (module docstring).
            bound = 2.0**-6 * abs(ra[key] - la[0][key]) + LOSS_RTOL * abs(ra[key])
            assert abs(rb[key] - ra[key]) <= bound, (ra["iteration"], key, ra[key], rb[key])
    feed = [r for r in read_log(two.with_name("two.metrics.jsonl")) if r.get("kind") == "loader"]
    assert len(feed) == 1 and feed[0]["world_size"] == 2
    ck = load_checkpoint(two)
    assert ck["world_size"] == 2 and ck["config"]["shard_groups"] == 2
    assert ck["config"] == load_checkpoint(one)["config"]
    for suffix in (".config.yaml", ".loss.png"):
        assert two.with_name("two" + suffix).exists()
    assert not two.with_name("two.pt.resume").exists()
    # A normal student checkpoint: md evaluate model reads it as any other.
    assert "miss_rate" in run_cli("evaluate", "model", str(two), "--data", str(synth_det), "--json")


def test_the_update_bound_catches_an_unsynced_run(two_ranks, full_store, tmp_path):
    """The bound is tight enough to fail: G = 1 (other global batches) breaks it many times."""
    two, _ = two_ranks
    other = tmp_path / "g1.pt"
    run_cli(
        "train-student",
        "--out",
        str(other),
        "--store",
        str(full_store),
        *TINY,
        *RUN,
        "shard_groups=1",
    )
    a, b = load_checkpoint(other)["weights"], load_checkpoint(two)["weights"]
    start = _initial_weights(load_checkpoint(other))
    ratios = [
        d / bound
        for d, bound in (_update_bound(a[k], b[k], start[k]) for k in a if "num_batches" not in k)
    ]
    assert max(ratios) > 100, max(ratios)


@pytest.mark.slow
def test_two_rank_resume_reaches_the_uninterrupted_weights(two_ranks, full_store, tmp_path):
    two, _ = two_ranks
    cut = tmp_path / "cut.pt"
    stopped = torchrun(cut, "--store", str(full_store), *RUN, "stop_after=2")
    assert "continue with --resume" in stopped.stdout
    assert cut.with_name("cut.pt.resume").exists()
    torchrun(cut, "--store", str(full_store), *RUN, "--resume")  # every rank reads rank 0's file
    a, b = load_checkpoint(two)["weights"], load_checkpoint(cut)["weights"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed 2-rank run diverged"
    assert [r["iteration"] for r in _train_losses(cut)] == list(range(4))
