"""`md store sync` / `sync_store`: resumable, verified copies of a store (local and S3)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from contract import build_local, tiny_schema

from md.errors import StoreError
from md.stores import open_store, sync_store, verify
from md.stores.sync import SYNC_MARKER
from tests.conftest import REPO, run_cli
from tests.s3server import S3Server


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != SYNC_MARKER
    }


def _assert_same_store(src: str, dst: str) -> None:
    with open_store(src) as a, open_store(dst) as b:
        assert a.schema == b.schema and a.attrs == b.attrs
        idx = list(range(a.n))
        want, got = a.read(idx), b.read(idx)
        assert want.keys() == got.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert verify(dst).ok


def test_killed_sync_resumes_without_copying_twice(tmp_path: Path) -> None:
    src = tmp_path / "src.zarr"
    build_local(src, tiny_schema("lossless", n=24, shard_size=4, full=True))
    src_files = _files(src)
    total = sum(len(b) for b in src_files.values())
    dst = tmp_path / "dst.zarr"
    # A rate that makes the copy last ~4 s: time to cut it in the middle.
    limit_mb = total / 4.0 / 1e6
    log = tmp_path / "sync.log"
    with log.open("wb") as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "md.cli", "store", "sync", str(src), str(dst),
             "--bandwidth-limit", f"{limit_mb:.6f}"],
            env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if dst.is_dir() and len(_files(dst)) >= len(src_files) // 3:
                break
            time.sleep(0.01)
        assert child.poll() is None, log.read_text()
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    landed = _files(dst)
    good = {k for k, blob in landed.items() if src_files.get(k) == blob}
    assert len(good) >= len(src_files) // 3 - 1 and len(good) < len(src_files)
    assert json.loads((dst / SYNC_MARKER).read_text())["state"] == "in-progress"
    with pytest.raises(StoreError):  # a cut sync never looks like a store
        open_store(dst)

    result = sync_store(src, dst)
    assert not set(result.copied_keys) & good  # nothing that had landed intact is copied again
    assert result.objects_copied == len(src_files) - len(good)
    assert result.objects_skipped == len(good) and result.verified
    assert result.bytes_copied == sum(len(src_files[k]) for k in result.copied_keys)
    assert _files(dst) == src_files
    assert json.loads((dst / SYNC_MARKER).read_text())["state"] == "complete"
    _assert_same_store(str(src), str(dst))
    again = sync_store(src, dst)  # in sync: nothing copied
    assert again.objects_copied == 0 and again.objects_skipped == len(src_files)


def test_corrupt_object_at_dst_is_replaced(local_store: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst.zarr"
    first = sync_store(local_store, dst)
    assert first.objects_copied == first.objects_total and first.bytes_copied > 0
    victim = "features/C3/c/1/0/0/0"
    data = bytearray((dst / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (dst / victim).write_bytes(bytes(data))
    (dst / "features/C4/c/0/0/0/0").unlink()
    second = sync_store(local_store, dst)
    # the two damaged objects, and the root metadata (removed while DST was in progress)
    assert sorted(second.copied_keys) == sorted([victim, "features/C4/c/0/0/0/0", "zarr.json"])
    assert _files(dst) == _files(local_store)
    _assert_same_store(str(local_store), str(dst))


def test_extra_objects_at_dst_are_removed(local_store: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst.zarr"
    sync_store(local_store, dst)
    (dst / "features/C3/c/9").mkdir(parents=True)
    (dst / "features/C3/c/9/0").write_bytes(b"stale")
    result = sync_store(local_store, dst)
    assert result.objects_deleted == 1 and _files(dst) == _files(local_store)


def test_other_schema_is_refused_in_one_line(local_store: Path, tmp_path: Path) -> None:
    dst = tmp_path / "other.zarr"
    build_local(dst, tiny_schema("compact"))
    before = _files(dst)
    with pytest.raises(StoreError) as err:
        sync_store(local_store, dst)
    msg = str(err.value)
    assert "\n" not in msg and "another schema" in msg and str(dst) in msg
    assert _files(dst) == before  # untouched
    out = run_cli("store", "sync", str(local_store), str(dst), expect=2)
    assert out.strip().splitlines() == [f"md: error: {msg}"]
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="holds objects but no store"):
        sync_store(local_store, junk)


def test_bandwidth_limit_is_kept(local_store: Path, tmp_path: Path) -> None:
    total = sum(len(b) for b in _files(local_store).values())
    limit = total / 0.6  # bytes/s: the copy must take >= 0.6 s
    t0 = time.monotonic()
    result = sync_store(local_store, tmp_path / "dst.zarr", bandwidth_limit=limit)
    assert time.monotonic() - t0 >= result.bytes_copied / limit
    assert result.bytes_copied == total


def test_cli_sync_reports_bytes(local_store: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst.zarr"
    out = run_cli("store", "sync", str(local_store), str(dst), "--json")
    report = json.loads(out[out.index("{") :])
    assert report["objects_copied"] == report["objects_total"] > 0 and report["verified"]
    text = run_cli("store", "sync", str(local_store), str(dst))
    assert "copied 0 objects" in text and f"skipped {report['objects_total']} identical" in text


def test_cli_sync_is_audited_beside_dst_and_leaves_dst_equal_to_src(
    local_store: Path, tmp_path: Path
) -> None:
    from md.audit import read_log, verify_log

    src = tmp_path / "hub" / "src.zarr"
    src.parent.mkdir()
    shutil.copytree(local_store, src)
    (src / "audit").mkdir(exist_ok=True)
    (src / "audit" / "log.jsonl").write_text("")  # SRC's history travels with it, unchanged
    gateway = tmp_path / "gateway"
    gateway.mkdir()
    dst = gateway / "dst.zarr"
    run_cli("store", "sync", str(src), str(dst))
    run_cli("store", "sync", str(src), str(dst))
    assert _files(dst) == _files(src)  # no sync line inside DST
    lines = read_log(gateway / "audit.jsonl")
    assert [x["command"] for x in lines] == ["store sync", "store sync"]
    assert lines[0]["outputs"]["store"]["sha256"] is not None
    assert [x["details"]["objects_copied"] for x in lines][1] == 0
    assert verify_log(gateway / "audit.jsonl").ok


def test_sync_to_s3_and_back(
    local_store: Path, s3_bucket: str, s3_env: S3Server, tmp_path: Path
) -> None:
    url = f"s3://{s3_bucket}/run.zarr"
    up = sync_store(local_store, url)
    assert up.objects_copied == up.objects_total and up.verified
    assert SYNC_MARKER in {k.rsplit("/", 1)[-1] for k in s3_env.keys(s3_bucket)}
    _assert_same_store(str(local_store), url)
    assert sync_store(local_store, url).objects_copied == 0
    back = tmp_path / "back.zarr"
    down = sync_store(url, back)
    assert down.objects_copied == up.objects_total
    assert _files(back) == _files(local_store)
