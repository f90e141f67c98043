"""How a schema's arrays lie in Zarr: creating them, checking them, naming their objects.

Every stored array is created by `create_array` from its `ArraySpec` (the one place md
chooses chunks, shards, compressors and fill values), checked against its spec when opened
(`array_mismatches`), and cut at multiples of ``shard_size`` along the sample axis, so shard
k of an array is one storage object (`shard_object_key`).
"""

from __future__ import annotations

from typing import Any

import zarr
from zarr.codecs import Crc32cCodec

from md.stores.codecs import SCALE_OFFSET, SCALE_PER_OCTAVE, CodecPreset
from md.stores.schema import (
    BOXES,
    FLIP,
    GROUP,
    INPUT_THERMAL,
    INPUT_VISIBLE,
    LABELS,
    NUM_BOXES,
    SAMPLE_ID,
    SHARD_RECORD,
    WRITTEN,
    ArraySpec,
    StoreSchema,
)

# How a quantized level decodes, spelled once for the attributes (md.stores.codecs does it).
COMPACT_FORMULA = (
    "t = (q - steps) / steps; a = 2 ** ((k - scale_offset) / scale_per_octave) if k > 0 "
    "else 0; value = sign(t) * t**2 * a, where q is this array's uint8 code and k the uint8 "
    "code of the same sample and channel in scale_array"
)
SCALE_FORMULA = "a = 2 ** ((k - scale_offset) / scale_per_octave) if k > 0 else 0"
_META_NAMES = {
    SAMPLE_ID: "sample identifier (dataset-relative frame id)",
    GROUP: "group label of the sample (e.g. day / night)",
    SHARD_RECORD: "JSON per sample of its shard: the writing run's identity, crc32c per object",
    WRITTEN: "true once the sample's shard is completely written",
}
_EXTRA_NAMES = {
    INPUT_VISIBLE: "student visible input, uint8 RGB pixels",
    INPUT_THERMAL: "student low-resolution thermal input, uint8 pixels",
    LABELS: "per-pixel class labels",
    BOXES: "padded box rows (the first num_boxes rows of each sample are valid)",
    NUM_BOXES: "number of valid rows in boxes",
}


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
        attributes=array_attributes(spec, schema, preset),
        # Every written chunk gets an object, even all-zero ones, so "object absent" always
        # means "never written or lost" and reads can raise instead of returning zeros.
        config={"write_empty_chunks": True},
    )


def array_attributes(spec: ArraySpec, schema: StoreSchema, preset: CodecPreset) -> dict[str, Any]:
    """CF-style attributes of stored array `spec`: what it is (``long_name``, ``units``,
    ``level``, ``stride``) and how its values decode without md (``scale_factor`` /
    ``add_offset`` for attention codes, the compact codec's formula and parameters)."""
    top, _, leaf = spec.name.partition("/")
    view = "horizontally flipped" if top.endswith(FLIP) else "plain"
    if spec.role in ("features", "scale", "attention"):
        lv = schema.level(leaf)
        where = {"level": lv.name, "stride": lv.stride, "view": view}
    if spec.role == "features":
        out: dict[str, Any] = {
            "long_name": f"teacher features at level {lv.name} (stride {lv.stride}, {view} view)",
            "units": "1",
            **where,
            "md_codec": preset.name,
        }
        if preset.quantized:
            out.update(
                md_decode=COMPACT_FORMULA,
                steps=preset.steps,
                scale_offset=SCALE_OFFSET,
                scale_per_octave=SCALE_PER_OCTAVE,
                scale_array=spec.name.replace("features", "feature_scale", 1),
            )
        else:
            out["md_decode"] = "value = float32(stored float16)"
        return out
    if spec.role == "scale":
        return {
            "long_name": f"per-sample, per-channel scale codes of level {lv.name} features",
            "units": "1",
            **where,
            "md_decode": SCALE_FORMULA,
            "scale_offset": SCALE_OFFSET,
            "scale_per_octave": SCALE_PER_OCTAVE,
        }
    if spec.role == "attention":
        return {
            "long_name": f"teacher attention mask at level {lv.name} ({view} view), in [0, 1]",
            "units": "1",
            **where,
            "scale_factor": 1.0 / 255.0,
            "add_offset": 0.0,
            "md_decode": "value = float32(code) / 255",
        }
    if spec.role == "extra":
        return {"long_name": _EXTRA_NAMES.get(spec.name, spec.name)}
    return {"long_name": _META_NAMES.get(spec.name, spec.name)}


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
