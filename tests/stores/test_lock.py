"""One writer per store: the flock beside local stores and the lease beside remote ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest

from md.errors import StoreError
from md.stores.lock import WriterLock, lock_path, writer_lock
from tests.conftest import REPO


def test_a_second_local_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    with writer_lock(url):
        assert Path(lock_path(url)) == tmp_path / "s.zarr.lock"
        with pytest.raises(StoreError) as err:
            writer_lock(url).acquire()
        msg = str(err.value)
        assert "\n" not in msg and f"pid {os.getpid()}" in msg and "s.zarr.lock" in msg
        assert "is being written by another run" in msg
    assert not Path(lock_path(url)).exists()  # released: the file goes with it
    with writer_lock(url):  # and the next writer gets it
        pass


def test_a_killed_holder_frees_the_local_lock(tmp_path: Path) -> None:
    url = str(tmp_path / "s.zarr")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from md.stores.lock import writer_lock\n"
         f"l = writer_lock({url!r}); l.acquire(); print('held', flush=True); time.sleep(60)"],
        env=dict(os.environ, PYTHONPATH=str(REPO / "src")), stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(StoreError, match=f"pid {holder.pid}"):
            writer_lock(url).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with writer_lock(url):  # the kernel dropped the dead run's flock: no stale lock
            pass
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


@pytest.fixture
def memory_url(request: pytest.FixtureRequest) -> str:
    url = f"memory://locks/{request.node.name}/s.zarr"
    yield url
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/locks/{request.node.name}"):
        fs.rm(f"/locks/{request.node.name}", recursive=True)


def _lease(url: str) -> dict:
    return json.loads(
        fsspec.filesystem("memory").cat_file(lock_path(url).removeprefix("memory://"))
    )


def test_a_second_remote_writer_is_refused_until_the_lease_goes(memory_url: str) -> None:
    with writer_lock(memory_url, ttl_s=30) as lock:
        lease = _lease(memory_url)
        assert lease["owner"] == lock.owner and lease["pid"] == os.getpid()
        assert 25 < lease["expires"] - time.time() <= 30
        with pytest.raises(StoreError, match=r"is being written by another run .* expires in"):
            writer_lock(memory_url).acquire()
    assert not fsspec.filesystem("memory").exists(lock_path(memory_url))
    with writer_lock(memory_url):
        pass


def test_an_expired_lease_of_a_dead_run_is_taken_over(memory_url: str) -> None:
    stale = {"owner": "dead", "pid": 1, "host": "gone", "expires": time.time() - 1}
    fsspec.filesystem("memory").pipe_file(lock_path(memory_url), json.dumps(stale).encode())
    with writer_lock(memory_url) as lock:
        assert _lease(memory_url)["owner"] == lock.owner


def test_the_heartbeat_renews_and_notices_a_takeover(memory_url: str) -> None:
    lock = WriterLock(memory_url, ttl_s=0.6)  # beats every 0.2 s
    lock.acquire()
    try:
        first = _lease(memory_url)["expires"]
        time.sleep(0.5)
        assert _lease(memory_url)["expires"] > first  # renewed
        lock.check()
        other = {"owner": "other", "pid": 4242, "host": "elsewhere", "expires": time.time() + 60}
        fsspec.filesystem("memory").pipe_file(lock_path(memory_url), json.dumps(other).encode())
        time.sleep(0.5)
        with pytest.raises(StoreError, match=r"lost its writer lease .*\(pid 4242"):
            lock.check()
    finally:
        lock.release()
    assert _lease(memory_url)["owner"] == "other"  # release leaves another run's lease alone


def test_packed_stores_take_no_writer(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="read-only"):
        writer_lock(str(tmp_path / "s.zip")).acquire()
