"""`md store sync` over a cut link: build a store, start a rate-limited sync in a child
process, kill -9 it half-way, rerun, and report what was copied twice. Prints JSON.

    PYTHONPATH=src python bench/sync_resume.py [--samples 64] [--rate-mb 0.5] [--cut 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "stores"), str(REPO)]

from contract import build_local, tiny_schema  # noqa: E402  (test data helpers)

from md.stores import sync_store, verify  # noqa: E402
from md.stores.sync import SYNC_MARKER  # noqa: E402


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != SYNC_MARKER
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--rate-mb", type=float, default=0.5, help="bandwidth limit, MB/s")
    ap.add_argument("--cut", type=float, default=0.5, help="kill after this share of objects")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "src.zarr", Path(tmp) / "dst.zarr"
        build_local(src, tiny_schema("compact", n=args.samples, shard_size=8, full=True))
        src_files = _files(src)
        total = sum(map(len, src_files.values()))
        t0 = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, "-m", "md.cli", "store", "sync", str(src), str(dst),
             "--bandwidth-limit", str(args.rate_mb)],
            env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        while child.poll() is None and not (
            dst.is_dir() and len(_files(dst)) >= args.cut * len(src_files)
        ):
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait()
        first_s = time.monotonic() - t0
        landed = _files(dst)
        good = {k for k, b in landed.items() if src_files.get(k) == b}
        r = sync_store(src, dst, bandwidth_limit=args.rate_mb * 1e6)
        print(json.dumps({
            "objects": len(src_files), "bytes": total,
            "rate_limit_mb_s": args.rate_mb,
            "cut_after_s": round(first_s, 2),
            "intact_before_rerun": len(good),
            "damaged_before_rerun": len(set(landed) - good),
            "rerun_objects_copied": r.objects_copied,
            "rerun_bytes_copied": r.bytes_copied,
            "recopied_intact": len(set(r.copied_keys) & good),
            "rerun_s": round(r.seconds, 2),
            "rerun_rate_mb_s": round(r.bytes_copied / r.seconds / 1e6, 3),
            "equal_to_src": _files(dst) == src_files,
            "verify_ok": verify(dst).ok,
        }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
