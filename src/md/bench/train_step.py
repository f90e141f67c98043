"""One student training step three ways, same batch size and model (MD's speed argument):

- ``offline``: targets streamed from the store (loader read + decode + step), the default
  `md train-student` mode;
- ``online``: the teacher run live on the same batch (loader of images + teacher forward +
  step), the `online_teacher` mode;
- ``in_memory``: targets already in device memory, the step alone on one batch (the bound).

The modes' steps are interleaved (a block of steps of each per round, rotating order), so
a process's warm-up trend is shared by all three; offline and online stream their batches
as `md train-student` does (`stream_batches`: read ahead on a thread with 0 workers), and
only a block's steps whose batches were read during that mode's own steps are timed. Each reports the median ms per step and the
peak memory over its timed steps: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``,
reset before each step); on CPU, where torch's allocator keeps no peak, the peak resident
set size of the process sampled every 2 ms during the mode's steps (Linux
``/proc/self/statm``; ``null`` elsewhere) and its largest rise over the RSS before one of
its steps (``peak_rss_mb`` / ``rss_rise_mb``), which also counts the loader's buffers. All
three models are resident at once, so the peak RSS includes the other modes' models.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from md.config import resolve_config
from md.student_train.bench import training_step
from md.student_train.config import PRESETS, StudentTrainConfig
from md.student_train.resolve import prepare
from md.student_train.run import make_loader, stream_batches
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
        return {
            "peak_rss_mb": round(self.peak_mb, 1),
            "rss_rise_mb": round(self.peak_mb - self.start_mb, 1),
        }


@dataclass
class _Mode:
    """One mode's step closure and batch stream, and what its timed steps measured."""

    step: Callable[[dict[str, Any]], None]
    batches: Iterator[dict[str, Any]]
    channels_last: bool
    width: float
    times: list[float] = field(default_factory=list)
    peak_mb: float | None = None
    rise_mb: float | None = None
    cuda_peak_mb: float | None = None


def _mode(cfg: StudentTrainConfig, device: torch.device, n: int, repeat_first: bool) -> _Mode:
    setup = prepare(cfg)
    step = training_step(setup, device)
    if not repeat_first:  # streamed as md train-student streams (read-ahead thread included)
        stream = stream_batches(setup, 0, n, device, num_workers=setup.cfg.num_workers)
        return _Mode(step, stream, setup.cfg.channels_last, setup.cfg.width)
    loader = iter(make_loader(setup, 0, 1, device, num_workers=setup.cfg.num_workers))
    first = to_device(next(loader), device, setup.cfg.channels_last)  # targets on the device

    def again() -> Iterator[dict[str, Any]]:
        while True:
            yield first

    return _Mode(step, again(), False, setup.cfg.width)


def _timed_step(m: _Mode, device: torch.device, keep: bool) -> None:
    """(next batch + copy to device + step) once; its time and memory peaks kept if `keep`."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with RssPeak() as rss:
        _sync(device)
        t0 = time.perf_counter()
        m.step(to_device(next(m.batches), device, m.channels_last))
        _sync(device)
        elapsed = (time.perf_counter() - t0) * 1e3
    if not keep:
        return
    m.times.append(elapsed)
    r = rss.report()
    if r["peak_rss_mb"] is not None:
        m.peak_mb = max(m.peak_mb or 0.0, r["peak_rss_mb"])
        m.rise_mb = max(m.rise_mb or 0.0, r["rss_rise_mb"] or 0.0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        m.cuda_peak_mb = max(m.cuda_peak_mb or 0.0, peak)


def _report(m: _Mode, device: torch.device) -> dict[str, Any]:
    peak = m.cuda_peak_mb if device.type == "cuda" else m.peak_mb
    return {
        "ms": round(statistics.median(m.times), 3),
        "min_ms": round(min(m.times), 3),
        "peak_memory_mb": None if peak is None else round(peak, 1),
        "peak_memory_kind": "cuda_allocated" if device.type == "cuda" else "process_rss",
        "peak_rss_mb": None if m.peak_mb is None else round(m.peak_mb, 1),
        "rss_rise_mb": None if m.rise_mb is None else round(m.rise_mb, 1),
        "width": m.width,
    }


def bench_train_step(
    *,
    store: str,
    data: str,
    teacher: str,
    preset: str | None = None,
    overrides: tuple[str, ...] = (),
    device: str = "auto",
    warmup: int = 2,
    steps: int = 5,
) -> dict[str, Any]:
    """``{offline_ms, online_ms, in_memory_ms, peak_memory_mb: {offline, online, in_memory},
    ...}``: one student step per mode (see the module docstring)."""
    base = resolve_config(
        StudentTrainConfig,
        presets=PRESETS,
        preset=preset,
        overrides=[*overrides, "progress=false"],
        data=data,
        device=device,
    )
    dev = recipe.resolve_device(base.device)
    offline = replace(base, store=store)
    online = replace(base, store="", online_teacher=teacher)
    # Each mode runs `block` consecutive steps per round and only the last `timed` of them
    # count: a read-ahead thread (prefetch_batches batches deep) fills its queue while the
    # other modes step, so the first batches of a block come for free; from step
    # prefetch_batches + 1 on, every batch was read while the mode's own steps ran.
    ahead = base.prefetch_batches if base.num_workers == 0 else 0
    timed = 2
    block = ahead + 1 + timed
    rounds = warmup + -(-steps // timed)
    n = rounds * block  # enough iterations that the loaders never run dry
    plans = {"offline": (offline, False), "online": (online, False), "in_memory": (offline, True)}
    modes = {
        name: _mode(replace(cfg, iterations=max(cfg.iterations, n)), dev, n, in_memory)
        for name, (cfg, in_memory) in plans.items()
    }
    # Interleaved, one block of each mode per round, in a rotating order: a process's steps
    # speed up over its first minutes (allocator, caches), which timing the modes one after
    # another charged to whichever ran first.
    names = list(modes)
    for r in range(rounds):
        for name in names[r % 3 :] + names[: r % 3]:
            for j in range(block):
                keep = r >= warmup and j >= block - timed and len(modes[name].times) < steps
                _timed_step(modes[name], dev, keep=keep)
    out = {name: _report(m, dev) for name, m in modes.items()}
    return {
        "benchmark": "train-step",
        "device": str(dev),
        "batch_size": base.batch_size,
        "thermal_factor": base.thermal_factor,
        "width": out["offline"]["width"],
        "steps": steps,
        "warmup": warmup,
        "offline_ms": out["offline"]["ms"],
        "online_ms": out["online"]["ms"],
        "in_memory_ms": out["in_memory"]["ms"],
        "peak_memory_mb": {k: v["peak_memory_mb"] for k, v in out.items()},
        "modes": out,
        "torch_threads": torch.get_num_threads(),
    }
