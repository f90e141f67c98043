"""Does the streaming loader keep the step fed? Loader samples/s per worker count against the
training step's samples/s (`md.student_train.bench.bench_loader`, which builds the run as
`md train-student` does)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from md.config import resolve_config
from md.student_train.bench import bench_loader
from md.student_train.config import PRESETS, StudentTrainConfig


def bench_loader_vs_step(
    *,
    store: str,
    data: str | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    workers: Sequence[int] = (0, 1, 2),
    batches: int = 20,
    steps: int = 5,
) -> dict[str, Any]:
    """``{loader_samples_per_s: {workers: rate}, step_samples_per_s, fed: {workers: bool},
    ...}`` for the student run `preset` + `overrides` on `store`."""
    cfg = resolve_config(
        StudentTrainConfig,
        presets=PRESETS,
        preset=preset,
        overrides=[*overrides, "progress=false"],
        store=store,
        data=data,
    )
    return {"benchmark": "loader", **bench_loader(cfg, workers, batches=batches, steps=steps)}
