"""Teacher-target stores: create, write whole shards, read samples by index.

Invariants (the contract tests pin them for every backend):

- **One writer per shard.** `write_shard` writes every array of shard k in one go and sets
  ``written`` for the shard only after all of them are stored; a store may be written by many
  processes at once as long as no two write the same shard. Per-sample writes into a shared
  shard would lose data silently, so there is no per-sample write.
- **Never zeros.** `read` raises `IncompleteStoreError` (listing the shards) for samples whose
  shard is not ``written``; a chunk object missing from a written shard raises `StoreError`.
- **Per-process handles.** A `TargetStore` opens its Zarr handle lazily, keyed on the pid;
  after a fork (DataLoader / Dask worker) the child opens its own. Pickling keeps only the URL
  and mode. Open arrays and shard indexes are cached per handle, so a batch of samples from a
  few shards costs one index read per shard per process, then one byte range per sample.
- **JSON only.** Group attributes are JSON (no pickle): the schema, codec, provenance.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from zarr.storage import MemoryStore

from md import __version__
from md.errors import IncompleteStoreError, StoreError
from md.stores.backends import (
    CheckedStore,
    Location,
    MissingChunkError,
    key_exists,
    open_backend,
    parse_location,
    stored_bytes,
)
from md.stores.codecs import (
    CodecPreset,
    decode_attention,
    decode_features,
    encode_attention,
    encode_features,
    get_preset,
)
from md.stores.schema import SCHEMA_VERSION, ArraySpec, LevelSpec, StoreSchema, scale_array_name

Mode = Literal["r", "r+"]
# Attributes the store owns; `attrs` passed by callers may not override them.
RESERVED_ATTRS = ("schema_version", "schema", "codec", "created", "tool_version")
META_NAMES = ("sample_id", "group")


# ----------------------------------------------------------------------------- creation


def create_store(
    url: str | os.PathLike[str],
    schema: StoreSchema,
    attrs: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> TargetStore:
    """Create an empty store (every shard unwritten) and return it opened read-write.

    `attrs` is provenance (teacher checkpoint sha256 + config, dataset fingerprint, split, ...):
    JSON only. An existing store is refused unless `overwrite`; a non-store directory is
    never overwritten.
    """
    loc = parse_location(url)
    user_attrs = _checked_attrs(attrs or {}, loc.url)
    store = open_backend(loc, writable=True)
    try:
        _refuse_existing(loc, store, overwrite)
        group = zarr.open_group(store, mode="w", zarr_format=3)
        preset = get_preset(schema.codec)
        arrays = {
            spec.name: _create_array(group, spec, schema, preset) for spec in schema.stored_arrays()
        }
        with store.writing():
            arrays["written"][:] = False  # materialize its chunks: every chunk key exists now
        # The schema attribute is written last: a store without it was not fully created.
        group.attrs.update({**_store_attrs(schema, preset), **user_attrs})
    finally:
        store.close()
    return TargetStore(loc.url, mode="r+")


def open_store(url: str | os.PathLike[str], mode: Mode = "r") -> TargetStore:
    """Open an existing store ('r' read-only, 'r+' to write shards). Opens lazily."""
    ts = TargetStore(url, mode)
    _ = ts.schema  # fail now, with a clear error, if it is not a readable store
    return ts


def open_or_create_store(
    url: str | os.PathLike[str], schema: StoreSchema, attrs: Mapping[str, Any] | None = None
) -> TargetStore:
    """Resume a store if it exists with the same schema and provenance, else create it.

    Every key of `attrs` must equal the stored one (a store built by another teacher or for
    another dataset is refused, never mixed).
    """
    loc = parse_location(url)
    if not _exists(loc):
        return create_store(url, schema, attrs)
    ts = open_store(url, mode="r+")
    if ts.schema != schema:
        raise StoreError(
            f"{loc.url}: existing store has a different schema ({ts.schema.to_json()}); "
            "use a new path or create it with overwrite=True"
        )
    stored = ts.attrs
    for key, value in _checked_attrs(attrs or {}, loc.url).items():
        if stored.get(key) != value:
            raise StoreError(
                f"{loc.url}: existing store differs in attribute {key!r} (another teacher or "
                "dataset?); use a new path or create it with overwrite=True"
            )
    return ts


def _exists(loc: Location) -> bool:
    if loc.kind == "local":
        return (Path(loc.path) / "zarr.json").is_file()
    if loc.kind == "zip":
        return Path(loc.path).exists()
    store = open_backend(loc, writable=False)
    try:
        return key_exists(store, "zarr.json")
    finally:
        store.close()


def _refuse_existing(loc: Location, store: CheckedStore, overwrite: bool) -> None:
    if loc.kind == "local" and Path(loc.path).exists() and not Path(loc.path).is_dir():
        raise StoreError(f"{loc.path} is a file, not a store directory: choose another path")
    is_store = key_exists(store, "zarr.json")
    if loc.kind == "local" and not is_store and any(Path(loc.path).glob("*")):
        raise StoreError(
            f"{loc.path} is a non-empty directory, not a store: refusing to write there"
        )
    if is_store and not overwrite:
        raise StoreError(
            f"a store already exists at {loc.url}: open it to resume (open_or_create_store), "
            "or pass overwrite=True to replace it"
        )


def _create_array(
    group: zarr.Group, spec: ArraySpec, schema: StoreSchema, preset: CodecPreset
) -> zarr.Array:
    return group.create_array(
        spec.name,
        shape=(schema.n, *spec.sample_shape),
        dtype=str if spec.dtype == "str" else spec.dtype,
        chunks=spec.chunks(schema.shard_size),
        shards=spec.shards(schema.shard_size),
        compressors=preset.compressors(),
        fill_value="" if spec.dtype == "str" else 0,
        dimension_names=spec.dimension_names,
        # Every written chunk gets an object, even all-zero ones, so "object absent" always
        # means "never written or lost" and reads can raise instead of returning zeros.
        config={"write_empty_chunks": True},
    )


def _store_attrs(schema: StoreSchema, preset: CodecPreset) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "schema": schema.to_json(),
        "codec": preset.to_json(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool_version": __version__,
    }


def _checked_attrs(attrs: Mapping[str, Any], url: str) -> dict[str, Any]:
    reserved = sorted(set(attrs) & set(RESERVED_ATTRS))
    if reserved:
        raise StoreError(f"{url}: attributes {reserved} are set by the store itself; rename them")
    try:
        return dict(json.loads(json.dumps(dict(attrs), allow_nan=False)))
    except (TypeError, ValueError) as e:
        raise StoreError(
            f"{url}: store attributes must be plain JSON (no pickle, NaN): {e}"
        ) from None


# ----------------------------------------------------------------------------- handle


@dataclass
class _Handle:
    """One process's open store: Zarr group, schema, open arrays, shards known written."""

    pid: int
    loc: Location
    store: CheckedStore
    group: zarr.Group
    schema: StoreSchema
    preset: CodecPreset
    arrays: dict[str, zarr.Array] = field(default_factory=dict)
    known_written: set[int] = field(default_factory=set)

    def array(self, name: str) -> zarr.Array:
        if name not in self.arrays:
            node = self.group[name]
            if not isinstance(node, zarr.Array):
                raise StoreError(f"{self.loc.url}: {name} is not an array; rebuild the store")
            # Runtime config is not persisted: reapply it so all-zero chunks still get objects.
            self.arrays[name] = node.with_config({"write_empty_chunks": True})
        return self.arrays[name]


def _open_handle(loc: Location, writable: bool) -> _Handle:
    store = open_backend(loc, writable=writable)
    try:
        try:
            group = zarr.open_group(store, mode="r+" if writable else "r", zarr_format=3)
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise StoreError(
                f"cannot open store at {loc.url} ({type(e).__name__}): is it an md store?"
            ) from None
        schema = _read_schema(loc, group.attrs.asdict())
    except BaseException:
        store.close()
        raise
    return _Handle(os.getpid(), loc, store, group, schema, get_preset(schema.codec))


def _read_schema(loc: Location, attrs: Mapping[str, Any]) -> StoreSchema:
    version, raw = attrs.get("schema_version"), attrs.get("schema")
    if not isinstance(version, int) or not isinstance(raw, dict):
        raise StoreError(
            f"{loc.url} has no md store schema (not a store, or its creation was interrupted): "
            "create it again with overwrite=True"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{loc.url} has store schema version {version}, newer than this md "
            f"({SCHEMA_VERSION}): upgrade md"
        )
    return StoreSchema.from_json(raw)


class TargetStore:
    """A teacher-target store at a URL: directory, packed ``.zip`` (read-only) or fsspec URL.

    Cheap to construct and to pickle; the Zarr handle opens on first use in each process.
    """

    def __init__(self, url: str | os.PathLike[str], mode: Mode = "r") -> None:
        if mode not in ("r", "r+"):
            raise StoreError(f"store mode must be 'r' or 'r+', got {mode!r}")
        self.url = parse_location(url).url
        self.mode: Mode = mode
        self._h: _Handle | None = None

    # -- per-process handle ---------------------------------------------------------------

    def _handle(self) -> _Handle:
        if self._h is None or self._h.pid != os.getpid():
            # After fork the parent's handle is left alone (not closed): it is the parent's.
            self._h = _open_handle(parse_location(self.url), writable=self.mode == "r+")
        return self._h

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "mode": self.mode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url, self.mode, self._h = state["url"], state["mode"], None

    def close(self) -> None:
        if self._h is not None and self._h.pid == os.getpid():
            self._h.store.close()
        self._h = None

    def __enter__(self) -> TargetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TargetStore({self.url!r}, mode={self.mode!r})"

    def __len__(self) -> int:
        return self.n

    # -- metadata ---------------------------------------------------------------------------

    @property
    def schema(self) -> StoreSchema:
        return self._handle().schema

    @property
    def attrs(self) -> dict[str, Any]:
        """All group attributes (store-owned and provenance), as JSON values."""
        return self._handle().group.attrs.asdict()

    @property
    def n(self) -> int:
        return self.schema.n

    @property
    def shard_size(self) -> int:
        return self.schema.shard_size

    @property
    def num_shards(self) -> int:
        return self.schema.num_shards

    def shard_range(self, k: int) -> range:
        return self.schema.shard_range(k)

    @property
    def preset(self) -> CodecPreset:
        return self._handle().preset

    def raw_names(self) -> list[str]:
        """Names of the stored Zarr arrays (see `StoreSchema.stored_arrays`)."""
        return [spec.name for spec in self.schema.stored_arrays()]

    def raw_array(self, name: str) -> zarr.Array:
        """A stored Zarr array as it lies (quantized features, uint8 masks), for verify/info.

        Reading it bypasses the ``written`` check; writing through it breaks the invariants.
        """
        if name not in self.raw_names():
            raise StoreError(f"{self.url}: no stored array {name!r}")
        return self._handle().array(name)

    def stored_bytes(self, name: str) -> int:
        """Bytes of the chunk/shard objects of stored array `name` (checksums and index included)."""
        return stored_bytes(self._handle().store, f"{name}/c/")

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Add or replace provenance attributes (JSON; store-owned keys are refused).

        Rewrites the group metadata: call it from one process (concurrent calls: last wins).
        """
        h = self._writable()
        h.group.attrs.update(_checked_attrs(attrs, self.url))

    # -- completeness -----------------------------------------------------------------------

    def written_mask(self) -> np.ndarray:
        """[N] bool, read fresh: True for samples of fully written shards."""
        h = self._handle()
        with self._errors("written"):
            mask = np.asarray(h.array("written")[:], dtype=bool)
        h.known_written.update(k for k in range(self.num_shards) if mask[self.shard_range(k)].all())
        return mask

    def missing_shards(self) -> list[int]:
        mask = self.written_mask()
        return [k for k in range(self.num_shards) if not mask[self.shard_range(k)].all()]

    def is_complete(self) -> bool:
        return not self.missing_shards()

    def is_shard_written(self, k: int) -> bool:
        return not self._unwritten(self._handle(), [k])

    def _unwritten(self, h: _Handle, shards: Sequence[int]) -> list[int]:
        """Shards among `shards` not written; reads `written` once per unknown shard."""
        unknown = [int(k) for k in shards if k not in h.known_written]
        if unknown:
            idx = np.concatenate(
                [np.arange(r.start, r.stop) for r in map(self.shard_range, unknown)]
            )
            with self._errors("written"):
                flags = np.asarray(h.array("written").oindex[idx], dtype=bool)
            pos = 0
            for k in unknown:
                size = len(self.shard_range(k))
                if flags[pos : pos + size].all():
                    h.known_written.add(k)
                pos += size
        return [k for k in unknown if k not in h.known_written]

    # -- writing ----------------------------------------------------------------------------

    def write_shard(
        self,
        k: int,
        arrays: Mapping[str, np.ndarray],
        sample_ids: Sequence[str],
        groups: Sequence[str],
        *,
        overwrite: bool = False,
    ) -> None:
        """Write every array of shard k, then mark its samples written (one writer per shard).

        `arrays` holds exactly `schema.target_shapes()` with a leading axis of
        ``len(shard_range(k))``: float32 ``features/L`` (quantized here), float
        ``attention/L`` in [0, 1], extras in their dtype. A written shard is refused unless
        `overwrite` (resuming writers skip written shards instead).
        """
        h = self._writable()
        rng = self.shard_range(k)
        where = f"{self.url}: shard {k} (samples {rng.start}-{rng.stop - 1})"
        if not overwrite and self.is_shard_written(k):
            raise StoreError(
                f"{where} is already written: skip it when resuming, or pass overwrite=True"
            )
        payload = _encode_shard(h.schema, h.preset, arrays, len(rng), where)
        payload["sample_id"] = _checked_strings(
            sample_ids, len(rng), "sample_ids", where, allow_empty=False
        )
        payload["group"] = _checked_strings(groups, len(rng), "groups", where, allow_empty=True)
        sel = slice(rng.start, rng.stop)
        with self._errors(f"shard {k}"), h.store.writing():
            if overwrite:
                h.array("written")[sel] = False
                h.known_written.discard(k)
            for name, value in payload.items():
                h.array(name)[sel] = value
            h.array("written")[sel] = True  # the commit: only after every array of the shard
        h.known_written.add(k)

    def _writable(self) -> _Handle:
        if self.mode != "r+":
            raise StoreError(f"{self.url} is open read-only: open it with mode='r+' to write")
        return self._handle()

    # -- reading ----------------------------------------------------------------------------

    def read(
        self, indices: Sequence[int] | np.ndarray, names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Samples by index -> {name: array} in the order of `indices` (duplicates allowed).

        Names are target names (``features/L`` float32 dequantized, ``attention/L`` float32
        in [0, 1], extras in their dtype) plus ``sample_id`` and ``group`` (str); all by
        default. Raises `IncompleteStoreError` if any sample's shard is not written.
        """
        h = self._handle()
        idx = self._indices(indices)
        names = list(names) if names is not None else [*h.schema.target_shapes(), *META_NAMES]
        self._check_names(h, names)
        missing = self._unwritten(h, sorted({int(i) // self.shard_size for i in idx}))
        if missing:
            raise IncompleteStoreError(
                f"{self.url}: shards {missing} were never written (requested samples live there); "
                f"finish them (rerun md cache-teacher, which resumes) — `md store info {self.url}` lists them",
                missing,
            )
        uniq, inverse = np.unique(idx, return_inverse=True)
        return {name: self._read_one(h, name, uniq)[inverse] for name in names}

    def _read_one(self, h: _Handle, name: str, idx: np.ndarray) -> np.ndarray:
        top = name.partition("/")[0]
        with self._errors(name):
            values = np.asarray(h.array(name).oindex[idx])
            if top in ("features", "features_flip"):
                scale = None
                if h.preset.quantized:
                    scale = np.asarray(h.array(scale_array_name(name)).oindex[idx])
                return decode_features(values, scale, h.preset)
            if top in ("attention", "attention_flip"):
                return decode_attention(values)
            return np.array(values.tolist(), dtype=np.str_) if name in META_NAMES else values

    def _indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise StoreError(
                f"{self.url}: indices must be a 1-D sequence of ints, got {idx.dtype} {idx.shape}"
            )
        idx = idx.astype(np.int64)
        bad = idx[(idx < 0) | (idx >= self.n)]
        if bad.size:
            raise StoreError(
                f"{self.url}: sample indices {bad[:5].tolist()} out of range [0, {self.n})"
            )
        return idx

    def _check_names(self, h: _Handle, names: Sequence[str]) -> None:
        known = [*h.schema.target_shapes(), *META_NAMES]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise StoreError(f"{self.url}: no arrays {unknown}; readable names are {known}")

    @contextlib.contextmanager
    def _errors(self, name: str) -> Iterator[None]:
        """Zarr/backend failures on `name` -> one-line StoreError naming store and fix."""
        try:
            yield
        except MissingChunkError as e:
            raise StoreError(
                f"{self.url}: object {e.key} is missing although its shard is marked written; "
                f"the store is damaged: run `md store verify {self.url}` and rebuild that shard"
            ) from None
        except (ValueError, RuntimeError, OSError) as e:
            raise StoreError(
                f"{self.url}: cannot read {name} ({e}); run `md store verify {self.url}` to find the bad shard"
            ) from None


def _encode_shard(
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
            out.update(_encode_target(name, value, preset, extras.get(name)))
        except ValueError as e:
            raise StoreError(f"{where}: {name}: {e}") from None
    return out


def _encode_target(
    name: str, value: np.ndarray, preset: CodecPreset, extra_dtype: str | None
) -> dict[str, np.ndarray]:
    top = name.partition("/")[0]
    if top in ("features", "features_flip"):
        stored, scale = encode_features(value, preset)
        side = {} if scale is None else {scale_array_name(name): scale}
        return {name: stored, **side}
    if top in ("attention", "attention_flip"):
        return {name: encode_attention(value)}
    assert extra_dtype is not None
    return {name: _cast_extra(value, np.dtype(extra_dtype))}


def _cast_extra(value: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """Cast to the schema dtype; integers/bools must survive the cast exactly."""
    out = value.astype(dtype)
    if not (value.dtype.kind == "f" and dtype.kind == "f") and not np.array_equal(out, value):
        raise ValueError(f"values of dtype {value.dtype} do not fit {dtype}")
    return out


def _checked_strings(
    values: Sequence[str], size: int, what: str, where: str, *, allow_empty: bool
) -> np.ndarray:
    items = list(values)
    if len(items) != size or not all(isinstance(s, str) for s in items):
        raise StoreError(f"{where}: {what} must be {size} strings, got {len(items)}")
    if not allow_empty and not all(items):
        raise StoreError(f"{where}: {what} contains empty strings")
    return np.array(items, dtype=np.dtypes.StringDType())


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
        _create_array(group, spec, schema, preset)[:] = value
        total += stored_bytes(store, f"{spec.name}/c/")
    return total
