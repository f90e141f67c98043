"""pack / unpack: a round trip gives the same store; unsafe or tampered zips are refused."""

from __future__ import annotations

import hashlib
import json
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from contract import build_local, tiny_schema

from md.errors import StoreError
from md.stores import info, open_store, pack, unpack, verify
from md.stores.pack import MANIFEST_NAME


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
