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
  few shards costs one index read per shard per process, then one byte range per sample and
  array. A batch read fetches all its arrays concurrently on zarr's event loop, so a remote
  store overlaps their round trips instead of paying them one array after another.
- **JSON only.** Group attributes are JSON (no pickle): the schema, codec, provenance.
- **Shards know their run.** The root's ``identity`` attribute is the sha256 of the
  provenance the store was created with (teacher checkpoint sha256, data fingerprint, ...).
  Every shard's ``shard_record`` (schema version >= 2) holds that identity and the crc32c of
  each of the shard's stored objects, written before ``written``: `md.stores.verify` catches
  a shard written by another run and an object swapped in from another shard or store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import google_crc32c  # zarr's own crc32c implementation (a zarr dependency)
import numpy as np
import zarr
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.sync import sync  # zarr's own bridge onto its event loop
from zarr.storage import MemoryStore, StorePath

from md import __version__
from md.errors import IncompleteStoreError, StoreError, disk_error
from md.stores.aio import gather_all
from md.stores.backends import (
    CheckedStore,
    Location,
    MissingChunkError,
    has_objects,
    key_exists,
    missing_store_error,
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
    preset_of_store,
)
from md.stores.schema import (
    RECORD_VERSION,
    SCHEMA_VERSION,
    ArraySpec,
    LevelSpec,
    StoreSchema,
    scale_array_name,
)
from md.stores.shard_object import ShardLayout

Mode = Literal["r", "r+"]
# Attributes the store owns; `attrs` passed by callers may not override them.
RESERVED_ATTRS = ("schema_version", "schema", "codec", "created", "tool_version", "identity")
META_NAMES = ("sample_id", "group")
_UPLOAD_WINDOW = 32  # objects written at once when a new store is laid out on its backend


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
    bare_root, objects = _layout(schema, user_attrs)
    store = open_backend(loc, writable=True)
    try:
        if _refuse_existing(loc, store, overwrite):
            sync(store.delete_dir(""))  # overwrite: the old prefix goes, every object of it
        try:
            _upload_layout(store, bare_root, objects)
        except StoreError:
            if loc.kind == "local":  # folders the failed layout made: an empty one is reusable
                _remove_empty_folders(Path(loc.path))
            raise
    finally:
        store.close()
    return TargetStore(loc.url, mode="r+")


def _remove_empty_folders(root: Path) -> None:
    """Remove the empty folders under `root`, deepest first (`root` itself stays)."""
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        if Path(folder) != root:
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def _layout(schema: StoreSchema, user_attrs: Mapping[str, Any]) -> tuple[Buffer, dict[str, Buffer]]:
    """A new empty store laid out in memory: (root metadata without attributes, every
    object by key). One upload then writes it to any backend, in few round trips."""
    objects: dict[str, Buffer] = {}
    memory = MemoryStore(objects)
    group = zarr.open_group(memory, mode="w", zarr_format=3)
    bare_root = objects["zarr.json"]
    preset = get_preset(schema.codec)
    arrays = {
        spec.name: _create_array(group, spec, schema, preset) for spec in schema.stored_arrays()
    }
    arrays["written"][:] = False  # materialize its chunks: every chunk key exists now
    group.attrs.update(
        {**_store_attrs(schema, preset), "identity": run_identity(user_attrs), **user_attrs}
    )
    return bare_root, objects


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


def _upload_layout(store: CheckedStore, bare_root: Buffer, objects: Mapping[str, Buffer]) -> None:
    """Write a laid-out store: the bare root first, then every other object concurrently,
    the root with the schema attribute last. A store without that attribute was not fully
    created (opening it says so; creating it again with overwrite=True repairs it)."""
    rest = [key for key in objects if key != "zarr.json"]

    async def upload() -> None:
        await store.set("zarr.json", bare_root)
        for start in range(0, len(rest), _UPLOAD_WINDOW):
            window = rest[start : start + _UPLOAD_WINDOW]
            # Every set of a window finishes before a failure is raised, so a cleanup after
            # it (a full disk) finds no write still in flight.
            await gather_all(*(store.set(key, objects[key]) for key in window))
        await store.set("zarr.json", objects["zarr.json"])

    try:
        with store.writing():
            sync(upload())
    except OSError as e:
        # A half-laid-out store would be refused as "not fully created": remove what landed
        # (it also frees the space) so a plain rerun, once the disk has room, creates it.
        with contextlib.suppress(Exception):
            sync(store.delete_dir(""))
        raise _write_error(store.url, "a new store", e) from None


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
            "use a new path, or pass --overwrite to replace it"
        )
    stored = ts.attrs
    for key, value in _checked_attrs(attrs or {}, loc.url).items():
        if stored.get(key) != value:
            raise StoreError(
                f"{loc.url}: existing store differs in attribute {key!r} (another teacher or "
                "dataset?); use a new path, or pass --overwrite to replace it"
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


def _refuse_existing(loc: Location, store: CheckedStore, overwrite: bool) -> bool:
    """Refuse to create over a store (unless `overwrite`) or over anything that is not a
    store; returns whether an old store is there to delete."""
    if loc.kind == "local" and Path(loc.path).exists() and not Path(loc.path).is_dir():
        raise StoreError(f"{loc.path} is a file, not a store directory: choose another path")
    is_store = key_exists(store, "zarr.json")
    if loc.kind == "local" and not is_store and any(Path(loc.path).glob("*")):
        raise StoreError(
            f"{loc.path} is a non-empty directory, not a store: refusing to write there"
        )
    if loc.kind == "fsspec" and not is_store and has_objects(store):
        raise StoreError(
            f"{loc.url} holds objects but no store (another dataset, or an interrupted "
            "`md store unpack`): refusing to write there; delete that prefix or choose another"
        )
    if is_store and not overwrite:
        raise StoreError(
            f"a store already exists at {loc.url}: resume it (the same command without "
            "--overwrite), or pass --overwrite to replace it"
        )
    return is_store


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
    identity: str  # sha256 of the creation provenance ("" for stores made before it existed)
    arrays: dict[str, zarr.Array] = field(default_factory=dict)
    known_written: set[int] = field(default_factory=set)
    layouts: dict[str, ShardLayout | None] = field(default_factory=dict)
    checked: set[str] = field(default_factory=set)  # arrays whose layout matched the schema

    def layout(self, name: str) -> ShardLayout | None:
        """How to write and read array `name`'s shard objects in one pass
        (`md.stores.shard_object`), or None where zarr does (unsharded arrays, layouts md did
        not create)."""
        if name not in self.layouts:
            layout = ShardLayout.of(self.array(name))
            ok = layout is not None and layout.shard_len == self.schema.shard_size
            self.layouts[name] = layout if ok else None
        return self.layouts[name]

    def array(self, name: str, *, check: bool = True) -> zarr.Array:
        """Array `name`; with `check`, refused unless its shape, chunks, shards and dtype are
        the schema's (an edited ``zarr.json`` must not be read or written as if it were)."""
        if name not in self.arrays:
            node = self.group[name]
            if not isinstance(node, zarr.Array):
                raise StoreError(f"{self.loc.url}: {name} is not an array; rebuild the store")
            # Runtime config is not persisted: reapply it so all-zero chunks still get objects.
            self.arrays[name] = node.with_config({"write_empty_chunks": True})
        arr = self.arrays[name]
        if check and name not in self.checked:
            spec = self.schema.array_spec(name)
            bad = array_mismatches(spec, arr, self.schema) if spec is not None else []
            if bad:
                raise StoreError(
                    f"{self.loc.url}: array {name} does not match the store schema "
                    f"({'; '.join(bad)}): the store is damaged; fetch or cache it again"
                )
            self.checked.add(name)
        return arr

    def open_arrays(self, names: Sequence[str], *, check: bool = True) -> list[zarr.Array]:
        """The arrays `names`; those not open yet are opened all at once (on a remote store
        one round trip, not one per array). A failure is left to `array`, which says why."""
        todo = [name for name in dict.fromkeys(names) if name not in self.arrays]
        if len(todo) > 1:
            opened = sync(_open_arrays(self.store, todo))
            for name, node in zip(todo, opened, strict=True):
                if isinstance(node, zarr.AsyncArray):
                    self.arrays[name] = zarr.Array(node).with_config({"write_empty_chunks": True})
        return [self.array(name, check=check) for name in names]


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


async def _open_arrays(store: CheckedStore, names: Sequence[str]) -> list[Any]:
    opens = [zarr.AsyncArray.open(StorePath(store, name), zarr_format=3) for name in names]
    return await asyncio.gather(*opens, return_exceptions=True)


def _open_handle(loc: Location, writable: bool) -> _Handle:
    store = open_backend(loc, writable=writable)
    try:
        try:
            group = zarr.open_group(store, mode="r+" if writable else "r", zarr_format=3)
        except (FileNotFoundError, ValueError, KeyError) as e:
            if loc.kind == "fsspec" and isinstance(e, FileNotFoundError):
                raise missing_store_error(loc) from None
            raise StoreError(
                f"cannot open store at {loc.url} ({type(e).__name__}): is it an md store?"
            ) from None
        attrs = group.attrs.asdict()
        schema = _read_schema(loc, attrs)
        preset = preset_of_store(attrs.get("codec"), schema.codec)  # as written, not as today
    except BaseException:
        store.close()
        raise
    identity = attrs.get("identity")
    sha = str(identity.get("sha256", "")) if isinstance(identity, dict) else ""
    return _Handle(os.getpid(), loc, store, group, schema, preset, sha)


def _read_schema(loc: Location, attrs: Mapping[str, Any]) -> StoreSchema:
    version, raw = attrs.get("schema_version"), attrs.get("schema")
    if not isinstance(version, int) or not isinstance(raw, dict):
        raise StoreError(
            f"{loc.url} has no md store schema (not a store, or its creation was interrupted): "
            "create it again with --overwrite"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{loc.url} has store schema version {version}, newer than this md "
            f"({SCHEMA_VERSION}): upgrade md"
        )
    return StoreSchema.from_json(raw)


_INHERITED_HANDLES: list[_Handle] = []  # handles a forked child got from its parent


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
            if self._h is not None:
                # After fork the parent's handle is the parent's: never closed or used here,
                # and kept referenced so its client's finalizers do not run in this process.
                _INHERITED_HANDLES.append(self._h)
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

    def raw_array(self, name: str, *, check: bool = True) -> zarr.Array:
        """A stored Zarr array as it lies (quantized features, uint8 masks), for verify/info.

        Reading it bypasses the ``written`` check; writing through it breaks the invariants.
        With ``check=False`` an array whose layout departs from the schema is returned too
        (verify and info report it); otherwise that is a StoreError.
        """
        if name not in self.raw_names():
            raise StoreError(f"{self.url}: no stored array {name!r}")
        return self._handle().array(name, check=check)

    def raw_arrays(self, names: Sequence[str], *, check: bool = True) -> list[zarr.Array]:
        """`raw_array` for several names, opened all at once (one round trip when remote)."""
        unknown = sorted(set(names) - set(self.raw_names()))
        if unknown:
            raise StoreError(f"{self.url}: no stored arrays {unknown}")
        return self._handle().open_arrays(names, check=check)

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
    ) -> int:
        """Write every array of shard k, then mark its samples written (one writer per shard);
        return the shard's stored bytes over every array (checksums and indexes included).

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
        with self._errors(f"shard {k}", writing=True), h.store.writing():
            if overwrite:
                h.array("written")[sel] = False
                h.known_written.discard(k)
            targets = h.open_arrays(list(payload))
            whole: list[tuple[zarr.Array, bytes]] = []  # (array, its encoded shard object)
            through_zarr: list[tuple[zarr.Array, np.ndarray]] = []
            for (name, value), arr in zip(payload.items(), targets, strict=True):
                layout = h.layout(name)
                if layout is None:
                    through_zarr.append((arr, value))
                else:
                    whole.append((arr, layout.encode(value)))
            _raise_first(sync(_write_arrays(k, sel, whole, through_zarr)))
            nbytes = self._write_record(h, k, sel, whole, [arr for arr, _ in through_zarr])
            h.array("written")[sel] = True  # the commit: only after every array of the shard
        h.known_written.add(k)
        return nbytes + sync(_object_sizes([h.array("written")], k))[0]

    def _write_record(
        self,
        h: _Handle,
        k: int,
        sel: slice,
        whole: Sequence[tuple[zarr.Array, bytes]],
        through_zarr: Sequence[zarr.Array],
    ) -> int:
        """Write shard k's ``shard_record`` (schema >= 2); return the stored bytes of the
        shard's objects so far. The objects zarr encoded are read back once for their crc32c
        (small: ids, groups, scales, box lists); the ones we encoded are at hand."""
        objects = {arr.path: obj for arr, obj in whole}
        objects.update(zip([a.path for a in through_zarr],
                           sync(_object_bytes(through_zarr, k)), strict=True))  # fmt: skip
        nbytes = sum(len(obj) for obj in objects.values())
        if h.schema.version < RECORD_VERSION:
            return nbytes
        record = h.array("shard_record")
        value = shard_record(h.identity, k, objects)
        record[sel] = np.array([value] * (sel.stop - sel.start), dtype=np.dtypes.StringDType())
        return nbytes + sync(_object_sizes([record], k))[0]

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
        stored = self._fetch(h, names, uniq)
        out = {}
        for name in names:
            with self._errors(name):
                out[name] = self._decode(h, name, stored)[inverse]
        return out

    def _stored_names(self, h: _Handle, name: str) -> list[str]:
        """Stored arrays behind target name `name` (quantized features have a scale array)."""
        top = name.partition("/")[0]
        if top in ("features", "features_flip") and h.preset.quantized:
            return [name, scale_array_name(name)]
        return [name]

    def _fetch(self, h: _Handle, names: Sequence[str], idx: np.ndarray) -> dict[str, np.ndarray]:
        """Samples `idx` of every stored array behind `names`, all arrays at once.

        The reads are gathered on zarr's event loop, so a remote backend overlaps their round
        trips (bounded by its connection pool); every read runs to its end, then the first
        failure is raised as a one-line StoreError naming its array.
        """
        stored = list(dict.fromkeys(s for name in names for s in self._stored_names(h, name)))
        with self._errors(", ".join(stored)):
            arrays = h.open_arrays(stored)
        layouts = [h.layout(name) for name in stored]
        results = sync(_read_arrays(arrays, layouts, idx))
        out: dict[str, np.ndarray] = {}
        for name, layout, result in zip(stored, layouts, results, strict=True):
            with self._errors(name):
                if isinstance(result, BaseException):
                    raise result
                if layout is None:
                    out[name] = np.asarray(result)
                else:  # verified and decompressed here, off zarr's event loop
                    out[name] = np.stack([layout.decode_chunk(b) for b in result])
        return out

    def _decode(self, h: _Handle, name: str, stored: Mapping[str, np.ndarray]) -> np.ndarray:
        top = name.partition("/")[0]
        values = stored[name]
        if top in ("features", "features_flip"):
            scale = stored[scale_array_name(name)] if h.preset.quantized else None
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
    def _errors(self, name: str, *, writing: bool = False) -> Iterator[None]:
        """Zarr/backend failures on `name` -> one-line StoreError naming store and fix (a
        failed write is a write: a full disk says so, not "cannot read")."""
        try:
            yield
        except MissingChunkError as e:
            raise StoreError(
                f"{self.url}: object {e.key} is missing although its shard is marked written; "
                f"the store is damaged: run `md store verify {self.url}` and rebuild that shard"
            ) from None
        except (ValueError, RuntimeError, OSError) as e:
            if writing:
                if isinstance(e, OSError):
                    raise _write_error(self.url, name, e) from None
                raise StoreError(f"{self.url}: cannot write {name} ({e})") from None
            raise StoreError(
                f"{self.url}: cannot read {name} ({e}); run `md store verify {self.url}` to find the bad shard"
            ) from None


def _write_error(url: str, what: str, error: OSError) -> StoreError:
    """A failed write as one line: the disk's fix if it is about the disk, else the cause."""
    disk = disk_error(error, url, what, "rerun the same command: finished shards are kept")
    if disk is not None:
        return StoreError(str(disk))
    return StoreError(f"{url}: cannot write {what} ({type(error).__name__}: {error})")


def shard_object_key(arr: zarr.Array, k: int) -> str:
    """Store key of shard k's object of `arr`: the shard of per-sample chunks, or the one
    chunk of the whole shard (every md array is chunked or sharded by store shard)."""
    return f"{arr.store_path.path}/{arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))}"


async def _object_sizes(arrays: Sequence[zarr.Array], k: int) -> list[int]:
    """Stored bytes of shard k's object of each array, looked up concurrently."""
    sizes = [arr.store_path.store.getsize(shard_object_key(arr, k)) for arr in arrays]
    return [int(n) for n in await gather_all(*sizes)]


async def _object_bytes(arrays: Sequence[zarr.Array], k: int) -> list[bytes]:
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


async def _write_arrays(
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


def _raise_first(results: Sequence[Any]) -> None:
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _read_arrays(
    arrays: Sequence[zarr.Array], layouts: Sequence[ShardLayout | None], idx: np.ndarray
) -> list[Any]:
    """Samples `idx` of every array, concurrently: arrays with a `ShardLayout` as each
    sample's raw chunk bytes (`_read_chunks`), the others by zarr's orthogonal read; an
    array's failure is returned in its place (no read is left running when the caller
    raises)."""
    reads = [
        a.async_array.get_orthogonal_selection((idx,))
        if layout is None
        else _read_chunks(a, layout, idx)
        for a, layout in zip(arrays, layouts, strict=True)
    ]
    return await asyncio.gather(*reads, return_exceptions=True)


async def _read_chunks(arr: zarr.Array, layout: ShardLayout, idx: np.ndarray) -> list[bytes]:
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
    chunks = await gather_all(*(store.get(key, prototype, byte_range) for key, byte_range in ranges))
    out = []
    for i, buf in zip(idx, chunks, strict=True):
        if buf is None:
            raise MissingChunkError(keys[int(i) // layout.shard_len])
        out.append(buf.to_bytes())
    return out


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
