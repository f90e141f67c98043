"""Targeted re-distillation under shift (issue 16): metric drop, recovery after K
re-distilled frames vs re-caching the whole incoming pool, and the bytes each way.

Per shift (fog, thermal-gain): a base set (seed 0) and a shifted incoming pool + shifted
test split (seed 1, `md data synth --domain`). One teacher is trained on the base; the base
store is cached once. Per student seed: a student on the base; `md drift --select K` on the
pool (drift contribution; the ranking depends on inputs only, so one request per K serves
all seeds); `md cache-teacher --ids` writes the delta; the student is fine-tuned with
`--store base --store delta --init` for FT iterations. "all" re-caches the whole pool.
`random` picks K pool frames uniformly (seeded) as the selection baseline.

    PYTHONPATH=src python bench/redistill.py --out /tmp/rd > redistill.json

The recorded run (docs/benchmarks.md) is bench/results/redistill.json.

Prints one JSON document: per shift, seed and arm the mIoU (segmentation, percent) on the
clean and the shifted test split, and the bytes shipped gateway->hub (request + frame
files) and hub->gateway (the delta store's objects).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PY = sys.executable


def md(*args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([PY, "-m", "md.cli", *args], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"md {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def miou(ckpt: Path, data: Path) -> float:
    out = json.loads(md("evaluate", "model", str(ckpt), "--data", str(data), "--split", "test",
                        "--device", "cpu", "--json"))  # fmt: skip
    return float(out["mean_iou"]["all"])


def synth(out: Path, n_train: int, n_test: int, seed: int, domain: str, size: str) -> Path:
    if not out.exists():
        md("data", "synth", "--task", "segmentation", "--out", str(out), "--n-train",
           str(n_train), "--n-test", str(n_test), "--size", size, "--seed", str(seed),
           "--domain", domain)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shifts", default="fog,thermal-gain")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ks", default="32,64,128")
    ap.add_argument("--n-base", type=int, default=96)
    ap.add_argument("--n-pool", type=int, default=160)
    ap.add_argument("--n-test", type=int, default=32)
    ap.add_argument("--size", default="96x64")
    ap.add_argument("--teacher-iters", type=int, default=150)
    ap.add_argument("--student-iters", type=int, default=150)
    ap.add_argument("--ft-iters", type=int, default=60)
    a = ap.parse_args()
    root = a.out
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ks = [int(k) for k in a.ks.split(",")]
    base = synth(root / "base", a.n_base, a.n_test, 0, "none", a.size)
    teacher = root / "teacher.pt"
    if not teacher.exists():
        md("train-teacher", "--data", str(base), "--out", str(teacher), "--task",
           "segmentation", "--preset", "cpu-tiny", f"iterations={a.teacher_iters}",
           "progress=false")  # fmt: skip
    store = root / "base.zarr"
    cache = ("--bundle-inputs", "--thermal-factor", "16", "progress=false")
    if not store.exists():
        md("cache-teacher", "--teacher", str(teacher), "--data", str(base), "--store",
           str(store), *cache)  # fmt: skip
    common = ("--preset", "cpu-tiny", "progress=false")
    result: dict[str, Any] = {"config": vars(a) | {"out": str(a.out)}, "shifts": {}}
    students = {}
    for seed in range(a.seeds):
        st = root / f"student_s{seed}.pt"
        if not st.exists():
            md("train-student", "--store", str(store), "--out", str(st), *common,
               f"iterations={a.student_iters}", f"seed={seed}")  # fmt: skip
        students[seed] = st
    for shift in a.shifts.split(","):
        pool = synth(root / f"pool_{shift}", a.n_pool, a.n_test, 1, shift, a.size)
        drift = json.loads(md("drift", "--store", str(store), "--data", str(pool), "--split",
                              "train", "--json"))  # fmt: skip
        entry: dict[str, Any] = {
            "drift": {k: {"score": v["score"], "threshold": v["threshold"], "drift": v["drift"]}
                      for k, v in drift["tests"].items()} | {"verdict": drift["verdict"]},
            "arms": {},
        }  # fmt: skip
        arms: dict[str, tuple[Path, dict[str, Any]]] = {}
        for k in [*ks, a.n_pool]:
            name = "all" if k == a.n_pool else f"drift_k{k}"
            req = root / f"req_{shift}_{name}.json"
            info = json.loads(md("drift", "--store", str(store), "--data", str(pool), "--split",
                                 "train", "--select", str(k), "--request", str(req),
                                 "--json"))["request"]  # fmt: skip
            arms[name] = (req, info)
        # random baseline at the smallest K: the same request format, frames drawn uniformly
        doc = json.loads(arms["all"][0].read_text())
        rnd = dict(doc, selected_by="uniform random (seed 0)",
                   frames=random.Random(0).sample(doc["frames"], ks[0]))  # fmt: skip
        rreq = root / f"req_{shift}_random_k{ks[0]}.json"
        rreq.write_text(json.dumps(rnd, indent=2) + "\n")
        frame_bytes = sum(Path(f["files"]["visible"]["path"]).stat().st_size for f in rnd["frames"])
        arms[f"random_k{ks[0]}"] = (rreq, {"frames": ks[0], "bytes_request": rreq.stat().st_size,
                                             "bytes_frames": frame_bytes})  # fmt: skip
        deltas = {}
        for name, (req, info) in arms.items():
            delta = root / f"delta_{shift}_{name}.zarr"
            if not delta.exists():
                md("cache-teacher", "--teacher", str(teacher), "--data", str(pool), "--store",
                   str(delta), "--ids", str(req), "--base-store", str(store), *cache)  # fmt: skip
            deltas[name] = delta
            entry["arms"][name] = {
                "frames": info["frames"],
                "bytes_to_hub": info["bytes_request"] + info["bytes_frames"],
                "bytes_to_gateway": dir_bytes(delta),
                "seeds": {},
            }
        entry["base"] = {"seeds": {}}
        for seed, st in students.items():
            entry["base"]["seeds"][seed] = {"clean": miou(st, base), "shifted": miou(st, pool)}
            for name, delta in deltas.items():
                ft = root / f"ft_{shift}_{name}_s{seed}.pt"
                if not ft.exists():
                    md("train-student", "--store", str(store), "--store", str(delta), "--init",
                       str(st), "--out", str(ft), *common, f"iterations={a.ft_iters}",
                       f"seed={seed}", "warmup_iters=0")  # fmt: skip
                entry["arms"][name]["seeds"][seed] = {
                    "clean": miou(ft, base), "shifted": miou(ft, pool)
                }  # fmt: skip
            # the same fine-tuning on the base alone: what the extra iterations buy by themselves
            ft0 = root / f"ft_{shift}_base_only_s{seed}.pt"
            if not ft0.exists():
                md("train-student", "--store", str(store), "--init", str(st), "--out", str(ft0),
                   *common, f"iterations={a.ft_iters}", f"seed={seed}", "warmup_iters=0")  # fmt: skip
            entry.setdefault("base_only_ft", {"seeds": {}})["seeds"][seed] = {
                "clean": miou(ft0, base), "shifted": miou(ft0, pool)
            }  # fmt: skip
        result["shifts"][shift] = entry
        print(json.dumps({"progress": shift, "elapsed_s": round(time.time() - t0)}),
              file=sys.stderr)  # fmt: skip
    result["base_store_bytes"] = dir_bytes(store)
    result["elapsed_s"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
