"""Group-reweighted distillation on the synthetic under-represented appearance (issue 17).

For each seed: synthesise a detection set whose rare appearance is TRAIN_SHARE of the train
frames and TEST_SHARE of the test frames, train a teacher, cache it, then train three
students -- native (no distillation), MD, MD + group_weights=inverse_frequency -- and
evaluate each with --groups appearance. Prints one JSON object: per run the miss rate of
each appearance group, the disparity (worst - best, worst / best) and the overall miss rate;
then the mean over seeds.

    PYTHONPATH=src python bench/group_reweighting.py --seeds 0 1 2 --preset cpu-demo --work /tmp/gw
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from statistics import mean
from typing import Any

MD = [sys.executable, "-m", "md.cli"]
VARIANTS = {
    "native": ["--no-distill"],
    "md": [],
    "md_reweighted": ["group_weights=inverse_frequency", "group_field=appearance"],
}


def sh(*args: str) -> str:
    return subprocess.run([*MD, *args], check=True, capture_output=True, text=True).stdout


def one_seed(work: Path, seed: int, a: argparse.Namespace) -> dict[str, Any]:
    root = work / f"seed{seed}"
    data = root / "data"
    if not data.exists():
        sh("data", "synth", "--task", "detection", "--out", str(data), "--seed", str(seed),
           "--n-train", str(a.n_train), "--n-test", str(a.n_test),
           "--appearance", f"{a.train_share}:{a.test_share}")  # fmt: skip
    teacher, store = root / "teacher.pt", root / "store.zarr"
    sh("train-teacher", "--task", "detection", "--data", str(data), "--out", str(teacher),
       "--preset", a.preset, f"seed={seed}")  # fmt: skip
    sh("cache-teacher", "--teacher", str(teacher), "--data", str(data), "--store", str(store))
    out: dict[str, Any] = {}
    for name, extra in VARIANTS.items():
        ckpt = root / f"{name}.pt"
        source = [] if name == "native" else ["--store", str(store)]
        sh("train-student", *source, "--data", str(data), "--thermal-factor", "16",
           "--out", str(ckpt), "--preset", a.preset, f"seed={seed}", *extra)  # fmt: skip
        r = json.loads(sh("evaluate", "model", str(ckpt), "--data", str(data),
                          "--groups", "appearance", "--json"))  # fmt: skip
        g = r["groups"]["appearance"]
        out[name] = {"all": r["miss_rate"]["all"], **g["miss_rate"], "disparity": g["disparity"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--preset", default="cpu-demo")
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-test", type=int, default=32)
    p.add_argument("--train-share", type=float, default=0.05)
    p.add_argument("--test-share", type=float, default=0.5)
    p.add_argument("--work", type=Path, required=True)
    a = p.parse_args()
    runs = {s: one_seed(a.work, s, a) for s in a.seeds}
    summary = {
        v: {
            k: mean(runs[s][v][k] for s in a.seeds)
            for k in ("all", "common", "rare")
            if all(runs[s][v].get(k) is not None for s in a.seeds)
        }
        for v in VARIANTS
    }
    print(json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "runs": runs,
                      "mean": summary}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
