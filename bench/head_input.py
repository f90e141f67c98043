"""Issue 18, experiment 2: MD 16x students with head_input attended / trunk / transfer.

    python bench/head_input.py BASE OUT [--runs seg:trunk:0,seg:transfer:0,...] [--summary]

BASE holds the shared baseline of issue 18 (`DS/` datasets, `DS.runs/train.zarr` stores,
`DS.runs/{native,md}_sS.pt` with their `.eval.json`). Each run goes through the real CLI,
with the baseline's MD arguments plus ``head_input=H``:

    md train-student --data BASE/DS --out OUT/DS/H_sS.pt --task segmentation \\
        --thermal-factor 16 --preset cpu-demo seed=S --store BASE/DS.runs/train.zarr head_input=H
    md evaluate model OUT/DS/H_sS.pt --data BASE/DS --json > OUT/DS/H_sS.eval.json

Runs already done (their .eval.json exists) are skipped. ``attended`` re-runs the baseline's
MD student with the per-level transfer statistics logged (md.student_train.transfer_stats);
its weights must equal the baseline's md_sS.pt bitwise (checked and reported).

``--summary`` prints JSON: per dataset and configuration, mean accuracy and mean IoU per seed
with mean ± SE (SE = sample std / sqrt(n)), the native and baseline-MD rows, and from the
training logs the last-window (last 5 records) norms of what the head reads vs the teacher's.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from transfer_stats import summarise_log  # noqa: E402

PY = sys.executable
DEFAULT_RUNS = (
    "seg:attended:0,seg:trunk:0,seg:trunk:1,seg:trunk:2,seg:transfer:0,seg:transfer:1,"
    "seg:transfer:2,mfnet-half:trunk:0,mfnet-half:transfer:0,mfnet-half:attended:0"
)


def md(*args: str, stdout: Path | None = None) -> None:
    cmd = [PY, "-m", "md.cli", *args]
    print("+", " ".join(cmd), flush=True)
    with open(stdout, "w") if stdout else open("/dev/null", "w") as f:
        subprocess.run(cmd, check=True, stdout=f if stdout else None, stderr=subprocess.DEVNULL)


def run_one(base: Path, out: Path, ds: str, head: str, seed: int) -> None:
    target = out / ds / f"{head}_s{seed}.pt"
    ev = target.with_suffix(".eval.json")
    if ev.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        md(
            "train-student", "--data", str(base / ds), "--out", str(target),
            "--task", "segmentation", "--thermal-factor", "16", "--preset", "cpu-demo",
            f"seed={seed}", "--store", str(base / f"{ds}.runs" / "train.zarr"),
            f"head_input={head}", "progress=false",
        )  # fmt: skip
    part = ev.with_name(ev.name + ".part")  # an interrupted evaluation leaves no .eval.json
    md("evaluate", "model", str(target), "--data", str(base / ds), "--json", stdout=part)
    part.rename(ev)


def mean_se(values: list[float]) -> dict[str, Any]:
    n = len(values)
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else None
    return {"per_seed": values, "mean": statistics.fmean(values), "se": se, "n": n}


def same_weights(a: Path, b: Path) -> bool:
    wa = torch.load(a, map_location="cpu", weights_only=False)["weights"]
    wb = torch.load(b, map_location="cpu", weights_only=False)["weights"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def summary(base: Path, out: Path) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for ds in ("seg", "mfnet-half"):
        rows: dict[str, Any] = {}
        evals: dict[str, dict[int, Path]] = {}
        for name in ("native", "md"):
            evals[f"baseline_{name}"] = {
                s: base / f"{ds}.runs" / f"{name}_s{s}.eval.json" for s in range(3)
            }
        for head in ("attended", "trunk", "transfer"):
            evals[head] = {s: out / ds / f"{head}_s{s}.eval.json" for s in range(3)}
        for name, paths in evals.items():
            got = {s: json.loads(p.read_text()) for s, p in paths.items() if p.exists()}
            if not got:
                continue
            row = {
                "seeds": sorted(got),
                "mean_accuracy": mean_se([got[s]["mean_accuracy"]["all"] for s in sorted(got)]),
                "mean_iou": mean_se([got[s]["mean_iou"]["all"] for s in sorted(got)]),
            }
            logs = {
                s: p.with_name(p.name.replace(".eval.json", ".metrics.jsonl"))
                for s, p in paths.items()
            }
            row["logs"] = {
                s: summarise_log(logs[s], window=5) for s in sorted(got) if logs[s].exists()
            }
            rows[name] = row
        checks = {}
        for s in range(3):
            mine, theirs = out / ds / f"attended_s{s}.pt", base / f"{ds}.runs" / f"md_s{s}.pt"
            if mine.exists() and theirs.exists():
                checks[f"s{s}"] = same_weights(mine, theirs)
        rows["attended_equals_baseline_md_bitwise"] = checks
        teacher = base / f"{ds}.runs" / "teacher.eval.json"
        if teacher.exists():
            t = json.loads(teacher.read_text())
            rows["teacher"] = {
                "mean_accuracy": t["mean_accuracy"]["all"],
                "mean_iou": t["mean_iou"]["all"],
            }
        res[ds] = rows
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("base", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--runs", default=DEFAULT_RUNS, help="DS:HEAD:SEED,...")
    ap.add_argument("--summary", action="store_true", help="print the JSON summary only")
    a = ap.parse_args()
    if not a.summary:
        for spec in a.runs.split(","):
            ds, head, seed = spec.split(":")
            run_one(a.base, a.out, ds, head, int(seed))
    print(json.dumps(summary(a.base, a.out), indent=1))


if __name__ == "__main__":
    main()
