"""Run (or report) the MD student tables on our data: Tables 3-4 and 7-8 in shape.

    python bench/md_tables.py run --out runs/tables \\
        --data detection=runs/det --store detection=runs/t3/det-gaff.zarr \\
        --data segmentation=runs/seg --store segmentation=runs/t3/seg-gaff.zarr \\
        [--seeds 0,1,2] [--factors 16,1,4,64,none] [--ablations] [--workers 2]
    python bench/md_tables.py report --out runs/tables

`run` trains and evaluates every missing (task, thermal factor, native|MD, seed) student
through the real CLI (resumable: finished runs are skipped) and appends results to
OUT/results.jsonl; `report` prints the markdown tables (mean ± standard error over seeds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from md import tables


def _pairs(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["run", "report"])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--data", action="append", default=[], help="TASK=DATASET_ROOT")
    p.add_argument("--store", action="append", default=[], help="TASK=TEACHER_STORE")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--factors", default="16,1,4,64,none")
    p.add_argument("--ablations", action="store_true", help="also the Table 7/8 rows")
    p.add_argument("--preset", default="cpu-demo")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    if args.mode == "report":
        records = tables.load_results(args.out / "results.jsonl")
        for task in ("detection", "segmentation"):
            if any(r.get("task") == task for r in records):
                print(
                    f"\n### {task}: native vs MD students\n\n{tables.thermal_table(records, task)}"
                )
                print(f"\n### {task}: ablations at 16x\n\n{tables.ablation_table(records, task)}")
        return 0
    data, store = _pairs(args.data), _pairs(args.store)
    seeds = [int(s) for s in args.seeds.split(",")]
    factors = args.factors.split(",")
    camp = tables.Campaign(
        data=data, store=store, out_dir=args.out, preset=args.preset, workers=args.workers
    )
    runs = []
    for seed in seeds:  # seed-major: a partial campaign still covers every cell once
        runs += tables.md_grid(list(data), factors, [seed])
        if args.ablations:
            runs += tables.ablation_grid(list(data), [seed])
    tables.run_grid(camp, runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
