"""Codec presets measured on real teacher features, and cache vs forward-only throughput.

`measure_codecs` runs a teacher checkpoint over the first samples of a split and measures
every preset of `md.stores.codecs.PRESETS` per fused level with
`md.stores.measure_fidelity` (the real Zarr layout, in memory): bytes/sample, ratio vs
float32, max abs error, cosine. `measure_throughput` compares samples/s of the teacher
forward alone with a whole `md cache-teacher` run (loading, forward, encoding, writing).
bench/codecs.py prints both; docs/benchmarks.md records them.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Subset

from md.data import open_dataset
from md.data.collate import collate
from md.models import TwoStreamTeacher
from md.models.checkpoint import file_sha256
from md.stores import PRESETS, measure_fidelity
from md.stores.schema import features_name
from md.teacher_cache.run import CacheConfig, load_teacher, run
from md.teacher_cache.targets import teacher_targets
from md.train.recipe import resolve_device


def teacher_features(
    teacher_path: str | Path,
    data: str | Path,
    split: str = "train",
    samples: int = 64,
    batch_size: int = 8,
    device: str = "auto",
) -> dict[str, np.ndarray]:
    """{level: fused features [n, C, H, W] float32} of the first `samples` items of `split`."""
    teacher, _ = load_teacher(teacher_path)
    dev = resolve_device(device)
    teacher.to(dev)
    ds = open_dataset(data, split=split)
    subset = Subset(ds, range(min(samples, len(ds))))
    parts: dict[str, list[np.ndarray]] = {lv: [] for lv in teacher.levels}
    for batch in DataLoader(subset, batch_size=batch_size, collate_fn=collate):
        out = teacher_targets(
            teacher, batch["visible"].to(dev), batch["thermal"].to(dev), teacher.levels
        )
        for lv in teacher.levels:
            parts[lv].append(out[features_name(lv)])
    return {lv: np.concatenate(p) for lv, p in parts.items()}


def measure_codecs(
    teacher_path: str | Path,
    data: str | Path,
    split: str = "train",
    samples: int = 64,
    shard_size: int = 16,
    presets: Sequence[str] = tuple(PRESETS),
    device: str = "auto",
) -> dict[str, Any]:
    """Per level and preset: `md.stores.Fidelity` fields plus the level's shape and the
    error relative to the largest feature value (``max_abs_error / max |x|``)."""
    feats = teacher_features(teacher_path, data, split, samples, device=device)
    rows = []
    for lv, x in feats.items():
        peak = float(np.abs(x).max())
        for name in presets:
            fid = measure_fidelity(x, name, shard_size=shard_size).to_json()
            rows.append(
                {
                    "level": lv,
                    "shape": list(x.shape[1:]),
                    **fid,
                    "max_abs_feature": peak,
                    "relative_max_error": fid["max_abs_error"] / peak if peak else 0.0,
                }
            )
    return {
        "teacher": str(teacher_path),
        "teacher_sha256": file_sha256(teacher_path),
        "data": str(data),
        "split": split,
        "samples": len(next(iter(feats.values()))),
        "shard_size": shard_size,
        "results": rows,
    }


def _forward_rate(teacher: TwoStreamTeacher, batches: Iterable[dict[str, Any]], n: int) -> float:
    """Samples/s of the teacher forward (outputs copied to the host) over `batches`."""
    dev = next(teacher.parameters()).device
    t0 = time.perf_counter()
    for b in batches:
        teacher_targets(teacher, b["visible"].to(dev), b["thermal"].to(dev), teacher.levels)
    return n / (time.perf_counter() - t0)


def measure_throughput(
    teacher_path: str | Path,
    data: str | Path,
    split: str = "train",
    batch_size: int = 8,
    shard_size: int = 16,
    presets: Sequence[str] = tuple(PRESETS),
    repeats: int = 3,
    device: str = "auto",
    writers: Sequence[str] = ("auto",),
) -> dict[str, Any]:
    """Samples/s, best of `repeats` interleaved rounds (robust to a shared machine), of:
    ``forward_only`` (batches preloaded), ``load_and_forward`` (images decoded too, no store)
    and ``cache[preset]`` (a whole `md cache-teacher` run into a fresh store: loading,
    forward, encoding and writing), with each cache run's stored bytes/sample. With several
    `writers` (thread / process, `md.teacher_cache.writer`) the keys are ``preset/writer``."""
    teacher, _ = load_teacher(teacher_path)
    teacher.to(resolve_device(device))
    ds = open_dataset(data, split=split)
    batches = list(DataLoader(ds, batch_size=batch_size, collate_fn=collate))
    _forward_rate(teacher, batches, len(ds))  # warm-up: allocators, kernels, file cache
    rates: dict[str, list[float]] = {"forward_only": [], "load_and_forward": []}
    variants = [(name, w) for name in presets for w in writers]
    key = {(n, w): n if len(writers) == 1 else f"{n}/{w}" for n, w in variants}
    runs: dict[str, list[dict[str, Any]]] = {key[v]: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            rates["forward_only"].append(_forward_rate(teacher, batches, len(ds)))
            loader = DataLoader(ds, batch_size=batch_size, collate_fn=collate)
            rates["load_and_forward"].append(_forward_rate(teacher, loader, len(ds)))
            for name, writer in variants:
                cfg = CacheConfig(
                    teacher=str(teacher_path), data=str(data), split=split,
                    store=str(Path(tmp) / f"{name}-{writer}{r}.zarr"),
                    codec=name,  # type: ignore[arg-type]
                    shard_size=shard_size, batch_size=batch_size, device=device, progress=False,
                    writer=writer,  # type: ignore[arg-type]
                )  # fmt: skip
                runs[key[(name, writer)]].append(run(cfg))
    out: dict[str, Any] = {k: max(v) for k, v in rates.items()}
    out["samples"], out["repeats"] = len(ds), repeats
    out["cache"] = {}
    for name, summaries in runs.items():
        best = max(summaries, key=lambda s: s["samples_per_s"])
        out["cache"][name] = {
            "samples_per_s": best["samples_per_s"],
            "forward_in_run_samples_per_s": best["forward_samples_per_s"],
            "bytes_per_sample": best["bytes_per_sample"],
        }
    return out
