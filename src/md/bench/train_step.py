"""One student training step three ways, same batch size and model (MD's speed argument):

- ``offline``: targets streamed from the store (loader read + decode + step), the default
  `md train-student` mode;
- ``online``: the teacher run live on the same batch (loader of images + teacher forward +
  step), the `online_teacher` mode;
- ``in_memory``: targets already in device memory, the step alone on one batch (the bound).

Each reports the median ms per step and the peak memory: on CUDA the allocator's peak
(``torch.cuda.max_memory_allocated``, reset per mode); on CPU, where torch's allocator keeps
no peak, the peak resident set size of the process sampled every 2 ms during the mode's steps
(Linux ``/proc/self/statm``; ``null`` elsewhere) and its rise over the RSS before them
(``peak_rss_mb`` / ``rss_rise_mb``), which also counts the loader's buffers.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch

from md.config import resolve_config
from md.student_train.bench import training_step
from md.student_train.run import (
    PRESETS,
    StudentTrainConfig,
    make_loader,
    prepare,
)
from md.train import recipe
from md.train.loop import to_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float | None:
    """Resident set size of this process in MiB (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssPeak:
    """Samples the RSS on a thread while active: ``peak_mb`` and ``rise_mb`` over the start."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.start_mb = _rss_mb()
        self.peak_mb = self.start_mb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            now = _rss_mb()
            if now is not None and self.peak_mb is not None:
                self.peak_mb = max(self.peak_mb, now)

    def __enter__(self) -> RssPeak:
        if self.start_mb is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.start_mb is not None:
            self._stop.set()
            self._thread.join()
            now = _rss_mb()
            if now is not None and self.peak_mb is not None:
                self.peak_mb = max(self.peak_mb, now)

    def report(self) -> dict[str, float | None]:
        if self.start_mb is None or self.peak_mb is None:
            return {"peak_rss_mb": None, "rss_rise_mb": None}
        return {"peak_rss_mb": round(self.peak_mb, 1),
                "rss_rise_mb": round(self.peak_mb - self.start_mb, 1)}


def _time(batches: Iterator[dict[str, Any]], step: Callable[[dict[str, Any]], None],
          device: torch.device, channels_last: bool, warmup: int, steps: int) -> dict[str, Any]:
    """Median ms of (next batch + copy to device + step) and the peak device memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with RssPeak() as rss:
        for i in range(warmup + steps):
            _sync(device)
            t0 = time.perf_counter()
            step(to_device(next(batches), device, channels_last))
            _sync(device)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    if device.type == "cuda":
        peak: float | None = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = rss.report()["peak_rss_mb"]
    return {"ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3),
            "peak_memory_mb": None if peak is None else round(peak, 1),
            "peak_memory_kind": "cuda_allocated" if device.type == "cuda" else "process_rss",
            **rss.report()}


def _run_mode(cfg: StudentTrainConfig, device: torch.device, warmup: int, steps: int,
              repeat_first: bool) -> dict[str, Any]:
    setup = prepare(cfg)
    step = training_step(setup, device)
    n = 1 if repeat_first else warmup + steps
    loader = iter(make_loader(setup, 0, n, device, num_workers=setup.cfg.num_workers))
    if repeat_first:  # targets already on the device: the same batch every step
        first = to_device(next(loader), device, setup.cfg.channels_last)

        def again() -> Iterator[dict[str, Any]]:
            while True:
                yield first

        timed = _time(again(), step, device, False, warmup, steps)
    else:
        timed = _time(loader, step, device, setup.cfg.channels_last, warmup, steps)
    return {**timed, "width": setup.cfg.width}


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
        "thermal_factor": base.thermal_factor, "width": out["offline"]["width"],
        "steps": steps, "warmup": warmup,
        "offline_ms": out["offline"]["ms"], "online_ms": out["online"]["ms"],
        "in_memory_ms": out["in_memory"]["ms"],
        "peak_memory_mb": {k: v["peak_memory_mb"] for k, v in out.items()},
        "modes": out, "torch_threads": torch.get_num_threads(),
    }
