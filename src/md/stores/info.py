"""`info`: what a store holds, how complete it is, what it costs per sample, where it came from.

JSON keys: ``url``, ``backend``, ``samples``, ``written`` (samples), ``complete``,
``missing_shards``, ``shard_size``, ``num_shards``, ``codec``, ``arrays`` (per stored array:
shape, dtype, chunks, shards, codecs, stored_bytes), ``bytes_per_sample`` (per stored array
and ``total``, over written samples), ``ratio_vs_float32`` (per target array and ``total``:
float32 bytes / stored bytes), ``schema`` and ``provenance`` (every other group attribute).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import zarr

from md.stores.backends import parse_location
from md.stores.schema import StoreSchema, scale_array_name
from md.stores.target_store import TargetStore, open_store

_STORE_KEYS = ("schema", "codec")  # shown under their own keys, not under provenance


def info(url: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe the store at `url` (directory, packed zip or URL such as s3://...). Reads
    metadata and sizes only (on S3: one listing per array for the sizes)."""
    loc = parse_location(url)
    with open_store(url, mode="r") as ts:
        ts.raw_arrays(ts.raw_names(), check=False)  # open every array at once; as they lie
        mask = ts.written_mask()
        written = int(mask.sum())
        arrays = {name: _array_info(ts, name) for name in ts.raw_names()}
        attrs = ts.attrs
        schema = ts.schema
    per_sample = {
        name: a["stored_bytes"] / written if written else None for name, a in arrays.items()
    }
    total = sum(a["stored_bytes"] for a in arrays.values())
    per_sample["total"] = total / written if written else None
    missing = [k for k in range(schema.num_shards) if not mask[schema.shard_range(k)].all()]
    return {
        "url": loc.url,
        "backend": loc.kind,
        "samples": schema.n,
        "written": written,
        "complete": not missing,
        "missing_shards": missing,
        "shard_size": schema.shard_size,
        "num_shards": schema.num_shards,
        "codec": attrs.get("codec"),
        "arrays": arrays,
        "bytes_per_sample": per_sample,
        "ratio_vs_float32": _ratios(schema, arrays, written),
        "schema": schema.to_json(),
        "provenance": {k: v for k, v in attrs.items() if k not in _STORE_KEYS},
    }


def _array_info(ts: TargetStore, name: str) -> dict[str, Any]:
    arr = ts.raw_array(name, check=False)
    return {
        "shape": list(arr.shape),
        "dtype": str(arr.dtype),
        "chunks": list(arr.chunks),
        "shards": list(arr.shards) if arr.shards else None,
        "codecs": _codec_names(arr),
        "stored_bytes": ts.stored_bytes(name),
    }


def _codec_names(arr: zarr.Array) -> list[str]:
    """E.g. ['sharding_indexed', 'bytes', 'zstd(level=1)', 'crc32c']."""
    names = ["sharding_indexed"] if arr.shards else []
    for codec in (arr.serializer, *arr.compressors):
        d = codec.to_dict()
        cfg = d.get("configuration")
        level = cfg.get("level") if isinstance(cfg, dict) else None
        name = d.get("name", type(codec).__name__)
        names.append(f"{name}(level={level})" if level is not None else name)
    return names


def _ratios(
    schema: StoreSchema, arrays: dict[str, dict[str, Any]], written: int
) -> dict[str, float | None]:
    """float32 bytes of each target array (features incl. their scales) / its stored bytes."""
    if not written:
        return {}
    out: dict[str, float | None] = {}
    f32_total = stored_total = 0
    for name, shape in schema.target_shapes().items():
        if not (name.startswith("features") or name.startswith("attention")):
            continue
        stored = arrays[name]["stored_bytes"]
        scale = scale_array_name(name)
        if name.startswith("features") and scale in arrays:
            stored += arrays[scale]["stored_bytes"]
        f32 = written * int(np.prod(shape)) * 4
        out[name] = f32 / stored if stored else None
        f32_total, stored_total = f32_total + f32, stored_total + stored
    out["total"] = f32_total / stored_total if stored_total else None
    return out
