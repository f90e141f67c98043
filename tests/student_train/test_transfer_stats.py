"""The per-level transfer diagnostics (`md.student_train.transfer_stats`): hand-computed
values on small tensors, and a run that logs them reaches the weights of one that does not."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from md.models.checkpoint import load_checkpoint
from md.student_train.transfer_stats import effective_positions, level_stats
from md.train.metrics_log import read_log
from tests.conftest import run_cli

TINY = ["--preset", "cpu-tiny", "batch_size=2", "progress=false"]
LEVELS = ("c3", "c4", "c5")
PER_LEVEL = {
    "teacher_rms", "teacher_l2", "student_rms", "student_l2", "head_rms", "head_l2", "cosine",
    "fmse", "mse", "fmse_positions", "dice", "student_mask", "teacher_mask",
}  # fmt: skip


def test_level_stats_equal_hand_computed_values():
    # One image, C = 2, two positions. Teacher all ones; student (0, 0) then (3, 3).
    t = torch.ones(1, 2, 1, 2)
    s = torch.tensor([[[[0.0, 3.0]], [[0.0, 3.0]]]])
    head = 2 * s
    ms = torch.tensor([[[[0.5, 1.0]]]])
    mt = torch.tensor([[[[1.0, 0.0]]]])
    got = level_stats(s, t, ms, mt, head)
    # D = Σ_c d: 2 at position 0, 8 at position 1; p = softmax(D).
    p1 = 1 / (1 + math.exp(-6.0))
    p0 = 1 - p1
    want = {
        "teacher_rms": 1.0,
        "teacher_l2": math.sqrt(2),
        "student_rms": math.sqrt(18 / 4),
        "student_l2": (0 + math.sqrt(18)) / 2,
        "head_rms": 2 * math.sqrt(18 / 4),
        "head_l2": math.sqrt(72) / 2,
        "cosine": (0 + 1) / 2,  # a zero vector has cosine 0 with anything
        "fmse": (p0 * 2 + p1 * 8) / 2,
        "mse": (1 + 1 + 4 + 4) / 4,
        "fmse_positions": 1 / (p0**2 + p1**2),
        "dice": 1 - 2 * 0.5 / (1.5 + 1.0),
        "student_mask": 0.75,
        "teacher_mask": 0.5,
    }
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-6), k
    # "mean" softmax input: p = softmax(D / C) = softmax(1, 4)
    q1 = 1 / (1 + math.exp(-3.0))
    mean = level_stats(s, t, ms, mt, None, focal_softmax="mean")
    assert mean["fmse"] == pytest.approx(((1 - q1) * 2 + q1 * 8) / 2, rel=1e-6)
    assert "head_rms" not in mean


def test_effective_positions_of_uniform_and_one_hot_weights():
    w = torch.zeros(2, 3, 4)
    w[0] = 1 / 12
    w[1, 0, 0] = 1
    assert float(effective_positions(w)) == pytest.approx((12 + 1) / 2)


def _train(out: Path, *args: str) -> None:
    run_cli("train-student", "--out", str(out), *TINY, *args)


def test_logged_stats_and_unchanged_weights(full_store, tmp_path):
    args = ("--store", str(full_store), "iterations=3", "log_every=2", "flip=false")
    on, off = tmp_path / "on.pt", tmp_path / "off.pt"
    _train(on, *args)
    _train(off, *args, "transfer_stats=false")
    wa, wb = load_checkpoint(on)["weights"], load_checkpoint(off)["weights"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    logs = [
        [r for r in read_log(p.with_suffix(".metrics.jsonl")) if r.get("kind", "train") == "train"]
        for p in (on, off)
    ]
    assert [r["iteration"] for r in logs[0]] == [0, 2]  # logged steps only (and the last)
    for rec, plain in zip(*logs, strict=True):
        want = {f"stats/{lv}/{k}" for lv in LEVELS for k in PER_LEVEL}
        want |= {"stats/weighted_attention", "stats/weighted_semantic", "stats/transfer_to_task"}
        assert want == {k for k in rec if k.startswith("stats/")}
        assert not any(k.startswith("stats/") for k in plain)
        assert {k: v for k, v in rec.items() if not k.startswith("stats/")} == plain
        # The per-level values are the parts the loss averages over the levels (λ = 1).
        for part, key in (("semantic", "fmse"), ("attention", "dice")):
            mean = sum(rec[f"stats/{lv}/{key}"] for lv in LEVELS) / len(LEVELS)
            assert mean == pytest.approx(rec[f"loss/{part}"], rel=1e-5), part
            assert rec[f"stats/weighted_{part}"] == pytest.approx(rec[f"loss/{part}"], rel=1e-6)
        transfer = rec["loss/attention"] + rec["loss/semantic"]
        assert rec["stats/transfer_to_task"] == pytest.approx(transfer / rec["loss/task"], 1e-5)
        for lv in LEVELS:  # attended head input s ⊗ (1 + m) is at least s, elementwise (s >= 0)
            assert rec[f"stats/{lv}/head_rms"] >= rec[f"stats/{lv}/student_rms"]
            assert rec[f"stats/{lv}/mse"] > 0 and rec[f"stats/{lv}/teacher_rms"] > 0
