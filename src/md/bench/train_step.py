"""One student training step three ways, same batch size and model (MD's speed argument):

- ``offline``: targets streamed from the store (loader read + decode + step), the default
  `md train-student` mode;
- ``online``: the teacher run live on the same batch (loader of images + teacher forward +
  step), the `online_teacher` mode;
- ``in_memory``: targets already in device memory, the step alone on one batch (the bound).

Each reports the median ms per step and the peak device memory (CUDA: the allocator's peak;
CPU: ``null``, torch's CPU allocator keeps no peak).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch

from md.config import resolve_config
from md.student_train.run import (
    PRESETS,
    Setup,
    StudentTrainConfig,
    loop_settings,
    make_loader,
    prepare,
)
from md.train import recipe
from md.train.loop import to_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stepper(setup: Setup, device: torch.device) -> Callable[[dict[str, Any]], None]:
    """A closure doing one forward + losses + backward + SGD step on a device batch."""
    cfg = setup.cfg
    s = loop_settings(cfg, setup.iterations)
    model = setup.model.to(device).train()
    if setup.teacher is not None:
        setup.teacher.to(device)
    opt = recipe.make_optimizer(model, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)

    def step(batch: dict[str, Any]) -> None:
        amp = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.amp == "bf16"
               else contextlib.nullcontext())
        with amp:
            total = setup.loss_fn(model, batch)["total"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    return step


def _time(batches: Iterator[dict[str, Any]], step: Callable[[dict[str, Any]], None],
          device: torch.device, channels_last: bool, warmup: int, steps: int) -> dict[str, Any]:
    """Median ms of (next batch + copy to device + step) and the peak device memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        step(to_device(next(batches), device, channels_last))
        _sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None)
    return {"ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3),
            "peak_memory_mb": None if peak is None else round(peak, 1)}


def _run_mode(cfg: StudentTrainConfig, device: torch.device, warmup: int, steps: int,
              repeat_first: bool) -> dict[str, Any]:
    setup = prepare(cfg)
    step = _stepper(setup, device)
    n = 1 if repeat_first else warmup + steps
    loader = iter(make_loader(setup, 0, n, device, num_workers=setup.cfg.num_workers))
    if repeat_first:  # targets already on the device: the same batch every step
        first = to_device(next(loader), device, setup.cfg.channels_last)

        def again() -> Iterator[dict[str, Any]]:
            while True:
                yield first

        return _time(again(), step, device, False, warmup, steps)
    return _time(loader, step, device, setup.cfg.channels_last, warmup, steps)


def bench_train_step(*, store: str, data: str, teacher: str, preset: str | None = None,
                     overrides: tuple[str, ...] = (), device: str = "auto", warmup: int = 2,
                     steps: int = 5) -> dict[str, Any]:
    """``{offline_ms, online_ms, in_memory_ms, peak_memory_mb: {offline, online, in_memory},
    ...}``: one student step per mode (see the module docstring)."""
    base = resolve_config(StudentTrainConfig, presets=PRESETS, preset=preset,
                          overrides=[*overrides, "progress=false"], data=data, device=device)
    dev = recipe.resolve_device(base.device)
    offline = replace(base, store=store)
    online = replace(base, store="", online_teacher=teacher)
    # enough iterations that the loaders never run dry
    modes = {"offline": (offline, False), "online": (online, False), "in_memory": (offline, True)}
    out: dict[str, Any] = {}
    for name, (cfg, in_memory) in modes.items():
        cfg = replace(cfg, iterations=max(cfg.iterations, warmup + steps))
        out[name] = _run_mode(cfg, dev, warmup, steps, in_memory)
    return {
        "benchmark": "train-step", "device": str(dev), "batch_size": base.batch_size,
        "thermal_factor": base.thermal_factor, "width": base.width or None,
        "steps": steps, "warmup": warmup,
        "offline_ms": out["offline"]["ms"], "online_ms": out["online"]["ms"],
        "in_memory_ms": out["in_memory"]["ms"],
        "peak_memory_mb": {k: v["peak_memory_mb"] for k, v in out.items()},
        "modes": out, "torch_threads": torch.get_num_threads(),
    }
