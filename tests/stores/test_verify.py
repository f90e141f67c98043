"""`verify` reads every chunk: flipped bytes, lost objects, NaN and gaps are named."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from contract import build_local, tiny_schema

from md.errors import StoreError
from md.stores import open_store, pack, verify

SHARD = ("features", "C3", "c", "1", "0", "0", "0")  # features/C3, shard 1 (samples 4-7)


def _chunk_range(shard_file: Path, chunk: int) -> tuple[int, int]:
    """(offset, nbytes) of inner chunk `chunk` from the shard index (16 B per chunk + crc32c)."""
    data = shard_file.read_bytes()
    index = data[-(16 * 4 + 4) :]
    return struct.unpack_from("<QQ", index, 16 * chunk)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_good_store_verifies(local_store: Path, compact_store: Path) -> None:
    for url in (local_store, compact_store):
        report = verify(str(url))
        assert report.ok, report.problems
        assert report.chunks_checked > 0 and report.bad_shards == []


def test_flipped_byte_in_a_chunk_names_shard_and_sample(local_store: Path) -> None:
    shard = local_store.joinpath(*SHARD)
    offset, nbytes = _chunk_range(shard, 2)  # sample 4 + 2 = 6
    _flip(shard, offset + nbytes // 2)
    report = verify(str(local_store))
    assert not report.ok
    assert report.bad_shards == [1] and report.bad_samples == [6]
    (line,) = report.problems
    assert (
        "shard 1 (samples 4-7): features/C3: crc32c checksum mismatch in samples 6 (set06/V000/I00006)"
        in line
    )


def test_flipped_byte_in_a_shard_index_names_the_shard(local_store: Path) -> None:
    shard = local_store.joinpath(*SHARD)
    _flip(shard, shard.stat().st_size - 10)
    report = verify(str(local_store))
    assert report.bad_shards == [1] and report.bad_samples == [4, 5, 6, 7]
    assert "whole shard" in report.problems[0]


def test_flipped_byte_in_an_unsharded_chunk(local_store: Path) -> None:
    _flip(local_store / "sample_id" / "c" / "2", 3)
    report = verify(str(local_store))
    assert report.bad_shards == [2] and report.bad_samples == [8, 9]
    assert "sample_id" in report.problems[0]


def test_incomplete_store_is_reported(tmp_path: Path) -> None:
    report = verify(build_local(tmp_path / "s.zarr", tiny_schema(), shards=[0, 2]))
    assert not report.ok and report.missing_shards == [1]
    assert report.problems == ["incomplete: shards [1] were never written"]


def test_nan_written_behind_the_api_is_found(local_store: Path) -> None:
    arr = zarr.open_array(local_store / "features" / "C4", mode="r+")
    block = arr[4:8]
    block[1, 0, 0, 0] = np.nan
    arr[4:8] = block
    report = verify(str(local_store))
    assert report.bad_samples == [5]
    assert "NaN/Inf in samples 5 (set06/V000/I00005)" in report.problems[0]


def test_zip_member_corruption_is_caught_by_manifest_and_checksum(
    local_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "s.zip"
    pack(local_store, out)
    with zipfile.ZipFile(out) as zf:
        info = zf.getinfo("/".join(SHARD))
    # A stored member's data follows its 30-byte local header, name and extra field.
    header = out.read_bytes()[info.header_offset : info.header_offset + 30]
    name_len, extra_len = struct.unpack_from("<HH", header, 26)
    _flip(out, info.header_offset + 30 + name_len + extra_len + 20)
    report = verify(str(out))
    assert not report.ok and 1 in report.bad_shards
    assert any("features/C3/c/1/0/0/0" in p and "manifest" in p for p in report.problems)


def test_an_object_swapped_in_from_another_shard_is_caught(local_store: Path) -> None:
    """Shard 0's features/C3 object copied over shard 1's: every chunk crc32c and the shard
    index still pass (the object is whole), only the shard record knows it is not shard 1's."""
    src = local_store.joinpath("features", "C3", "c", "0", "0", "0", "0")
    local_store.joinpath(*SHARD).write_bytes(src.read_bytes())
    report = verify(str(local_store))
    assert not report.ok and report.bad_shards == [1]
    (line,) = report.problems
    assert "shard 1: features/C3: object features/C3/c/1/0/0/0 is not the one written" in line


def test_a_shard_written_by_another_run_is_caught(tmp_path: Path) -> None:
    """Two stores of one schema by different teachers; shard 1 of the second copied whole
    (every object, record and `written` included) into the first: each object matches its
    record, but the record names the other run."""
    schema = tiny_schema()
    ours = Path(build_local(tmp_path / "ours.zarr", schema))
    theirs = Path(build_local(tmp_path / "theirs.zarr", schema,
                              attrs={"teacher": {"sha256": "ef" * 32}}))  # fmt: skip
    for obj in theirs.rglob("*"):
        parts = obj.relative_to(theirs).parts
        if obj.is_file() and "c" in parts and parts[parts.index("c") + 1] == "1":
            shutil.copyfile(obj, ours / obj.relative_to(theirs))
    report = verify(str(ours))
    assert not report.ok and report.bad_shards == [1]
    (line,) = report.problems
    assert "shard 1: written by another run" in line


def test_root_provenance_rewritten_by_another_run_is_caught(local_store: Path) -> None:
    doc_path = local_store / "zarr.json"
    doc = json.loads(doc_path.read_text())
    doc["attributes"]["teacher"]["sha256"] = "00" * 32
    doc_path.write_text(json.dumps(doc))
    report = verify(str(local_store))
    assert not report.ok
    assert any("does not match the store's run identity" in p for p in report.problems)


def test_edited_array_metadata_is_reported_by_verify_and_refused_by_reads(
    local_store: Path,
) -> None:
    meta = local_store / "features" / "C3" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"][1] -= 1  # one channel fewer than the schema
    meta.write_text(json.dumps(doc))
    report = verify(str(local_store))
    assert not report.ok
    assert any(p.startswith("features/C3: shape (") and "!= schema" in p for p in report.problems)
    with (
        open_store(local_store) as ts,
        pytest.raises(StoreError, match="features/C3 does not match"),
    ):
        ts.read([0], names=["features/C3"])


def test_damaged_written_flags_are_a_finding_not_a_crash(local_store: Path) -> None:
    # Issue 12: verify stopped with "cannot read written ...; run `md store verify`".
    flags = local_store / "written" / "c" / "1"  # one chunk of flags per shard
    _flip(flags, flags.stat().st_size // 2)
    report = verify(str(local_store))
    assert not report.ok and report.bad_shards == [1] and report.missing_shards == []
    (line,) = report.problems
    assert line.startswith("shard 1 (samples 4-7): written: cannot read its written flags")
    assert "--overwrite" in line and "md store verify" not in line


def test_symbolic_links_inside_a_store_are_refused_by_reads_and_verify(
    local_store: Path, tmp_path: Path
) -> None:
    # Issue 12: verify and reads followed a shard object linked to a file elsewhere (here a
    # copy of the store's own bytes, so every checksum passes). The store's own directory
    # may be a link; nothing inside it may.
    twin = tmp_path / "twin.zarr"
    shutil.copytree(local_store, twin)
    shard = local_store.joinpath(*SHARD)
    shard.unlink()
    shard.symlink_to(twin.joinpath(*SHARD))
    attention = local_store / "attention"
    shutil.rmtree(attention)
    attention.symlink_to(twin / "attention", target_is_directory=True)
    report = verify(str(local_store))
    assert not report.ok and 1 in report.bad_shards
    assert any("features/C3/c/1/0/0/0 is a symbolic link" in p for p in report.problems)
    assert any("attention is a symbolic link" in p for p in report.problems)
    with open_store(local_store) as ts, pytest.raises(StoreError, match="is a symbolic link"):
        ts.read([5], names=["features/C3"])
    alias = tmp_path / "alias.zarr"
    alias.symlink_to(twin, target_is_directory=True)
    assert verify(str(alias)).ok
