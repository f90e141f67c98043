"""Experiment grids for the MD tables (Tables 1-4, 7-8) and their markdown rendering.

A grid is a list of `Run`s (one student or teacher evaluation each). `run_grid` executes the
missing ones through the real CLI (`md train-student`, `md evaluate model`) in a small pool
of single-threaded worker processes, appending one JSON record per finished run to a JSONL
file, so an interrupted campaign resumes where it stopped. `table_rows` aggregates seeds as
mean ± standard error (the paper's convention: SE = sample std / sqrt(n)).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FACTORS = ("1", "4", "16", "64", "none")  # thermal pixel factors; none = visible-only
FACTOR_LABEL = {
    "1": "Full resolution",
    "4": "4x downsample",
    "16": "16x downsample",
    "64": "64x downsample",
    "none": "Visible-only",
}


@dataclass(frozen=True)
class Run:
    """One student training + evaluation. `variant`: native | md | an ablation name."""

    task: str
    factor: str
    variant: str
    seed: int
    overrides: tuple[str, ...] = ()  # extra key=value for md train-student
    no_distill: bool = False

    @property
    def key(self) -> str:
        return f"{self.task}/{self.variant}/tf{self.factor}/s{self.seed}"


@dataclass
class Campaign:
    """Where a grid reads its inputs and writes its outputs."""

    data: dict[str, str]  # task -> dataset root
    store: dict[str, str]  # task -> teacher store
    out_dir: Path
    preset: str = "cpu-demo"
    common: tuple[str, ...] = ("progress=false",)
    workers: int = 2
    threads_per_worker: int = 1
    log: list[str] = field(default_factory=list)

    @property
    def results(self) -> Path:
        return self.out_dir / "results.jsonl"


def md_grid(tasks: Sequence[str], factors: Sequence[str], seeds: Sequence[int]) -> list[Run]:
    """Tables 3-4: native vs MD students for each thermal factor and seed."""
    return [
        Run(t, f, v, s, no_distill=(v == "native"))
        for t in tasks
        for s in seeds
        for f in factors
        for v in ("native", "md")
    ]


ABLATIONS: dict[str, tuple[str, ...]] = {  # Tables 7-8 rows besides native and full MD
    "S(M)": ("semantic_loss=mse", "attention=false"),
    "S(F)": ("attention=false",),
    "A": ("semantic=false",),
    "S(M)+A": ("semantic_loss=mse",),
}


def ablation_grid(tasks: Sequence[str], seeds: Sequence[int], factor: str = "16") -> list[Run]:
    return [
        Run(t, factor, name, s, overrides=ov)
        for t in tasks
        for s in seeds
        for name, ov in ABLATIONS.items()
    ]


def done_keys(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()}


def _cmd(c: Campaign, r: Run, ckpt: Path) -> list[list[str]]:
    md = [sys.executable, "-m", "md.cli"]
    train = [
        *md,
        "train-student",
        "--data",
        c.data[r.task],
        "--out",
        str(ckpt),
        "--task",
        r.task,
        "--thermal-factor",
        r.factor,
        "--preset",
        c.preset,
        f"seed={r.seed}",
        *c.common,
        *r.overrides,
    ]
    train += ["--no-distill"] if r.no_distill else ["--store", c.store[r.task]]
    evaluate = [*md, "evaluate", "model", str(ckpt), "--data", c.data[r.task], "--json"]
    return [train, evaluate]


def _execute(c: Campaign, r: Run) -> dict[str, Any]:
    ckpt = c.out_dir / "students" / (r.key.replace("/", "_") + ".pt")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(c.threads_per_worker)}
    train, evaluate = _cmd(c, r, ckpt)
    done = subprocess.run(train, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"key": r.key, **asdict(r), "error": done.stderr.strip().splitlines()[-1:]}
    ev = subprocess.run(evaluate, env=env, capture_output=True, text=True)
    if ev.returncode != 0:
        return {"key": r.key, **asdict(r), "error": ev.stderr.strip().splitlines()[-1:]}
    metrics = json.loads(ev.stdout)
    keep = {k: metrics[k] for k in ("miss_rate", "mean_accuracy", "mean_iou") if k in metrics}
    return {"key": r.key, **asdict(r), **keep, "checkpoint": str(ckpt)}


def run_grid(c: Campaign, runs: Iterable[Run], echo: Any = print) -> None:
    """Run the grid's missing entries (resumable), `c.workers` at a time."""
    c.out_dir.mkdir(parents=True, exist_ok=True)
    todo = [r for r in runs if r.key not in done_keys(c.results)]
    echo(f"{len(todo)} runs to do in {c.out_dir}")
    with ThreadPoolExecutor(max_workers=c.workers) as pool:
        for rec in pool.map(lambda r: _execute(c, r), todo):
            with c.results.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            echo(f"{rec['key']}: {rec.get('error') or _headline(rec)}")


def _headline(rec: dict[str, Any]) -> str:
    if "miss_rate" in rec:
        return f"miss rate {rec['miss_rate']['all']:.2f}"
    return f"mean acc {rec['mean_accuracy']['all']:.2f}, mIoU {rec['mean_iou']['all']:.2f}"


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); 0 for a single value)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def load_results(path: Path) -> list[dict[str, Any]]:
    return (
        [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    )


def metric_of(rec: dict[str, Any]) -> str:
    return "miss_rate" if "miss_rate" in rec else "mean_accuracy"


def aggregate(
    records: Sequence[dict[str, Any]],
    task: str,
    factor: str,
    variant: str,
) -> dict[str, tuple[float, float, int]] | None:
    """{subset: (mean, se, n)} over the seeds of one (task, factor, variant) cell."""
    cell = [
        r
        for r in records
        if r.get("task") == task
        and r.get("factor") == factor
        and r.get("variant") == variant
        and "error" not in r
    ]
    if not cell:
        return None
    metric = metric_of(cell[0])
    out = {}
    for subset in ("day", "night", "all"):
        vals = [r[metric][subset] for r in cell if r[metric].get(subset) is not None]
        if vals:
            m, se = mean_se(vals)
            out[subset] = (m, se, len(vals))
    return out


def format_cell(agg: dict[str, tuple[float, float, int]] | None, subset: str) -> str:
    if agg is None or subset not in agg:
        return "–"
    m, se, n = agg[subset]
    return f"{m:.2f}±{se:.2f}" if n > 1 else f"{m:.2f}"


def thermal_table(
    records: Sequence[dict[str, Any]], task: str, factors: Sequence[str] = FACTORS
) -> str:
    """Markdown in the shape of MD Table 3/4: thermal resolution x {native, MD}."""
    metric = "Miss rate (%) ↓" if task == "detection" else "Mean accuracy (%) ↑"
    lines = [
        f"| Thermal resolution | MD | {metric} day | night | all | seeds |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for f in factors:
        for variant, mark in (("native", ""), ("md", "✓")):
            agg = aggregate(records, task, f, variant)
            n = max((v[2] for v in agg.values()), default=0) if agg else 0
            cells = " | ".join(format_cell(agg, s) for s in ("day", "night", "all"))
            lines.append(f"| {FACTOR_LABEL[f]} | {mark} | {cells} | {n} |")
    return "\n".join(lines)


def ablation_table(records: Sequence[dict[str, Any]], task: str, factor: str = "16") -> str:
    """Markdown in the shape of MD Table 7/8 (semantic transfer M/F, attention transfer)."""
    rows = [
        ("native", "", "", ""),
        ("S(M)", "✓", "", ""),
        ("S(F)", "", "✓", ""),
        ("A", "", "", "✓"),
        ("S(M)+A", "✓", "", "✓"),
        ("md", "", "✓", "✓"),
    ]
    metric = "Miss rate (%) ↓" if task == "detection" else "Mean accuracy (%) ↑"
    lines = [
        f"| S(M) | S(F) | A | {metric} day | night | all | seeds |",
        "| :-: | :-: | :-: | ---: | ---: | ---: | ---: |",
    ]
    for variant, sm, sf, a in rows:
        agg = aggregate(records, task, factor, variant)
        n = max((v[2] for v in agg.values()), default=0) if agg else 0
        cells = " | ".join(format_cell(agg, s) for s in ("day", "night", "all"))
        lines.append(f"| {sm} | {sf} | {a} | {cells} | {n} |")
    return "\n".join(lines)
