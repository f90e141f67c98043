"""What each `md cache-teacher` speed-up buys: cache samples/s vs teacher forward-only, one
change at a time, interleaved rounds in one process (ratios are what to compare).

    python bench/cache_steps.py --teacher teacher.pt --data DATA [--repeats 5] [--threads 1]

Variants (each a whole `md cache-teacher` run into a fresh store, writer in a child process):

- ``zarr_path``: shard objects written through zarr's codec pipeline, images read in the
  teacher's thread, Python's default GIL switch interval (the state before these changes);
- ``one_pass``: + shard objects encoded in one pass (md.stores.shard_object);
- ``read_ahead``: + a read-ahead thread decoding the next batches (md.data.prefetch);
- ``short_switch``: + a 0.5 ms GIL switch interval during the loop (today's default), for
  lossless and compact, and with the writer on a thread.

Prints JSON: best-of-rounds samples/s and the ratio to forward-only for each variant.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

import md.teacher_cache.shards as shards_module
from md.data import open_dataset
from md.data.collate import collate
from md.stores.shard_object import ShardLayout
from md.teacher_cache import CacheConfig, load_teacher, run
from md.teacher_cache.fidelity import _forward_rate
from md.train.recipe import resolve_device


@dataclass(frozen=True)
class Variant:
    name: str
    codec: str = "lossless"
    writer: str = "process"
    one_pass: bool = True
    read_ahead: int = 2
    switch_s: float = shards_module.GIL_SWITCH_INTERVAL_S


DEFAULT_SWITCH_S = 0.005  # Python's default sys.getswitchinterval()

VARIANTS = (
    Variant("zarr_path", one_pass=False, read_ahead=0, switch_s=DEFAULT_SWITCH_S),
    Variant("one_pass", read_ahead=0, switch_s=DEFAULT_SWITCH_S),
    Variant("read_ahead", switch_s=DEFAULT_SWITCH_S),
    Variant("short_switch"),
    Variant("short_switch/compact", codec="compact"),
    Variant("short_switch/thread_writer", writer="thread"),
)


@contextlib.contextmanager
def applied(v: Variant) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as m:
        m.setattr(shards_module, "GIL_SWITCH_INTERVAL_S", v.switch_s)
        if not v.one_pass:
            m.setattr(ShardLayout, "of", classmethod(lambda cls, array: None))
        yield


def summarize(v: Variant, rates: list[float], forward: float) -> dict[str, Any]:
    return {
        "samples_per_s": round(max(rates), 1),
        "vs_forward": round(max(rates) / forward, 3),
        "codec": v.codec,
        "writer": v.writer,
        "one_pass": v.one_pass,
        "read_ahead": v.read_ahead,
        "gil_switch_s": v.switch_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher, _ = load_teacher(args.teacher)
    teacher.to(resolve_device(args.device))
    ds = open_dataset(args.data, split=args.split)
    batches = list(DataLoader(ds, batch_size=args.batch_size, collate_fn=collate))
    _forward_rate(teacher, batches, len(ds))  # warm-up
    rates: dict[str, list[float]] = {"forward_only": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            rates["forward_only"].append(_forward_rate(teacher, batches, len(ds)))
            for v in VARIANTS:
                cfg = CacheConfig(
                    teacher=args.teacher, data=args.data, split=args.split,
                    store=str(Path(tmp) / f"{v.name.replace('/', '-')}-{r}.zarr"),
                    codec=v.codec, shard_size=args.shard_size,
                    batch_size=args.batch_size, device=args.device, progress=False,
                    writer=v.writer, read_ahead=v.read_ahead,
                )  # fmt: skip
                with applied(v):
                    summary = run(cfg)
                rates.setdefault(v.name, []).append(summary["samples_per_s"])
    forward = max(rates["forward_only"])
    report: dict[str, Any] = {
        "samples": len(ds),
        "repeats": args.repeats,
        "forward_only_samples_per_s": round(forward, 1),
        "variants": {v.name: summarize(v, rates[v.name], forward) for v in VARIANTS},
        "rounds": {k: [round(x, 1) for x in xs] for k, xs in rates.items()},
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(next(teacher.parameters()).device),
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
