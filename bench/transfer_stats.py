"""Issue 18, experiment 2: what the transfer does to the features, read off training logs.

    python bench/transfer_stats.py RUN.metrics.jsonl [...] [--window 5] [--table]

For each log (a `md train-student` metrics log; the checkpoint's config.yaml beside it gives
λ_A, λ_S), prints JSON: the first and last values of each loss (task, attention, semantic,
total) and of each per-level statistic the trainer logs (md.student_train.transfer_stats:
teacher / student / head-input RMS and per-position L2 norms, F-MSE, MSE, Dice, ...), the
mean of the last `window` records, the student/teacher and head/teacher norm ratios, and the
ratio of the weighted transfer losses (λ_A·attention + λ_S·semantic) to the task loss.
Logs from before the statistics existed still give the loss rows. ``--table`` adds a compact
text table per log on stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

LOSSES = ("task", "attention", "semantic", "total")


def _records(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind", "train") == "train"]


def _weights(path: Path) -> tuple[float, float]:
    cfg_path = path.with_name(path.name.removesuffix(".metrics.jsonl") + ".config.yaml")
    cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
    return float(cfg.get("attention_weight", 1.0)), float(cfg.get("semantic_weight", 1.0))


def _series(records: list[dict[str, Any]], key: str, window: int) -> dict[str, Any] | None:
    xs = [(r["iteration"], r[key]) for r in records if key in r]
    if not xs:
        return None
    tail = [v for _, v in xs[-window:]]
    return {
        "first": xs[0][1],
        "last": xs[-1][1],
        "last_window_mean": statistics.fmean(tail),
        "first_iteration": xs[0][0],
        "last_iteration": xs[-1][0],
    }


def summarise_log(path: str | Path, window: int = 5) -> dict[str, Any]:
    """The JSON summary of one log (see the module docstring)."""
    path = Path(path)
    records = _records(path)
    la, ls = _weights(path)
    out: dict[str, Any] = {"log": str(path), "records": len(records), "lambda": [la, ls]}
    out["losses"] = {k: s for k in LOSSES if (s := _series(records, f"loss/{k}", window))}
    ratio = []
    for r in records:
        if "loss/task" in r and ("loss/attention" in r or "loss/semantic" in r):
            w = la * r.get("loss/attention", 0.0) + ls * r.get("loss/semantic", 0.0)
            ratio.append({"iteration": r["iteration"], "transfer_to_task": w / r["loss/task"]})
    if ratio:
        tail = [x["transfer_to_task"] for x in ratio[-window:]]
        out["transfer_to_task"] = {
            "first": ratio[0]["transfer_to_task"],
            "last": ratio[-1]["transfer_to_task"],
            "last_window_mean": statistics.fmean(tail),
        }
    keys = sorted({k for r in records for k in r if k.startswith("stats/") and k.count("/") == 2})
    levels: dict[str, dict[str, Any]] = {}
    for key in keys:
        _, lv, name = key.split("/")
        s = _series(records, key, window)
        if s is not None:
            levels.setdefault(lv, {})[name] = s
    for d in levels.values():
        for num in ("student", "head"):
            if f"{num}_rms" in d and "teacher_rms" in d:
                d[f"{num}_to_teacher_rms"] = {
                    k: d[f"{num}_rms"][k] / d["teacher_rms"][k]
                    for k in ("first", "last", "last_window_mean")
                }
    out["levels"] = levels
    return out


def table(summary: dict[str, Any]) -> str:
    lines = [f"{summary['log']} ({summary['records']} records, lambda {summary['lambda']})"]
    for k, s in summary["losses"].items():
        lines.append(f"  loss/{k:<10} {s['first']:>10.4g} -> {s['last']:>10.4g}")
    if "transfer_to_task" in summary:
        t = summary["transfer_to_task"]
        lines.append(f"  transfer/task   {t['first']:>10.4g} -> {t['last']:>10.4g}")
    names = ("teacher_rms", "student_rms", "head_rms", "fmse", "mse", "dice", "fmse_positions")
    if summary["levels"]:
        lines.append("  level " + "".join(f"{n:>22}" for n in names))
        for lv, d in summary["levels"].items():
            cells = [
                f"{d[n]['first']:>9.3g} ->{d[n]['last']:>9.3g}" if n in d else f"{'-':>22}"
                for n in names
            ]
            lines.append(f"  {lv:<5} " + "".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("logs", nargs="+", type=Path)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--table", action="store_true")
    a = ap.parse_args()
    res = [summarise_log(p, a.window) for p in a.logs]
    if a.table:
        for s in res:
            print(table(s), file=sys.stderr)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
