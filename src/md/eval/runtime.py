"""Per-image latency at batch 1, the paper's runtime columns (MD Tables 1-6).

Protocol: warm-up iterations first (cuDNN autotuning, allocator), then timed iterations with
the device synchronised before each clock read; the median is reported with device and dtype.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def latency_ms(
    fn: Callable[[], Any], device: torch.device, *, warmup: int = 5, repeats: int = 20
) -> dict[str, float]:
    """Median / min / mean milliseconds of `fn()` over `repeats` synchronised calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "mean_ms": statistics.fmean(times),
        "repeats": float(repeats),
    }
