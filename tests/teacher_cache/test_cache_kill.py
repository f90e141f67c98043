"""`md cache-teacher` killed from outside (SIGKILL, SIGTERM): its shard-writer child dies with
it, writes nothing after it, and a rerun gives the store an uninterrupted run gives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from md.models.checkpoint import file_sha256
from md.stores import open_store, verify
from tests.conftest import REPO
from tests.teacher_cache.test_cache_teacher import cache, raw_arrays

# The cache in a child interpreter, with each shard write slowed down so the kill lands while
# the writer process holds a shard in flight. The writer is forked, so it inherits the patch.
SLOW_CACHE = """
import sys, time
from md.stores import TargetStore
real = TargetStore.write_shard
def slow(self, *args, **kwargs):
    time.sleep(0.4)
    return real(self, *args, **kwargs)
TargetStore.write_shard = slow
from md.cli import main
main(sys.argv[1:])
"""


def _children(pid: int) -> list[int]:
    """Every process whose parent is `pid` (from /proc: no psutil needed)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie runs nothing; PID 1 of a container may not reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _written(store: Path) -> int:
    try:
        return 8 - len(open_store(store).missing_shards())
    except Exception:  # not created yet (8 samples, shards of 1)
        return 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the writer is a process on Linux")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_cache_leaves_no_writer_and_resumes_identically(
    det_teacher, synth_det, tmp_path, sig
):
    whole, cut = tmp_path / "whole.zarr", tmp_path / "cut.zarr"
    args = [
        "cache-teacher",
        "--teacher",
        str(det_teacher),
        "--data",
        str(synth_det),
        "--store",
        str(cut),
        "--shard-size",
        "1",
        "--batch-size",
        "1",
        "writer=process",
        "progress=false",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    log = tmp_path / "cache.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SLOW_CACHE, *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        writers: list[int] = []
        while time.monotonic() < deadline and proc.poll() is None:
            writers = writers or _children(proc.pid)
            if writers and _written(cut) >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()
        assert writers, "the cache never started its writer process"
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    at_kill = set(range(8)) - set(open_store(cut).missing_shards())
    time.sleep(2.0)
    alive = [pid for pid in writers if _running(pid)]
    for pid in alive:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert alive == [], f"writer processes outlived the killed cache: {alive}"
    # Nothing was written after the parent died: the slowed writer had a shard in flight.
    assert set(range(8)) - set(open_store(cut).missing_shards()) == at_kill
    assert len(at_kill) < 8
    cache(det_teacher, synth_det, whole, "--shard-size", "1", "--batch-size", "1")
    cache(det_teacher, synth_det, cut, "--shard-size", "1", "--batch-size", "1")
    a, b = raw_arrays(whole), raw_arrays(cut)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert verify(cut).ok


def test_a_second_writer_is_refused_while_a_cache_runs(
    det_teacher, other_det_teacher, synth_det, tmp_path
):
    """The issue's race: run A caches with teacher T; run B starts `--overwrite` with T2 on the
    same store while A is still writing. B is refused naming A, A finishes, the store is
    T's alone and verifies."""
    store = tmp_path / "s.zarr"
    args = [
        "cache-teacher",
        "--teacher",
        str(det_teacher),
        "--data",
        str(synth_det),
        "--store",
        str(store),
        "--shard-size",
        "1",
        "--batch-size",
        "1",
        "progress=false",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    log = tmp_path / "a.log"
    with log.open("wb") as out:
        a = subprocess.Popen([sys.executable, "-c", SLOW_CACHE, *args], env=env, stdout=out,
                             stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while _written(store) < 1 and a.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.poll() is None, log.read_text()
        out = cache(other_det_teacher, synth_det, store, "--shard-size", "1", "--batch-size",
                    "1", "--overwrite", expect=2)  # fmt: skip
        assert f"is being written by another run (pid {a.pid}" in out
        assert "s.zarr.lock" in out and "Traceback" not in out
        assert a.wait(timeout=120) == 0, log.read_text()
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    report = verify(store)
    assert report.ok, report.problems
    assert open_store(store).attrs["teacher"]["sha256"] == file_sha256(det_teacher)
