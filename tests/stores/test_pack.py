"""pack / unpack: a round trip gives the same store; unsafe or tampered zips are refused."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from contract import build_local, tiny_schema
from crafted_zips import MiB, manifest, members, patch_central, write_zeros_zip, write_zip

import md
from md.errors import StoreError
from md.stores import check_manifest, info, open_store, pack, unpack, verify
from md.stores.pack import MANIFEST_NAME, _windows


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_pack_unpack_round_trip(compact_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "ship.zip"
    summary = pack(compact_store, out)
    assert summary["files"] == len(_tree(compact_store))
    with zipfile.ZipFile(out) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        manifest = json.loads(zf.read(MANIFEST_NAME))
    assert set(manifest["files"]) == set(_tree(compact_store))
    dest = unpack(out, tmp_path / "gateway" / "store.zarr")
    assert _tree(dest) == _tree(compact_store)
    a, b, c = (open_store(u).read(range(10)) for u in (compact_store, dest, out))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        np.testing.assert_array_equal(a[name], c[name])
    assert verify(str(dest)).ok
    assert info(out)["bytes_per_sample"] == info(compact_store)["bytes_per_sample"]


def test_pack_is_reproducible_and_guarded(local_store: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a.zip", tmp_path / "b.zip"
    pack(local_store, first)
    pack(local_store, second)
    assert (
        hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()
    )
    with pytest.raises(StoreError, match="already exists"):
        pack(local_store, first)
    pack(local_store, first, force=True)
    with pytest.raises(StoreError, match="inside the store"):
        pack(local_store, local_store / "x.zip")
    with pytest.raises(StoreError, match=r"end in \.zip"):
        pack(local_store, tmp_path / "x.tar")
    partial = build_local(tmp_path / "partial.zarr", tiny_schema(), shards=[0])
    with pytest.raises(StoreError, match=r"shards \[1, 2\] were never written"):
        pack(partial, tmp_path / "p.zip")
    assert pack(partial, tmp_path / "p.zip", allow_incomplete=True)["incomplete_shards"] == [1, 2]


def _evil_zip(path: Path, name: str, *, in_manifest: bool = True, symlink: bool = False) -> Path:
    data = b"payload"
    files = {"zarr.json": b"{}", name: data}
    manifest = {
        "format": "md-store-pack",
        "version": 1,
        "files": {
            n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
            for n, d in files.items()
            if in_manifest or n != name
        },
    }
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in files.items():
            info = zipfile.ZipInfo(n)
            if symlink and n == name:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, d)
        zf.writestr(MANIFEST_NAME, json.dumps(manifest))
    return path


@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("../evil", {}, "unsafe member '../evil'"),
        ("a/../../evil", {}, "unsafe member"),
        ("/etc/evil", {}, "unsafe member '/etc/evil'"),
        ("C:/evil", {}, "unsafe member"),
        ("a\\..\\evil", {}, "unsafe member"),
        ("link", {"symlink": True}, "unsafe member 'link'"),
        ("extra", {"in_manifest": False}, r"not in the manifest \['extra'\]"),
    ],
)
def test_unpack_refuses_unsafe_zips(
    tmp_path: Path, name: str, kw: dict[str, bool], match: str
) -> None:
    src = _evil_zip(tmp_path / "evil.zip", name, **kw)
    dest = tmp_path / "out" / "store.zarr"
    with pytest.raises(StoreError, match=match):
        unpack(src, dest)
    assert not dest.exists() and not any(p.name == "evil" for p in tmp_path.rglob("*"))


def test_unpack_refuses_tampered_members_and_busy_targets(
    local_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "s.zip"
    pack(local_store, out)
    with zipfile.ZipFile(out) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    members["sample_id/c/0"] = members["sample_id/c/0"][:-1] + b"\x00"
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(tampered, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    with pytest.raises(StoreError, match="sample_id/c/0 does not match its manifest sha256"):
        unpack(tampered, tmp_path / "t.zarr")
    assert not (tmp_path / "t.zarr").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an empty directory"):
        unpack(out, busy)
    with pytest.raises(StoreError, match="not a readable zip"):
        unpack(local_store / "zarr.json", tmp_path / "x")


# -- bounded unpack: compressed members, lying sizes, bombs ------------------------------------

# Runs unpack then verify in a fresh process and reports how far its peak RSS rose over them.
# The peak is VmHWM: ru_maxrss would start at the parent's (pytest's) peak, inherited over
# fork + exec, and hide anything below it.
_PEAK_RSS_CHILD = """
import json, sys
from md.errors import StoreError
from md.stores import unpack, verify

def peak():  # bytes
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

before, outcomes = peak(), []
for call in (lambda: str(unpack(sys.argv[1], sys.argv[2])), lambda: verify(sys.argv[1]).ok):
    try:
        outcomes.append(["ok", call()])
    except StoreError as e:
        outcomes.append(["error", str(e)])
print(json.dumps({"growth": peak() - before, "outcomes": outcomes}))
"""
_RSS_BOUND = 64 * MiB  # far below the members below, far above 1 MiB read chunks


def _unpack_and_verify_in_child(src: Path, dest: Path) -> dict[str, Any]:
    """{"growth": peak RSS rise in bytes, "outcomes": [[ok|error, value], ...]}."""
    if not Path("/proc/self/status").exists():
        pytest.skip("peak RSS is read from /proc (Linux)")
    here = str(Path(md.__file__).parents[1])  # this checkout's md, whatever is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_CHILD, str(src), str(dest)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.splitlines()[-1]))


def _packed(store: Path, tmp_path: Path) -> dict[str, bytes]:
    out = tmp_path / "packed.zip"
    pack(store, out)
    return members(out)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the zip members opened for reading (ZipFile.read goes through open too)."""
    names: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(self: zipfile.ZipFile, name: Any, *args: Any, **kwargs: Any) -> Any:
        names.append(name if isinstance(name, str) else name.filename)
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    return names


def _no_unpack_leftovers(dest: Path) -> bool:
    return not dest.exists() and not list(dest.parent.glob(f".{dest.name}.unpack-*"))


def test_deflate_bomb_is_refused_before_it_is_read(local_store: Path, tmp_path: Path) -> None:
    files = _packed(local_store, tmp_path)
    # 256 MiB of zeros in ~1 MiB of zip; the manifest tells the truth about it.
    bomb = write_zeros_zip(tmp_path / "bomb.zip", files, "zeros.bin", 256 * MiB, deflate=True)
    assert bomb.stat().st_size < 4 * MiB
    dest = tmp_path / "out" / "store.zarr"
    run = _unpack_and_verify_in_child(bomb, dest)
    for kind, message in run["outcomes"]:  # unpack, then verify
        assert kind == "error"
        assert message == (
            f"{bomb}: member zeros.bin is compressed (deflate); `md store pack` writes "
            "uncompressed zips, read in place: re-pack the store with `md store pack`"
        )
    assert run["growth"] < _RSS_BOUND, run
    assert _no_unpack_leftovers(dest)


def test_large_stored_member_streams_in_bounded_memory(local_store: Path, tmp_path: Path) -> None:
    nbytes = 160 * MiB  # read whole, as `zf.read` did, it alone would pass the bound
    files = _packed(local_store, tmp_path)
    src = write_zeros_zip(tmp_path / "big.zip", files, "zeros.bin", nbytes, deflate=False)
    dest = tmp_path / "out" / "store.zarr"
    run = _unpack_and_verify_in_child(src, dest)
    assert run["outcomes"] == [["ok", str(dest)], ["ok", True]]
    assert run["growth"] < _RSS_BOUND, run
    assert (dest / "zeros.bin").stat().st_size == nbytes
    assert {p: (dest / p).read_bytes() for p in files if p != MANIFEST_NAME} == {
        p: d for p, d in files.items() if p != MANIFEST_NAME
    }


@pytest.mark.parametrize("victim", ["sample_id/c/0", MANIFEST_NAME])
def test_compressed_members_are_refused(
    local_store: Path, tmp_path: Path, victim: str, opened: list[str]
) -> None:
    src = write_zip(tmp_path / "deflated.zip", _packed(local_store, tmp_path), deflate=[victim])
    opened.clear()
    dest = tmp_path / "d.zarr"
    want = f"{src}: member {victim} is compressed (deflate)"
    with pytest.raises(StoreError, match=re.escape(want)):
        unpack(src, dest)
    (problem,) = check_manifest(src)
    assert problem.startswith(want) and "re-pack the store with `md store pack`" in problem
    assert opened == [] and _no_unpack_leftovers(dest)


def test_member_larger_than_its_manifest_entry_is_refused_unread(
    local_store: Path, tmp_path: Path, opened: list[str]
) -> None:
    files = _packed(local_store, tmp_path)
    files["pad.bin"] = bytes(4 * MiB)
    files[MANIFEST_NAME] = manifest(files, **{"pad.bin": 7})
    src = write_zip(tmp_path / "padded.zip", files)
    opened.clear()
    want = f"{src}: member pad.bin declares 4194304 bytes, its manifest entry 7"
    with pytest.raises(StoreError, match=re.escape(want)):
        unpack(src, tmp_path / "d.zarr")
    (problem,) = check_manifest(src)
    assert problem.startswith(want)
    assert "pad.bin" not in opened


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"compressed": 9}, r"member zarr\.json declares \d+ bytes but stores 9"),
        ({"uncompressed": 1 << 30}, r"member zarr\.json declares 1073741824 bytes but stores"),
        ({"flags": 1}, r"member zarr\.json is encrypted"),
    ],
)
def test_lying_central_directory_is_refused(
    local_store: Path, tmp_path: Path, fields: dict[str, int], match: str
) -> None:
    src = tmp_path / "lying.zip"
    pack(local_store, src)
    patch_central(src, "zarr.json", **fields)
    with pytest.raises(StoreError, match=match):
        unpack(src, tmp_path / "d.zarr")
    assert re.search(match, " ".join(check_manifest(src)))
    assert _no_unpack_leftovers(tmp_path / "d.zarr")


def test_oversized_manifest_is_refused_unread(
    local_store: Path, tmp_path: Path, opened: list[str]
) -> None:
    files = _packed(local_store, tmp_path)
    # Still valid JSON, but no manifest of this store's members is anywhere near this big.
    files[MANIFEST_NAME] += b" " * MiB
    src = write_zip(tmp_path / "fat.zip", files)
    opened.clear()
    with pytest.raises(StoreError, match=rf"{MANIFEST_NAME} declares \d+ bytes, more than \d+"):
        unpack(src, tmp_path / "d.zarr")
    assert opened == []


def test_upload_windows_bound_objects_and_bytes() -> None:
    sizes = {"a": 10, "b": 10, "c": 10, "huge": 100, "d": 1, "e": 1, "f": 1, "g": 1}
    windows = list(_windows(list(sizes), sizes, max_objects=3, max_bytes=25))
    assert windows == [["a", "b"], ["c"], ["huge"], ["d", "e", "f"], ["g"]]
