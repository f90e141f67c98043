"""Concurrent I/O on a store's arrays, run on zarr's event loop (`zarr.core.sync.sync`).

A shard write or a batch read touches every array at once: these coroutines gather those
requests, so a remote backend overlaps their round trips (bounded by its connection pool)
instead of paying them one array after another. Failures either settle every request first
(`gather_all`) or come back in place of their result, for the caller to name the array.

Arrays md lays out itself (`md.stores.shard_object.ShardLayout`) skip zarr's codec pipeline:
a shard is written as one ready object, and a read fetches each sample's chunk bytes (its
shard's index once, then one byte range per sample), decoded by the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import StorePath

from md.stores.aio import gather_all
from md.stores.arrays import shard_object_key
from md.stores.backends import CheckedStore, MissingChunkError
from md.stores.shard_object import ShardLayout


async def open_arrays(store: CheckedStore, names: Sequence[str]) -> list[Any]:
    """The arrays `names` of `store`, opened concurrently; a failure is returned in place."""
    opens = [zarr.AsyncArray.open(StorePath(store, name), zarr_format=3) for name in names]
    return await asyncio.gather(*opens, return_exceptions=True)


async def object_sizes(arrays: Sequence[zarr.Array], k: int) -> list[int]:
    """Stored bytes of shard k's object of each array, looked up concurrently."""
    sizes = [arr.store_path.store.getsize(shard_object_key(arr, k)) for arr in arrays]
    return [int(n) for n in await gather_all(*sizes)]


async def object_bytes(arrays: Sequence[zarr.Array], k: int) -> list[bytes]:
    """Shard k's stored object of each array, fetched concurrently."""
    prototype = default_buffer_prototype()
    keys = [shard_object_key(arr, k) for arr in arrays]
    bufs = await gather_all(
        *(arr.store_path.store.get(key, prototype) for arr, key in zip(arrays, keys, strict=True))
    )
    out = []
    for key, buf in zip(keys, bufs, strict=True):
        if buf is None:
            raise MissingChunkError(key)
        out.append(buf.to_bytes())
    return out


async def write_arrays(
    k: int,
    sel: slice,
    whole: Sequence[tuple[zarr.Array, bytes]],
    through_zarr: Sequence[tuple[zarr.Array, np.ndarray]],
) -> list[Any]:
    """Store shard k of every array, concurrently: ready shard objects with one ``set``,
    the rest by zarr at `sel`; failures are returned in place."""
    buffer = default_buffer_prototype().buffer
    writes = [
        arr.store_path.store.set(shard_object_key(arr, k), buffer.from_bytes(obj))
        for arr, obj in whole
    ]
    writes += [arr.async_array.setitem(sel, value) for arr, value in through_zarr]
    return await asyncio.gather(*writes, return_exceptions=True)


def raise_first(results: Sequence[Any]) -> None:
    """Raise the first failure among `results` (as `write_arrays` returns them), if any."""
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def read_arrays(
    arrays: Sequence[zarr.Array], layouts: Sequence[ShardLayout | None], idx: np.ndarray
) -> list[Any]:
    """Samples `idx` of every array, concurrently: arrays with a `ShardLayout` as each
    sample's raw chunk bytes (`read_chunks`), the others by zarr's orthogonal read; an
    array's failure is returned in its place (no read is left running when the caller
    raises)."""
    reads = [
        a.async_array.get_orthogonal_selection((idx,))
        if layout is None
        else read_chunks(a, layout, idx)
        for a, layout in zip(arrays, layouts, strict=True)
    ]
    return await asyncio.gather(*reads, return_exceptions=True)


async def read_chunks(arr: zarr.Array, layout: ShardLayout, idx: np.ndarray) -> list[bytes]:
    """The stored bytes of sample i's chunk for each i in `idx`: each shard's index (one
    suffix read, cached by read-only handles), then every chunk's byte range, concurrently."""
    store = arr.store_path.store
    prototype = default_buffer_prototype()
    shards = sorted({int(i) // layout.shard_len for i in idx})
    keys = {k: shard_object_key(arr, k) for k in shards}
    suffix = SuffixByteRequest(layout.index_nbytes)
    index_bufs = await gather_all(*(store.get(keys[k], prototype, suffix) for k in shards))
    index = {}
    for k, buf in zip(shards, index_bufs, strict=True):
        if buf is None:
            raise MissingChunkError(keys[k])
        index[k] = layout.decode_index(buf.to_bytes())
    ranges = []  # every range is checked before any read starts
    for i in idx:
        k, j = divmod(int(i), layout.shard_len)
        offset, length = (int(v) for v in index[k][j])
        if offset == 2**64 - 1:
            raise ValueError(f"sample {int(i)} has no chunk in {keys[k]}")
        ranges.append((keys[k], RangeByteRequest(offset, offset + length)))
    chunks = await gather_all(
        *(store.get(key, prototype, byte_range) for key, byte_range in ranges)
    )
    out = []
    for i, buf in zip(idx, chunks, strict=True):
        if buf is None:
            raise MissingChunkError(keys[int(i) // layout.shard_len])
        out.append(buf.to_bytes())
    return out


def read_chunks_local(
    store: CheckedStore, arr: zarr.Array, layout: ShardLayout, idx: np.ndarray
) -> list[bytes]:
    """`read_chunks` for a read-only local store, in the caller's thread (`read_local`):
    per shard its cached index, then its samples' byte ranges with ``pread``."""
    out: dict[int, bytes] = {}
    by_shard: dict[int, list[int]] = {}
    for i in idx.tolist():
        by_shard.setdefault(int(i) // layout.shard_len, []).append(int(i))
    for k, rows in by_shard.items():
        key = shard_object_key(arr, k)
        index_bytes, _ = store.read_local(key, [], layout.index_nbytes)
        index = layout.decode_index(index_bytes)
        ranges = []
        for i in rows:
            offset, length = (int(v) for v in index[i % layout.shard_len])
            if offset == 2**64 - 1:
                raise ValueError(f"sample {i} has no chunk in {key}")
            ranges.append((offset, offset + length))
        _, chunks = store.read_local(key, ranges, layout.index_nbytes)
        out.update(zip(rows, chunks, strict=True))
    return [out[int(i)] for i in idx.tolist()]
