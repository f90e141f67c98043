"""Mean ± standard error over seeds of `md evaluate model --json` results, as table rows.

    python bench/seed_table.py "native=runs/native_s*.eval.json" "MD=runs/md_s*.eval.json" \
        [--metric mean_accuracy] [--subset all] [--json]

Each argument is LABEL=GLOB; the files a glob matches are one arm's seeds (sorted by name,
so ``_s0``, ``_s1``, ``_s2``). Prints a markdown row per arm: mean accuracy and mean IoU of
the subset (all / day / night), mean ± SE (SE = sample std / √n, as in the MD paper's
tables; a single seed has no SE) and the per-seed values; ``--json`` prints the same as JSON.
An arm with no file is reported as missing, not skipped silently.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any


def _value(doc: dict[str, Any], metric: str, subset: str, path: str) -> float:
    try:
        return float(doc[metric][subset])
    except (KeyError, TypeError) as err:
        raise SystemExit(
            f"{path}: no {metric}/{subset}; is it an `md evaluate model --json`?"
        ) from err


def _load(path: str) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(
            f"{path}: not JSON ({err.msg}); an evaluation still running or cut off: rerun "
            "`md evaluate model ... --json` into it"
        ) from err
    return doc if isinstance(doc, dict) else {}


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error (sample std / √n); no SE for one value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def arm(label: str, pattern: str, subset: str = "all") -> dict[str, Any]:
    """One arm's seeds: per-file values and mean ± SE of mean accuracy and mean IoU."""
    files = sorted(glob.glob(pattern))
    out: dict[str, Any] = {"label": label, "glob": pattern, "files": files}
    if not files:
        return {**out, "missing": True}
    docs = [_load(f) for f in files]
    for metric in ("mean_accuracy", "mean_iou"):
        vals = [_value(d, metric, subset, f) for d, f in zip(docs, files, strict=True)]
        mean, se = mean_se(vals)
        out[metric] = {"per_seed": vals, "mean": mean, "se": se}
    return out


def _fmt(m: dict[str, Any]) -> str:
    se = "" if m["se"] is None else f"±{m['se']:.2f}"
    return f"{m['mean']:.2f}{se}"


def row(a: dict[str, Any]) -> str:
    if a.get("missing"):
        return f"| {a['label']} | missing ({a['glob']}) | | |"
    acc, iou = a["mean_accuracy"], a["mean_iou"]
    seeds = " / ".join(f"{v:.2f}" for v in acc["per_seed"])
    return f"| {a['label']} | {_fmt(acc)} ({seeds}) | {_fmt(iou)} | {len(a['files'])} |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("arms", nargs="+", help="LABEL=GLOB of .eval.json files")
    p.add_argument("--subset", default="all", choices=("all", "day", "night"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    arms = []
    for spec in args.arms:
        label, sep, pattern = spec.partition("=")
        if not sep or not pattern:
            raise SystemExit(f"{spec!r}: expected LABEL=GLOB, e.g. native=runs/native_s*.eval.json")
        arms.append(arm(label, pattern, args.subset))
    if args.json:
        json.dump(arms, sys.stdout, indent=1)
        print()
    else:
        print("| arm | mean accuracy (per seed) | mean IoU | seeds |")
        print("| --- | ---: | ---: | ---: |")
        for a in arms:
            print(row(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
