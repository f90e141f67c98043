"""Does the streaming loader keep the accelerator fed? Loader samples/s vs step samples/s.

`bench_loader(cfg, workers)` builds the run exactly as `md train-student` would (`prepare`),
then measures

- per worker count: samples/s of the loader alone (read + decode + augment + collate, pinned
  when on CUDA, copied to the device with ``non_blocking``), after a warm-up;
- the training step alone (forward, losses, backward, SGD step) repeated on one batch of
  the same loader: the samples/s the accelerator consumes.

The loader keeps up when its samples/s >= the step's (``fed``). Reused by `bench/loader.py`
(and later `md bench loader`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from md.student_train.config import StudentTrainConfig
from md.student_train.resolve import Setup, prepare
from md.student_train.run import loop_settings, make_loader
from md.train import recipe
from md.train.loop import to_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_rate(
    setup: Setup, device: torch.device, workers: int, batches: int, warmup: int = 2
) -> float:
    """Samples/s of the loader alone over `batches` batches after `warmup` (worker start-up
    and the first reads excluded), batches copied to `device`."""
    it = iter(make_loader(setup, 0, warmup + batches, device, num_workers=workers))
    for _ in range(warmup):
        to_device(next(it), device)
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for batch in it:
        to_device(batch, device)
        n += len(batch["id"])
    _sync(device)
    return n / (time.perf_counter() - t0)


def training_step(setup: Setup, device: torch.device) -> Callable[[dict[str, Any]], None]:
    """A closure doing one forward + losses + backward + SGD step on a batch already on
    `device` (the step of `md train-student` without its logging; used by both benches)."""
    cfg = setup.cfg
    s = loop_settings(cfg, setup.iterations)
    model = setup.model.to(device).train()
    if setup.teacher is not None:
        setup.teacher.to(device)
    opt = recipe.make_optimizer(model, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)

    def step(batch: dict[str, Any]) -> None:
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if cfg.amp == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            total = setup.loss_fn(model, batch)["total"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    return step


def step_rate(setup: Setup, device: torch.device, steps: int, warmup: int = 2) -> float:
    """Samples/s of the training step alone, repeated on one batch already on `device`."""
    step = training_step(setup, device)
    batch = to_device(
        next(iter(make_loader(setup, 0, 1, device, num_workers=0))), device, setup.cfg.channels_last
    )
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        step(batch)
    _sync(device)
    return steps * setup.cfg.batch_size / (time.perf_counter() - t0)


def bench_loader(
    cfg: StudentTrainConfig,
    workers: Sequence[int] = (0, 1, 2),
    batches: int = 20,
    steps: int = 5,
    *,
    measure_step: bool = True,
) -> dict[str, Any]:
    """Loader samples/s per worker count vs the step's samples/s (see the module docstring);
    without `measure_step` the step is not run (``step_samples_per_s`` None)."""
    setup = prepare(cfg)
    device = recipe.resolve_device(cfg.device)
    step = step_rate(setup, device, steps) if measure_step else None
    loaders = {w: loader_rate(setup, device, w, batches) for w in workers}
    src = setup.source
    return {
        "device": str(device),
        "task": setup.cfg.task,
        "batch_size": cfg.batch_size,
        "image_hw": list(src.image_hw),
        "crop": list(src.crop_hw) if src.crop_hw else None,
        "flip": src.flip,
        "store": cfg.store or None,
        "mode": "native" if not cfg.distill else "online" if setup.teacher else "offline",
        "step_samples_per_s": None if step is None else round(step, 2),
        "loader_samples_per_s": {str(w): round(r, 2) for w, r in loaders.items()},
        "fed": None if step is None else {str(w): r >= step for w, r in loaders.items()},
        "torch_threads": torch.get_num_threads(),
    }
