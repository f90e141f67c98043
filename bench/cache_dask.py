"""`md cache-teacher` samples/s: one process vs local Dask clusters of 1, 2, ... workers.

    python bench/cache_dask.py --teacher teacher.pt --data DATA [--split train]
                               [--workers 1,2] [--shard-size 16] [--batch-size 8]
                               [--repeats 3] [--threads N] [--device cpu]

Same teacher, data and options for every run; each run writes a fresh store. Dask workers are
processes of 1 torch thread each; the single process uses --threads (torch's default if 0).
Prints JSON (md.bench.cache.bench_cache_dask): samples/s per set-up, each worker count's
cluster start-up and first (teacher-loading) run, and the ratios. On a shared machine compare
the ratios of one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch

from md.bench.cache import bench_cache_dask


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="teacher checkpoint (md train-teacher)")
    p.add_argument("--data", required=True, help="dataset root (KAIST or MFNet layout)")
    p.add_argument("--split", default="train")
    p.add_argument("--workers", default="1,2", help="comma-separated Dask worker counts")
    p.add_argument("--shard-size", type=int, default=16, help="samples per shard (per task)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (best is kept)")
    p.add_argument("--threads", type=int, default=0, help="single-process torch threads")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (on the workers too)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]  # the machine's other load: figures are relative to it
    report = bench_cache_dask(
        args.teacher, args.data, split=args.split, batch_size=args.batch_size,
        shard_size=args.shard_size, workers=[int(w) for w in args.workers.split(",")],
        repeats=args.repeats, device=args.device,
    )  # fmt: skip
    report["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
        "torch": torch.__version__,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
