"""`md cache-teacher` samples/s against the teacher's forward-only samples/s on the same
batches (`md.teacher_cache.fidelity.measure_throughput`: best of interleaved rounds).

``cache_vs_forward`` near 1 means caching costs little beyond the forward pass it must do
anyway; lower means encoding / writing (the writer thread) sets the pace.

`bench_cache_dask` compares a single-process `md cache-teacher` with the same run on local
Dask clusters of 1, 2, ... worker processes (1 thread each): does the scale-out pay?
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from md.teacher_cache import CacheConfig, run
from md.teacher_cache.fidelity import measure_throughput


def bench_cache(
    teacher: str | Path,
    data: str | Path,
    *,
    split: str = "train",
    batch_size: int = 8,
    shard_size: int = 16,
    presets: Sequence[str] = ("lossless", "compact"),
    repeats: int = 3,
    device: str = "auto",
) -> dict[str, Any]:
    """``{forward_samples_per_s, load_and_forward_samples_per_s, cache: {preset:
    {samples_per_s, cache_vs_forward, bytes_per_sample}}, ...}``."""
    tp = measure_throughput(
        teacher, data, split, batch_size, shard_size, presets, repeats=repeats, device=device
    )
    forward = tp["forward_only"]
    return {
        "benchmark": "cache",
        "teacher": str(teacher),
        "data": str(data),
        "split": split,
        "samples": tp["samples"],
        "repeats": repeats,
        "batch_size": batch_size,
        "forward_samples_per_s": round(forward, 2),
        "load_and_forward_samples_per_s": round(tp["load_and_forward"], 2),
        "cache": {
            name: {
                "samples_per_s": round(c["samples_per_s"], 2),
                "cache_vs_forward": round(c["samples_per_s"] / forward, 3),
                "bytes_per_sample": c["bytes_per_sample"]["total"],
            }
            for name, c in tp["cache"].items()
        },
    }


def bench_cache_dask(
    teacher: str | Path,
    data: str | Path,
    *,
    split: str = "train",
    batch_size: int = 8,
    shard_size: int = 16,
    workers: Sequence[int] = (1, 2),
    repeats: int = 3,
    device: str = "cpu",
) -> dict[str, Any]:
    """``{single_process: {samples_per_s, torch_threads}, dask: {N: {samples_per_s,
    first_run_samples_per_s, startup_seconds}}, ratios}``: whole `md cache-teacher` runs into
    fresh stores, best of `repeats` interleaved rounds (robust to a shared machine).

    Each worker count gets one local cluster like ``--workers N`` starts (timed:
    ``startup_seconds``), which every round reuses through ``--scheduler``; its first run,
    which loads the teacher in every worker, is reported apart and not counted in the best.
    Dask samples/s run from the first submit to the last result, as `md cache-teacher`
    reports them; the single process uses this process's torch threads.
    """
    base = CacheConfig(
        teacher=str(teacher),
        data=str(data),
        split=split,
        shard_size=shard_size,
        batch_size=batch_size,
        device=device,
        progress=False,
    )
    with (
        tempfile.TemporaryDirectory(prefix="md-bench-dask-") as tmp,
        contextlib.ExitStack() as stack,
    ):

        def once(**extra: Any) -> dict[str, Any]:
            store = Path(tmp) / f"{time.monotonic_ns()}.zarr"
            return run(dataclasses.replace(base, store=str(store), **extra))

        address, startup, first = {}, {}, {}
        for n in workers:
            t0 = time.perf_counter()
            address[n] = stack.enter_context(_local_cluster(n))
            startup[n] = time.perf_counter() - t0
            first[n] = once(scheduler=address[n])["samples_per_s"]
        samples = once()["samples"]  # warm-up of the single process: file cache, allocator
        single: list[float] = []
        rates: dict[int, list[float]] = {n: [] for n in workers}
        for _ in range(repeats):
            single.append(once()["samples_per_s"])
            for n in workers:
                rates[n].append(once(scheduler=address[n])["samples_per_s"])
    best = {n: max(r) for n, r in rates.items()}
    ratios = {f"workers_{n}_vs_single": round(best[n] / max(single), 3) for n in workers}
    ratios.update(
        {
            f"workers_{n}_vs_workers_{workers[0]}": round(best[n] / best[workers[0]], 3)
            for n in workers[1:]
        }
    )
    return {
        "benchmark": "cache_dask",
        "teacher": str(teacher),
        "data": str(data),
        "split": split,
        "samples": samples,
        "repeats": repeats,
        "batch_size": batch_size,
        "shard_size": shard_size,
        "device": device,
        "single_process": {
            "samples_per_s": round(max(single), 2),
            "torch_threads": torch.get_num_threads(),
        },
        "dask": {
            str(n): {
                "samples_per_s": round(best[n], 2),
                "first_run_samples_per_s": round(first[n], 2),
                "startup_seconds": round(startup[n], 2),
            }
            for n in workers
        },
        "ratios": ratios,
    }


@contextlib.contextmanager
def _local_cluster(n: int) -> Iterator[str]:
    """The scheduler address of a local cluster of n worker processes, 1 thread each."""
    from distributed import LocalCluster

    from md.teacher_cache.cluster import NO_DASHBOARD

    with LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        **NO_DASHBOARD,
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster.scheduler_address
