"""How a schema's arrays lie in Zarr: creating them, checking them, naming their objects.

Every stored array is created by `create_array` from its `ArraySpec` (the one place md
chooses chunks, shards, compressors and fill values), checked against its spec when opened
(`array_mismatches`), and cut at multiples of ``shard_size`` along the sample axis, so shard
k of an array is one storage object (`shard_object_key`).
"""

from __future__ import annotations

import zarr
from zarr.codecs import Crc32cCodec

from md.stores.codecs import CodecPreset
from md.stores.schema import ArraySpec, StoreSchema


def create_array(
    group: zarr.Group, spec: ArraySpec, schema: StoreSchema, preset: CodecPreset
) -> zarr.Array:
    return group.create_array(
        spec.name,
        shape=(schema.n, *spec.sample_shape),
        dtype=str if spec.dtype == "str" else spec.dtype,
        chunks=spec.chunks(schema.shard_size),
        shards=spec.shards(schema.shard_size),
        compressors=preset.compressors() if spec.compressed else (Crc32cCodec(),),
        fill_value="" if spec.dtype == "str" else 0,
        dimension_names=spec.dimension_names,
        # Every written chunk gets an object, even all-zero ones, so "object absent" always
        # means "never written or lost" and reads can raise instead of returning zeros.
        config={"write_empty_chunks": True},
    )


def array_mismatches(spec: ArraySpec, arr: zarr.Array, schema: StoreSchema) -> list[str]:
    """How stored array `arr` departs from `spec` (shape, chunks, shards, dtype); [] if not."""
    want = {
        "shape": (schema.n, *spec.sample_shape),
        "chunks": spec.chunks(schema.shard_size),
        "shards": spec.shards(schema.shard_size),
    }
    got = {"shape": arr.shape, "chunks": arr.chunks, "shards": arr.shards}
    bad = [
        f"{key} {tuple(got[key] or ())} != schema {tuple(want[key] or ())}"
        for key in want
        if tuple(got[key] or ()) != tuple(want[key] or ())
    ]
    want_dtype = "StringDType" if spec.dtype == "str" else spec.dtype
    if want_dtype not in (str(arr.dtype), type(arr.dtype).__name__):
        bad.append(f"dtype {arr.dtype} != schema {spec.dtype}")
    return bad


def shard_object_key(arr: zarr.Array, k: int) -> str:
    """Store key of shard k's object of `arr`: the shard of per-sample chunks, or the one
    chunk of the whole shard (every md array is chunked or sharded by store shard)."""
    return f"{arr.store_path.path}/{arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))}"
