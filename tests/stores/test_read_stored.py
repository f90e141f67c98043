"""`TargetStore.read_stored` + decoding (numpy on the host, torch on the "device") give
exactly what zarr's own read path + `decode_target` give; damaged chunks still fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from contract import build_local, tiny_schema

from md.errors import StoreError
from md.stores import device as dev
from md.stores import open_store
from md.stores.encode import decode_target, stored_names
from md.stores.schema import is_attention_name, is_features_name
from md.stores.shard_object import ShardLayout, frame_content_size

IDX = [9, 0, 5, 5, 8, 3]  # unsorted, repeated, across shards, the partial last shard


def _zarr_read(url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """The reference: every array read by zarr's codec pipeline (no md shortcut)."""
    with monkeypatch.context() as m:
        m.setattr(ShardLayout, "of", classmethod(lambda cls, array: None))
        return open_store(url).read(IDX)


@pytest.mark.parametrize("codec", ["lossless", "compact", "compact-fine", "raw"])
def test_read_stored_decodes_to_exactly_the_zarr_read(tmp_path, monkeypatch, codec):
    url = build_local(tmp_path / "s.zarr", tiny_schema(codec, n=10, shard_size=4, full=True))
    ref = _zarr_read(url, monkeypatch)
    store = open_store(url)
    stored = store.read_stored(IDX)
    targets = [n for n in ref if is_features_name(n) or is_attention_name(n)]
    assert targets  # the test must see features and masks
    for name in targets:
        for s in stored_names(name, store.preset):  # as stored: no float32 on the host
            assert stored[s].dtype in (np.float16, np.uint8), s
        host = decode_target(name, stored, store.preset)
        assert host.dtype == ref[name].dtype == np.float32
        np.testing.assert_array_equal(host, ref[name], err_msg=name)  # bitwise (no NaN)
        on_dev = dev.decode_target(
            name, {k: torch.from_numpy(v) for k, v in stored.items() if v.dtype.kind in "biuf"},
            store.preset,
        )  # fmt: skip
        assert on_dev.dtype == torch.float32
        assert np.array_equal(on_dev.numpy().view(np.uint32), ref[name].view(np.uint32)), name
    for name in ref:  # extras, inputs, ids: what read returns
        if name not in targets:
            np.testing.assert_array_equal(store.read(IDX, [name])[name], ref[name], err_msg=name)


def test_read_stored_fills_the_buffers_it_is_given(tmp_path):
    url = build_local(tmp_path / "s.zarr", tiny_schema("lossless", n=10, shard_size=4))
    given: list[np.ndarray] = []

    def alloc(shape, dtype):
        given.append(np.full(shape, 7, dtype=dtype))
        return given[-1]

    store = open_store(url)
    name = next(n for n in store.schema.target_shapes() if is_features_name(n))
    got = store.read_stored(IDX, [name], alloc=alloc)
    assert len(given) == 1 and got[name] is given[0]
    np.testing.assert_array_equal(got[name], store.read_stored(IDX, [name])[name])


@pytest.mark.parametrize("codec", ["compact", "raw"])  # zstd frames, and bare bytes + crc32c
def test_a_flipped_byte_fails_read_stored_with_one_line(tmp_path, codec):
    url = Path(build_local(tmp_path / "s.zarr", tiny_schema(codec, n=10, shard_size=4)))
    shard = url / "attention" / "C3" / "c" / "1" / "0" / "0" / "0"
    good = shard.read_bytes()
    index = np.frombuffer(good[-(16 * 4 + 4) : -4], dtype="<u8").reshape(4, 2)
    offset, length = (int(v) for v in index[1])  # sample 5
    for at in (offset, offset + length // 2, offset + length - 1):  # header, body, crc
        damaged = bytearray(good)
        damaged[at] ^= 0x01
        shard.write_bytes(bytes(damaged))
        store = open_store(url)
        store.read_stored([4, 6, 7])  # the shard's other samples still read
        with pytest.raises(StoreError) as e:
            store.read_stored([5])
        msg = str(e.value)
        assert "\n" not in msg and "attention/C3" in msg and "crc32c" in msg
        assert f"md store verify {url}" in msg
        with pytest.raises(StoreError, match="crc32c"):
            store.read([5])


def test_frame_content_size_reads_every_header_form():
    from numcodecs import Zstd

    for n in (0, 1, 200, 255, 256, 300, 65535 + 256, 70000, 2**20):
        frame = Zstd(level=1).encode(np.zeros(n, np.uint8))
        assert frame_content_size(frame) == n
    assert frame_content_size(b"not a zstd frame") is None


def test_a_chunk_of_another_size_is_refused(tmp_path):
    from numcodecs import Zstd

    from md.stores.shard_object import _crc32c

    layout = ShardLayout(4, (2, 3), np.dtype(np.float16), 1, False)
    out = np.empty((2, 3), np.float16)
    small = Zstd(level=1).encode(np.zeros(5, np.float16))
    with pytest.raises(ValueError, match="chunk of 10 bytes, expected 12"):
        layout.decode_chunk_into(small + _crc32c(small), out)
    good = Zstd(level=1).encode(np.arange(6, dtype=np.float16))
    layout.decode_chunk_into(good + _crc32c(good), out)
    np.testing.assert_array_equal(out.ravel(), np.arange(6, dtype=np.float16))


def test_a_raw_chunk_of_another_size_is_refused():
    from md.stores.shard_object import _crc32c

    layout = ShardLayout(4, (2, 3), np.dtype(np.float16), 0, False, compressed=False)
    out = np.empty((2, 3), np.float16)
    short = np.zeros(5, np.float16).tobytes()
    with pytest.raises(ValueError, match="chunk of 10 bytes, expected 12"):
        layout.decode_chunk_into(short + _crc32c(short), out)
    good = np.arange(6, dtype="<f2").tobytes()
    layout.decode_chunk_into(good + _crc32c(good), out)
    np.testing.assert_array_equal(out.ravel(), np.arange(6, dtype=np.float16))


def test_raw_stores_the_values_of_lossless_uncompressed(tmp_path):
    """`raw` holds lossless's float16 values (so training from either is the same), each
    chunk its sample's bytes plus a 4-byte crc32c."""
    schema = tiny_schema("lossless", n=10, shard_size=4, full=True)
    raw_schema = tiny_schema("raw", n=10, shard_size=4, full=True)
    a = open_store(build_local(tmp_path / "l.zarr", schema)).read_stored(range(10))
    b = open_store(build_local(tmp_path / "r.zarr", raw_schema)).read_stored(range(10))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    store = open_store(str(tmp_path / "r.zarr"))
    name = next(n for n in raw_schema.target_shapes() if is_features_name(n))
    shard = Path(store.url) / name / "c" / "0" / "0" / "0" / "0"
    per_sample = b[name][0].nbytes + 4
    assert shard.stat().st_size == 4 * per_sample + 16 * 4 + 4  # 4 chunks + the shard index
