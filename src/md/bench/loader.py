"""Can the streaming loader feed a GPU? `md bench loader`.

Two parts, in one process:

- `bench_read`: the store's read path on random batches of `batch` samples (targets only,
  every target array of the unflipped view), against the bound set by decompression itself:
  the same chunks' stored bytes, already in memory, checked (crc32c) and decompressed (zstd;
  a ``raw`` store's chunks are copied out) with nothing else. ``read`` is `TargetStore.read` (float32 out), ``read_stored`` the stored
  dtypes into preallocated buffers (what the student's loader ships; float32 happens on the
  device). ``fraction_of_bound`` = read_stored samples/s / bound samples/s. The
  ``breakdown_ms`` per batch times each stage of the float32 read apart: fetching the bytes,
  crc32c, zstd, stacking the samples, the float32 decoding, and (with a dataset) decoding the
  batch's PNG/JPEG images.
- `bench_loader_vs_step`: the student's whole loader (targets + inputs + augmentation +
  collate) per DataLoader worker count, built as `md train-student` builds it
  (`md.student_train.bench`), optionally against the measured step.

Rates per core: one process with 0 workers runs on one core (its torch threads aside), w
workers on w. ``workers_to_feed`` = ceil(step samples/s / loader samples/s per core).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import google_crc32c
import numpy as np
from numcodecs import Zstd
from zarr.core.sync import sync

from md.config import resolve_config
from md.stores import open_store
from md.stores.array_io import read_arrays, read_chunks_local
from md.stores.encode import decode_target, stored_names
from md.stores.schema import is_attention_name, is_features_name
from md.student_train.bench import bench_loader
from md.student_train.config import PRESETS, StudentTrainConfig


def peak_rss_mb() -> float | None:
    """The process's peak resident set size so far (Linux ``VmHWM``), in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1e3, 3)


def bench_read(
    store_url: str, *, batch: int = 16, batches: int = 6, seed: int = 0, data: str | None = None
) -> dict[str, Any]:
    """Read-path figures of a store (see the module docstring); medians over `batches`
    random batches, the variants interleaved batch by batch so load changes hit all alike."""
    store = open_store(store_url)
    preset = store.preset
    targets = [
        n for n in store.schema.target_shapes() if (is_features_name(n) or is_attention_name(n))
    ]
    targets = [n for n in targets if "_flip/" not in n]
    stored = list(dict.fromkeys(s for n in targets for s in stored_names(n, preset)))
    h = store._handle()
    arrays = h.open_arrays(stored)
    layouts = [h.layout(s) for s in stored]
    rng = np.random.default_rng(seed)
    ds = None
    if data:
        from md.data import open_dataset

        ds = open_dataset(data, split="train")
    t: dict[str, list[float]] = {
        k: []
        for k in ("read", "read_stored", "bound", "fetch", "crc32c", "zstd", "stack", "float32")
    }
    t["images"] = []
    stored_bytes = decoded_bytes = float32_bytes = 0
    store.read_stored([0], targets)  # open arrays, cache shard indexes' first reads
    for _ in range(batches):
        idx = np.sort(rng.choice(store.n, size=min(batch, store.n), replace=False))
        t0 = time.perf_counter()
        got = store.read(idx, targets)
        t["read"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        raw = store.read_stored(idx, targets)
        t["read_stored"].append(time.perf_counter() - t0)
        # the stages of the float32 read, apart, on the same batch
        t0 = time.perf_counter()
        if h.store.local:  # as TargetStore reads a local store: pread in this thread
            chunks = [
                read_chunks_local(h.store, a, lay, idx)
                if lay is not None
                else sync(read_arrays([a], [None], idx))[0]
                for a, lay in zip(arrays, layouts, strict=True)
            ]
        else:
            chunks = sync(read_arrays(arrays, layouts, idx))
        t["fetch"].append(time.perf_counter() - t0)
        blobs = [b for c, lay in zip(chunks, layouts, strict=True) if lay is not None for b in c]
        t0 = time.perf_counter()
        for b in blobs:
            google_crc32c.value(b)
        t["crc32c"].append(time.perf_counter() - t0)
        decoded: dict[str, list[np.ndarray]] = {}
        t0 = time.perf_counter()
        for name, c, lay in zip(stored, chunks, layouts, strict=True):
            if lay is not None and not lay.compressed:  # raw: the copy out of the bytes read
                decoded[name] = [
                    np.frombuffer(b[:-4], lay.dtype).reshape(lay.sample_shape).copy() for b in c
                ]
            elif lay is not None:
                z = Zstd(level=lay.level, checksum=lay.checksum)
                decoded[name] = [
                    np.frombuffer(z.decode(b[:-4]), lay.dtype).reshape(lay.sample_shape) for b in c
                ]
        t["zstd"].append(time.perf_counter() - t0)
        t["bound"].append(t["crc32c"][-1] + t["zstd"][-1])
        t0 = time.perf_counter()
        stacked = {n: np.stack(v) for n, v in decoded.items()}
        stacked.update(  # small arrays zarr reads itself (compact's scale codes)
            {
                n: np.asarray(c)
                for n, c, lay in zip(stored, chunks, layouts, strict=True)
                if lay is None
            }
        )
        t["stack"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for name in targets:
            decode_target(name, stacked, preset)
        t["float32"].append(time.perf_counter() - t0)
        if ds is not None:
            t0 = time.perf_counter()
            for i in idx:
                ds[int(i)]
            t["images"].append(time.perf_counter() - t0)
        stored_bytes = sum(len(b) for b in blobs)
        decoded_bytes = sum(v.nbytes for v in raw.values())
        float32_bytes = sum(v.nbytes for v in got.values())
    n = min(batch, store.n)
    ms = {k: _median_ms(v) for k, v in t.items() if v}

    def rate(key: str) -> float:
        return round(n / (ms[key] / 1e3), 1)

    per_sample = {
        "stored_mb": round(stored_bytes / n / 1e6, 3),
        "decoded_mb": round(decoded_bytes / n / 1e6, 3),  # as stored (fp16 / uint8)
        "float32_mb": round(float32_bytes / n / 1e6, 3),
    }
    out: dict[str, Any] = {
        "store": store_url,
        "codec": preset.name,
        "samples": store.n,
        "batch": n,
        "batches": batches,
        "arrays": targets,
        "per_sample": per_sample,
        "ms_per_batch": {k: ms[k] for k in ("read", "read_stored", "bound")},
        "samples_per_s": {k: rate(k) for k in ("read", "read_stored", "bound")},
        "mb_per_s": {
            "stored": round(per_sample["stored_mb"] * rate("read_stored"), 1),
            "decoded": round(per_sample["decoded_mb"] * rate("read_stored"), 1),
        },
        "fraction_of_bound": round(ms["bound"] / ms["read_stored"], 3),
        "read_fraction_of_bound": round(ms["bound"] / ms["read"], 3),
        "breakdown_ms": {
            k: ms[k] for k in ("fetch", "crc32c", "zstd", "stack", "float32", "images") if k in ms
        },
    }
    if "images" in ms:
        out["samples_per_s"]["images"] = rate("images")
    return out


def bench_loader_vs_step(
    *,
    store: str,
    data: str | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    workers: Sequence[int] = (0, 1, 2),
    batches: int = 20,
    steps: int = 5,
    measure_step: bool = True,
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
    return {
        "benchmark": "loader",
        **bench_loader(cfg, workers, batches=batches, steps=steps, measure_step=measure_step),
    }


def bench_loader_full(
    *,
    store: str,
    data: str | None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    workers: Sequence[int] = (0,),
    batches: int = 6,
    read_batches: int = 6,
    batch_size: int = 16,
    step_samples_per_s: float | None = 680.0,
    steps: int = 3,
) -> dict[str, Any]:
    """`bench_read` + `bench_loader_vs_step`, with per-core rates, ``workers_to_feed`` for
    `step_samples_per_s` (None: the step measured here) and the peak RSS."""
    read = bench_read(store, batch=batch_size, batches=read_batches, data=data)
    loader = bench_loader_vs_step(
        store=store,
        data=data,
        preset=preset,
        overrides=(f"batch_size={batch_size}", *overrides),
        workers=workers,
        batches=batches,
        steps=steps,
        measure_step=step_samples_per_s is None,
    )
    rates = {int(w): r for w, r in loader["loader_samples_per_s"].items()}
    per_core = {w: r / max(1, w) for w, r in rates.items()}
    step = step_samples_per_s if step_samples_per_s is not None else loader["step_samples_per_s"]
    best = max(per_core.values())
    return {
        **loader,
        "read": read,
        "loader_samples_per_s_per_core": {str(w): round(r, 2) for w, r in per_core.items()},
        "step_samples_per_s": step,
        "step_measured": step_samples_per_s is None,
        "workers_to_feed": math.ceil(step / best) if best > 0 else None,
        "peak_rss_mb": peak_rss_mb(),
        "cores": cores(),
    }
