"""Codec presets on real teacher features: bytes/sample, ratio vs float32, max abs error, cosine.

    python bench/codecs.py --teacher teacher.pt --data DATA [--split train] [--samples 64]
                           [--throughput] [--json]

Runs the teacher over the first samples of the split and encodes each fused level with every
preset of md.stores.codecs through the real store layout (md.teacher_cache.fidelity). With
--throughput it also times the teacher forward alone against whole `md cache-teacher` runs.
Prints markdown tables (for docs/benchmarks.md) or JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Any

import torch

from md.teacher_cache.fidelity import measure_codecs, measure_throughput


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="teacher checkpoint (md train-teacher)")
    p.add_argument("--data", required=True, help="dataset root (KAIST or MFNet layout)")
    p.add_argument("--split", default="train")
    p.add_argument("--samples", type=int, default=64, help="samples whose features are encoded")
    p.add_argument("--shard-size", type=int, default=16, help="store shard size (index cost)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--throughput", action="store_true", help="also time forward vs cache runs")
    p.add_argument("--repeats", type=int, default=3, help="throughput rounds (best is kept)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = measure_codecs(
        args.teacher, args.data, args.split, args.samples, args.shard_size, device=args.device
    )
    if args.throughput:
        report["throughput"] = measure_throughput(
            args.teacher, args.data, args.split, args.batch_size, args.shard_size,
            repeats=args.repeats, device=args.device,
        )  # fmt: skip
    report["machine"] = {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    print(json.dumps(report, indent=2) if args.json else "\n".join(markdown(report)))
    return 0


def markdown(report: dict[str, Any]) -> list[str]:
    lines = [
        f"{report['samples']} samples of {report['data']} ({report['split']}), shards of "
        f"{report['shard_size']}",
        "",
        "| level | C×H×W | preset | bytes/sample | ratio vs fp32 | max abs error | "
        "max abs / max abs value | cosine min | cosine mean |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        shape = "×".join(map(str, r["shape"]))
        lines.append(
            f"| {r['level']} | {shape} | {r['preset']} | {r['bytes_per_sample']:,.0f} | "
            f"{r['ratio_vs_float32']:.2f} | {r['max_abs_error']:.3g} | "
            f"{r['relative_max_error']:.2e} | {r['cosine_min']:.6f} | {r['cosine_mean']:.6f} |"
        )
    tp = report.get("throughput")
    if tp:
        lines += [
            "",
            f"best of {tp['repeats']} rounds over {tp['samples']} samples",
            "",
            "| run | samples/s |",
            "| --- | ---: |",
        ]
        lines.append(f"| teacher forward only (batches preloaded) | {tp['forward_only']:.1f} |")
        lines.append(f"| image loading + teacher forward | {tp['load_and_forward']:.1f} |")
        for name, c in tp["cache"].items():
            total = c["bytes_per_sample"]["total"]
            lines.append(
                f"| md cache-teacher --codec {name} ({total:,.0f} B/sample stored) | "
                f"{c['samples_per_s']:.1f} |"
            )
    return lines


if __name__ == "__main__":
    sys.exit(main())
