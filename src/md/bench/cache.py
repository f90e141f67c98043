"""`md cache-teacher` samples/s against the teacher's forward-only samples/s on the same
batches (`md.teacher_cache.fidelity.measure_throughput`: best of interleaved rounds).

``cache_vs_forward`` near 1 means caching costs little beyond the forward pass it must do
anyway; lower means encoding / writing (the writer thread) sets the pace.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from md.stores import PRESETS
from md.teacher_cache.fidelity import measure_throughput


def bench_cache(teacher: str | Path, data: str | Path, *, split: str = "train",
                batch_size: int = 8, shard_size: int = 16,
                presets: Sequence[str] = tuple(PRESETS), repeats: int = 3,
                device: str = "auto") -> dict[str, Any]:
    """``{forward_samples_per_s, load_and_forward_samples_per_s, cache: {preset:
    {samples_per_s, cache_vs_forward, bytes_per_sample}}, ...}``."""
    tp = measure_throughput(teacher, data, split, batch_size, shard_size, presets,
                            repeats=repeats, device=device)
    forward = tp["forward_only"]
    return {
        "benchmark": "cache", "teacher": str(teacher), "data": str(data), "split": split,
        "samples": tp["samples"], "repeats": repeats, "batch_size": batch_size,
        "forward_samples_per_s": round(forward, 2),
        "load_and_forward_samples_per_s": round(tp["load_and_forward"], 2),
        "cache": {
            name: {"samples_per_s": round(c["samples_per_s"], 2),
                   "cache_vs_forward": round(c["samples_per_s"] / forward, 3),
                   "bytes_per_sample": c["bytes_per_sample"]["total"]}
            for name, c in tp["cache"].items()
        },
    }
