"""Student training iterations/s with 1 process vs W processes (torchrun, DDP) on CPU.

    python bench/ddp_step.py [--nproc 1,2] [--iterations 40] [--batch-size 8]
                             [--preset cpu-tiny] [--size 160x128] [--n-train 32]
                             [--no-sync-bn-too] [--workdir DIR] [key=value ...]

Makes a small synthetic detection store (`md data synth` -> a 2-iteration teacher ->
`md cache-teacher`, shards of 4 samples), then runs `md train-student` on it with the same
global batch under each process count: 1 as a plain process, W > 1 under
``torchrun --standalone --nproc-per-node W`` (gloo, one torch thread per process). Prints JSON:
per run the loop's iterations/s (first batch included) and the steady-state iterations/s
(first batch excluded, from the run's loader record), and each run's speed-up over 1 process.
``--no-sync-bn-too`` adds W-process runs with ``sync_batchnorm=false`` (the cost of the
synchronised BatchNorm). Runs are sequential; on a shared machine the figures are noisy,
compare ratios from one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from md.cli import main as md_main


def _md(*args: str) -> None:
    md_main([*args], standalone_mode=False)


def make_store(work: Path, preset: str, size: str, n_train: int) -> Path:
    """A synthetic detection set, a barely trained teacher and its store (bundled inputs)."""
    data, teacher, store = work / "data", work / "teacher.pt", work / "store.zarr"
    if not store.exists():
        _md(
            "data",
            "synth",
            "--task",
            "detection",
            "--out",
            str(data),
            "--n-train",
            str(n_train),
            "--n-test",
            "1",
            "--size",
            size,
            "--seed",
            "0",
        )
        _md(
            "train-teacher",
            "--data",
            str(data),
            "--out",
            str(teacher),
            "--task",
            "detection",
            "--preset",
            preset,
            "batch_size=2",
            "iterations=2",
            "progress=false",
        )
        _md(
            "cache-teacher",
            "--teacher",
            str(teacher),
            "--data",
            str(data),
            "--store",
            str(store),
            "--shard-size",
            "4",
            "--batch-size",
            "4",
            "--bundle-inputs",
            "--thermal-factor",
            "16",
            "progress=false",
        )
    return store


def train(nproc: int, store: Path, out: Path, args: list[str]) -> dict[str, Any]:
    """One `md train-student --json` run; rank 0's summary."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    launcher = (
        [sys.executable, "-m", "md.cli"]
        if nproc == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(nproc),
            "-m",
            "md.cli",
        ]
    )
    cmd = [
        *launcher,
        "train-student",
        "--store",
        str(store),
        "--out",
        str(out),
        "--json",
        "progress=false",
        "device=cpu",
        *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout[proc.stdout.index("{") :]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", default="1,2", help="comma-separated process counts")
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8, help="global batch (all processes)")
    p.add_argument("--preset", default="cpu-tiny", choices=["cpu-tiny", "cpu-demo"])
    p.add_argument("--size", default="160x128", help="synthetic image WxH")
    p.add_argument("--n-train", type=int, default=32, help="samples in the store")
    p.add_argument(
        "--no-sync-bn-too",
        action="store_true",
        help="also time W > 1 processes with sync_batchnorm=false",
    )
    p.add_argument("--workdir", default=None, help="keep the store here (default: temporary)")
    p.add_argument("overrides", nargs="*", help="key=value fields for md train-student")
    a = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        store = make_store(work, a.preset, a.size, a.n_train)
        common = [
            "--preset",
            a.preset,
            f"batch_size={a.batch_size}",
            f"iterations={a.iterations}",
            f"warmup_iters={a.iterations // 4}",
            f"checkpoint_every={a.iterations}",
            *a.overrides,
        ]
        plan = [(int(n), True) for n in a.nproc.split(",")]
        if a.no_sync_bn_too:
            plan += [(n, False) for n, _ in plan if n > 1]
        runs = []
        for nproc, sync_bn in plan:
            s = train(
                nproc,
                store,
                work / f"student_{nproc}_{int(sync_bn)}.pt",
                [*common, f"sync_batchnorm={str(sync_bn).lower()}"],
            )
            runs.append(
                {
                    "nproc": nproc,
                    "sync_batchnorm": sync_bn,
                    "loop_s": round(s["seconds"], 2),
                    "iter_per_s": round(s["iteration"] / s["seconds"], 2),
                    "steady_iter_per_s": round(
                        s["loader"]["train_samples_per_s"] / a.batch_size, 2
                    ),
                    "loader_wait_fraction": s["loader"]["wait_fraction"],
                }
            )
    base = next((r for r in runs if r["nproc"] == 1), None)
    for r in runs:
        if base is not None:
            r["speedup"] = round(r["steady_iter_per_s"] / base["steady_iter_per_s"], 2)
    report = {
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "load_avg_1min": [load_before, os.getloadavg()[0]],
        "preset": a.preset,
        "image_size": a.size,
        "global_batch": a.batch_size,
        "iterations": a.iterations,
        "runs": runs,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
