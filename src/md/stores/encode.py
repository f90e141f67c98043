"""What a store holds, as values: target arrays <-> stored arrays, shard records, attributes.

- `encode_shard` checks a shard's target arrays against the schema and encodes them into
  stored arrays (features through the codec preset, masks as uint8, extras cast exactly);
  `stored_names` / `decode_target` are the read side.
- `shard_record` is what a shard carries about its run: the run identity (`run_identity`,
  the sha256 of the store's creation provenance) and the crc32c of each stored object.
- `checked_attrs` keeps group attributes JSON (no pickle, no NaN) and off store-owned keys.
- `measure_stored_bytes`: the bytes encoded features take in the real store layout.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import google_crc32c  # zarr's own crc32c implementation (a zarr dependency)
import numpy as np
import zarr
from zarr.storage import MemoryStore

from md.errors import StoreError
from md.stores.arrays import create_array
from md.stores.backends import stored_bytes
from md.stores.codecs import (
    CodecPreset,
    decode_attention,
    decode_features,
    encode_attention,
    encode_features,
)
from md.stores.schema import (
    META_NAMES,
    LevelSpec,
    StoreSchema,
    is_attention_name,
    is_features_name,
    scale_array_name,
)

# Attributes the store owns; `attrs` passed by callers may not override them.
RESERVED_ATTRS = ("schema_version", "schema", "codec", "created", "tool_version", "identity")


# ----------------------------------------------------------------------------- shards


def encode_shard(
    schema: StoreSchema,
    preset: CodecPreset,
    arrays: Mapping[str, np.ndarray],
    size: int,
    where: str,
) -> dict[str, np.ndarray]:
    """Validate a shard's target arrays and encode them into stored arrays."""
    expected = schema.target_shapes()
    missing, unknown = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or unknown:
        raise StoreError(
            f"{where}: arrays missing {missing}, unexpected {unknown}; expected {sorted(expected)}"
        )
    extras = {e.name: e.dtype for e in schema.extras}
    out: dict[str, np.ndarray] = {}
    for name, sample_shape in expected.items():
        value = np.asarray(arrays[name])
        if value.shape != (size, *sample_shape):
            raise StoreError(
                f"{where}: {name} has shape {value.shape}, expected {(size, *sample_shape)}"
            )
        try:
            out.update(encode_target(name, value, preset, extras.get(name)))
        except ValueError as e:
            raise StoreError(f"{where}: {name}: {e}") from None
    return out


def encode_target(
    name: str, value: np.ndarray, preset: CodecPreset, extra_dtype: str | None
) -> dict[str, np.ndarray]:
    if is_features_name(name):
        stored, scale = encode_features(value, preset)
        side = {} if scale is None else {scale_array_name(name): scale}
        return {name: stored, **side}
    if is_attention_name(name):
        return {name: encode_attention(value)}
    assert extra_dtype is not None
    return {name: cast_extra(value, np.dtype(extra_dtype))}


def cast_extra(value: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """Cast to the schema dtype; integers/bools must survive the cast exactly."""
    out = value.astype(dtype)
    if not (value.dtype.kind == "f" and dtype.kind == "f") and not np.array_equal(out, value):
        raise ValueError(f"values of dtype {value.dtype} do not fit {dtype}")
    return out


def checked_strings(
    values: Sequence[str], size: int, what: str, where: str, *, allow_empty: bool
) -> np.ndarray:
    items = list(values)
    if len(items) != size or not all(isinstance(s, str) for s in items):
        raise StoreError(f"{where}: {what} must be {size} strings, got {len(items)}")
    if not allow_empty and not all(items):
        raise StoreError(f"{where}: {what} contains empty strings")
    return np.array(items, dtype=np.dtypes.StringDType())


def stored_names(name: str, preset: CodecPreset) -> list[str]:
    """Stored arrays behind target name `name` (quantized features have a scale array)."""
    if is_features_name(name) and preset.quantized:
        return [name, scale_array_name(name)]
    return [name]


def decode_target(name: str, stored: Mapping[str, np.ndarray], preset: CodecPreset) -> np.ndarray:
    """Target `name` from the stored arrays behind it (`stored_names`), as `read` returns it."""
    values = stored[name]
    if is_features_name(name):
        scale = stored[scale_array_name(name)] if preset.quantized else None
        return decode_features(values, scale, preset)
    if is_attention_name(name):
        return decode_attention(values)
    return np.array(values.tolist(), dtype=np.str_) if name in META_NAMES else values


# ----------------------------------------------------------------------------- records


def run_identity(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The identity of the runs that may write a store: sha256 of its creation provenance
    (canonical JSON) and the keys it covers. Resuming runs must match that provenance key for
    key (`open_or_create_store`), so they share it; another teacher or dataset does not."""
    canonical = json.dumps(dict(attrs), sort_keys=True, separators=(",", ":"))
    return {"sha256": hashlib.sha256(canonical.encode()).hexdigest(), "keys": sorted(attrs)}


def object_crc(obj: bytes) -> str:
    """The crc32c of a whole stored object, as a shard record holds it (8 hex digits)."""
    return f"{google_crc32c.value(obj):08x}"


def shard_record(identity: str, k: int, objects: Mapping[str, bytes]) -> str:
    """Shard k's record (JSON): the run identity and the crc32c of each stored object."""
    crcs = {name: object_crc(obj) for name, obj in sorted(objects.items())}
    return json.dumps({"identity": identity, "shard": k, "objects": crcs}, sort_keys=True)


def checked_attrs(attrs: Mapping[str, Any], url: str) -> dict[str, Any]:
    reserved = sorted(set(attrs) & set(RESERVED_ATTRS))
    if reserved:
        raise StoreError(f"{url}: attributes {reserved} are set by the store itself; rename them")
    try:
        return dict(json.loads(json.dumps(dict(attrs), allow_nan=False)))
    except (TypeError, ValueError) as e:
        raise StoreError(
            f"{url}: store attributes must be plain JSON (no pickle, NaN): {e}"
        ) from None


# ----------------------------------------------------------------------------- codec bytes


def measure_stored_bytes(
    stored: np.ndarray, scale: np.ndarray | None, preset: CodecPreset, shard_size: int
) -> int:
    """Bytes that encoded features [n, C, H, W] (+ side array) take in the store layout."""
    n, c, hh, ww = stored.shape
    schema = StoreSchema(n, shard_size, (LevelSpec("L", c, hh, ww, 1),), codec=preset.name)
    store = MemoryStore()
    group = zarr.open_group(store, mode="w", zarr_format=3)
    total = 0
    for spec in schema.stored_arrays():
        value = {"features": stored, "scale": scale}.get(spec.role)
        if value is None:
            continue
        create_array(group, spec, schema, preset)[:] = value
        total += stored_bytes(store, f"{spec.name}/c/")
    return total
