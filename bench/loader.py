"""Student loader throughput: samples/s per worker count vs the training step's samples/s.

    python bench/loader.py --store STORE [--data DATA] [--workers 0,1,2] [--batches 20]
                           [--steps 5] [--threads N] [--preset cpu-tiny] [--json] [key=value ...]

Builds the run as `md train-student` would (same config fields, presets and overrides), then
times the loader alone for each worker count and the training step alone on one of its
batches (md.student_train.bench). The loader keeps the accelerator fed when its samples/s is
at least the step's. Prints a markdown table (for docs/benchmarks.md) or JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Any

import torch

from md.config import resolve_config
from md.student_train.bench import bench_loader
from md.student_train.config import PRESETS, StudentTrainConfig


def _table(r: dict[str, Any]) -> str:
    lines = [
        f"device {r['device']}, {r['mode']} {r['task']}, batch {r['batch_size']}, images "
        f"{r['image_hw'][1]}x{r['image_hw'][0]}, crop {r['crop']}, flip {r['flip']}, "
        f"torch threads {r['torch_threads']}, {platform.processor() or platform.machine()}",
        "",
        "| workers | loader samples/s | step samples/s | loader keeps up |",
        "| --- | --- | --- | --- |",
    ]
    for w, rate in r["loader_samples_per_s"].items():
        lines.append(
            f"| {w} | {rate:.1f} | {r['step_samples_per_s']:.1f} | "
            f"{'yes' if r['fed'][w] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=None, help="teacher-target store (md cache-teacher)")
    p.add_argument("--data", default=None, help="dataset root, unless the store bundles inputs")
    p.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    p.add_argument("--batches", type=int, default=20, help="timed loader batches per count")
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS))
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    p.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    p.add_argument("overrides", nargs="*", help="key=value config fields (md train-student)")
    args = p.parse_args(argv)
    cfg = resolve_config(
        StudentTrainConfig,
        presets=PRESETS,
        preset=args.preset,
        overrides=[*args.overrides, "progress=false"],
        store=args.store,
        data=args.data,
    )
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    report = bench_loader(cfg, workers, batches=args.batches, steps=args.steps)
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
