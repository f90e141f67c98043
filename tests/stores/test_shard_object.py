"""One-pass shard objects (md.stores.shard_object) against zarr's own sharding codec.

The independent truth is zarr: the same values written through ``Array.__setitem__`` must
give the same object bytes, and the objects we write must read back through zarr.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr
from contract import build_local, tiny_schema
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore

from md.errors import StoreError
from md.stores import open_store
from md.stores.schema import StoreSchema, detection_extras, input_extras
from md.stores.shard_object import ShardLayout

SHARD = 4


def _array(
    root: zarr.Group, name: str, dtype: str, sample: tuple[int, ...], n: int, **kw: object
) -> zarr.Array:
    options: dict[str, object] = {
        "chunks": (1, *sample),
        "shards": (SHARD, *sample),
        "compressors": (ZstdCodec(level=3), Crc32cCodec()),
        "fill_value": 0,
        "config": {"write_empty_chunks": True},
    }
    options.update(kw)
    return root.create_array(name, shape=(n, *sample), dtype=dtype, **options)  # type: ignore[arg-type]


def _object(arr: zarr.Array, k: int) -> bytes:
    key = arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))
    path = arr.store_path.store.root / arr.store_path.path / key  # type: ignore[attr-defined]
    return bytes(path.read_bytes())


@pytest.mark.parametrize("compressed", [True, False])  # zstd + crc32c, or crc32c only (raw)
@pytest.mark.parametrize(
    ("dtype", "sample"),
    [("float16", (3, 5, 7)), ("uint8", (1, 6, 4)), ("float32", (9, 6)), ("int32", (2, 3))],
)
def test_shard_objects_match_zarr_bytes_full_and_partial_shards(
    tmp_path, dtype, sample, compressed
):
    rng = np.random.default_rng(0)
    n = 2 * SHARD + 2  # two full shards and a last one of 2 samples
    values = (rng.standard_normal((n, *sample)) * 50).astype(dtype)
    values[1] = 0  # an all-zero (fill value) chunk is still written as a chunk
    root = zarr.open_group(LocalStore(tmp_path / "a.zarr"), mode="w")
    kw = {} if compressed else {"compressors": (Crc32cCodec(),)}
    by_zarr = _array(root, "z", dtype, sample, n, **kw)
    ours = _array(root, "o", dtype, sample, n, **kw)
    by_zarr[:] = values
    layout = ShardLayout.of(ours)
    assert layout is not None and layout.shard_len == SHARD
    assert layout.compressed is compressed
    for k in range(3):
        part = values[k * SHARD : (k + 1) * SHARD]
        obj = layout.encode(part)
        path = tmp_path / "a.zarr" / "o" / "c" / str(k) / ("/".join(["0"] * len(sample)))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(obj)
        assert obj == _object(by_zarr, k), f"shard {k} differs from zarr's"
        buf = np.empty(sample, dtype)  # the one-pass read of each chunk gives the values back
        index = layout.decode_index(obj[-layout.index_nbytes :])
        for j, (offset, length) in enumerate(index[: len(part)].tolist()):
            layout.decode_chunk_into(obj[offset : offset + length], buf)
            np.testing.assert_array_equal(buf, part[j])
            np.testing.assert_array_equal(layout.decode_chunk(obj[offset : offset + length]), buf)
    reopened = zarr.open_array(LocalStore(tmp_path / "a.zarr"), path="o", mode="r")
    np.testing.assert_array_equal(reopened[:], values)


def test_layouts_md_did_not_create_are_left_to_zarr(tmp_path):
    root = zarr.open_group(LocalStore(tmp_path / "b.zarr"), mode="w")
    unsharded = root.create_array("u", shape=(8, 3), chunks=(4, 3), dtype="uint8")
    blosc = _array(root, "b", "uint8", (3,), 8, compressors=(BloscCodec(),))
    no_crc = _array(root, "c", "uint8", (3,), 8, compressors=(ZstdCodec(level=1),))
    two_per_chunk = _array(root, "t", "uint8", (3,), 8, chunks=(2, 3))
    for arr in (unsharded, blosc, no_crc, two_per_chunk):
        assert ShardLayout.of(arr) is None, arr.name


def test_encode_refuses_values_that_do_not_fit_a_shard(tmp_path):
    root = zarr.open_group(LocalStore(tmp_path / "c.zarr"), mode="w")
    layout = ShardLayout.of(_array(root, "a", "uint8", (3,), 8))
    assert layout is not None
    with pytest.raises(ValueError, match="does not fit"):
        layout.encode(np.zeros((SHARD + 1, 3), np.uint8))
    with pytest.raises(ValueError, match="does not fit"):
        layout.encode(np.zeros((2, 4), np.uint8))


@pytest.mark.parametrize(
    ("codec", "inputs_compressed"),
    [("lossless", True), ("compact", True), ("raw", True), ("compact", False)],
)
def test_store_written_in_one_pass_equals_store_written_by_zarr(
    tmp_path, monkeypatch, codec, inputs_compressed
):
    """Every object of a whole md store (flips, bundled inputs, a partial last shard) is the
    same whether `write_shard` encodes shard objects itself or leaves them all to zarr."""
    schema = tiny_schema(codec, n=10, shard_size=4, full=True)
    if not inputs_compressed:
        extras = input_extras((16, 20), (4, 5), compressed=False) + detection_extras(3)
        schema = replace(schema, extras=extras)
        assert StoreSchema.from_json(schema.to_json()) == schema
    encoded: list[tuple[int, ...]] = []
    real_encode = ShardLayout.encode
    with monkeypatch.context() as m:  # count the shard objects the fast path encodes
        m.setattr(
            ShardLayout, "encode", lambda self, v: encoded.append(v.shape) or real_encode(self, v)
        )
        fast = Path(build_local(tmp_path / "fast.zarr", schema))
    sharded_arrays = sum(s.sharded for s in schema.stored_arrays())
    assert len(encoded) == 3 * sharded_arrays > 0  # every sharded array of all 3 shards
    with monkeypatch.context() as m:
        m.setattr(ShardLayout, "of", classmethod(lambda cls, array: None))
        slow = Path(build_local(tmp_path / "slow.zarr", schema))

    def objects(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "zarr.json"
        }

    ours, zarrs = objects(fast), objects(slow)
    assert sorted(ours) == sorted(zarrs)
    sharded = [k for k in ours if k.startswith(("features", "attention", "inputs", "boxes"))]
    assert any(k.endswith("c/2/0/0/0") for k in sharded)  # the partial last shard is covered
    assert [k for k in ours if ours[k] != zarrs[k]] == []


@pytest.mark.parametrize("codec", ["lossless", "compact", "raw"])
def test_one_pass_reads_equal_zarr_reads(tmp_path, monkeypatch, codec):
    """`read` through the one-pass path gives exactly what zarr's own read path gives:
    unsorted and repeated indices, across shards, the partial last shard included."""
    url = build_local(tmp_path / "s.zarr", tiny_schema(codec, n=10, shard_size=4, full=True))
    idx = [9, 0, 5, 5, 8, 3]
    fast = open_store(url).read(idx)
    with monkeypatch.context() as m:
        m.setattr(ShardLayout, "of", classmethod(lambda cls, array: None))
        slow = open_store(url).read(idx)
    assert fast.keys() == slow.keys()
    for name in slow:
        np.testing.assert_array_equal(fast[name], slow[name], err_msg=name)


def test_one_pass_read_refuses_damaged_chunks_index_and_lost_objects(tmp_path):
    url = Path(build_local(tmp_path / "s.zarr", tiny_schema("lossless", n=10, shard_size=4)))
    shard = url / "features" / "C3" / "c" / "1" / "0" / "0" / "0"
    good = shard.read_bytes()
    index = np.frombuffer(good[-(16 * 4 + 4) : -4], dtype="<u8").reshape(4, 2)
    offset, length = (int(v) for v in index[2])  # sample 6
    damaged = bytearray(good)
    damaged[offset + length // 2] ^= 0xFF
    shard.write_bytes(bytes(damaged))
    store = open_store(url)
    store.read([4, 5, 7])  # the other samples of the shard still read
    with pytest.raises(
        StoreError, match=r"cannot read features/C3 \(chunk: stored and computed crc32c"
    ):
        store.read([6])
    damaged = bytearray(good)
    damaged[-10] ^= 0xFF  # the shard index
    shard.write_bytes(bytes(damaged))
    with pytest.raises(StoreError, match=r"features/C3 \(shard index: stored and computed crc32c"):
        open_store(url).read([5])
    shard.unlink()
    with pytest.raises(StoreError, match="missing although its shard is marked written"):
        open_store(url).read([5])


@pytest.mark.parametrize("codec", ["lossless", "compact"])
def test_write_shard_returns_the_stored_bytes_of_every_array(tmp_path, codec):
    """The bytes `write_shard` reports (encoded sizes + size lookups for zarr's objects) equal
    a size lookup of every array's object, full and partial shards alike."""
    from contract import groups, sample_ids, shard_arrays

    from md.stores import create_store
    from md.teacher_cache.writer import shard_stored_bytes

    schema = tiny_schema(codec, n=10, shard_size=4, full=True)
    with create_store(tmp_path / "s.zarr", schema, {"note": "t"}) as store:
        for k in range(schema.num_shards):
            reported = store.write_shard(
                k, shard_arrays(schema, k), sample_ids(schema, k), groups(schema, k)
            )
            assert reported == shard_stored_bytes(store, k) > 0
