"""Codec presets on real teacher features: size, fidelity and speed per preset.

For each preset of `md.stores.codecs` the fused features of every level are encoded through
the real store layout (`md.stores.measure_fidelity`) and the per-level figures are summed
(bytes) or taken at their worst (cosine min, max abs error) over levels. Speeds are MB/s of
float32 input: ``encode_mb_s`` = quantize + compress + write into an in-memory Zarr store;
``decode_mb_s`` = dequantize only (decompression is not included).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from md.stores import PRESETS, measure_fidelity
from md.stores.codecs import decode_features, encode_features, get_preset
from md.stores.encode import measure_stored_bytes
from md.teacher_cache.fidelity import teacher_features


def _speeds(x: np.ndarray, preset: str, shard_size: int, repeats: int) -> tuple[float, float]:
    """(encode MB/s, decode MB/s) of float32 `x` [n, C, H, W], best of `repeats`."""
    p = get_preset(preset)
    mb = x.nbytes / 1e6
    enc, dec = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        stored, scale = encode_features(x, p)
        measure_stored_bytes(stored, scale, p, shard_size)
        t1 = time.perf_counter()
        decode_features(stored, scale, p)
        t2 = time.perf_counter()
        enc.append(mb / (t1 - t0))
        dec.append(mb / max(t2 - t1, 1e-9))
    return max(enc), max(dec)


def _preset_summary(
    feats: dict[str, np.ndarray], preset: str, shard_size: int, repeats: int
) -> dict[str, Any]:
    levels = {}
    for lv, x in feats.items():
        fid = measure_fidelity(x, preset, shard_size=shard_size).to_json()
        enc, dec = _speeds(x, preset, shard_size, repeats)
        levels[lv] = {"shape": list(x.shape[1:]), **fid, "encode_mb_s": enc, "decode_mb_s": dec}
    total = sum(v["bytes_per_sample"] for v in levels.values())
    f32 = sum(v["float32_bytes_per_sample"] for v in levels.values())
    mb = sum(x.nbytes for x in feats.values()) / 1e6
    return {
        "bytes_per_sample": round(total, 1),
        "float32_bytes_per_sample": f32,
        "ratio_vs_fp32": round(f32 / total, 3),
        "cosine": min(v["cosine_min"] for v in levels.values()),  # worst sample, worst level
        "cosine_mean": float(np.mean([v["cosine_mean"] for v in levels.values()])),
        "max_abs_error": max(v["max_abs_error"] for v in levels.values()),
        # time-weighted over levels: total MB / total seconds
        "encode_mb_s": round(
            mb / sum(x.nbytes / 1e6 / levels[lv]["encode_mb_s"] for lv, x in feats.items()), 2
        ),
        "decode_mb_s": round(
            mb / sum(x.nbytes / 1e6 / levels[lv]["decode_mb_s"] for lv, x in feats.items()), 2
        ),
        "levels": levels,
    }


def bench_codecs(
    teacher: str | Path,
    data: str | Path,
    *,
    split: str = "train",
    samples: int = 64,
    shard_size: int = 16,
    presets: Sequence[str] = tuple(PRESETS),
    repeats: int = 3,
    device: str = "auto",
) -> dict[str, Any]:
    """``{"presets": {name: {bytes_per_sample, ratio_vs_fp32, cosine, max_abs_error,
    encode_mb_s, decode_mb_s, levels: {...}}}, ...}`` on the teacher's features."""
    feats = teacher_features(teacher, data, split, samples, device=device)
    return {
        "benchmark": "codecs",
        "teacher": str(teacher),
        "data": str(data),
        "split": split,
        "samples": len(next(iter(feats.values()))),
        "shard_size": shard_size,
        "presets": {name: _preset_summary(feats, name, shard_size, repeats) for name in presets},
        "notes": "encode = quantize + zstd + write (in-memory Zarr); decode = dequantize only",
    }
