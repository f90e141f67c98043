"""Creating a store: lay it out in memory, upload it to its backend, or resume one.

`create_store` lays a new empty store out in a `MemoryStore` (every array, every ``written``
chunk, the attributes), then uploads it in few round trips: the root without attributes
first, every other object concurrently, the root with the schema attribute last. A store
without that attribute was not fully created: opening it says so, and creating it again with
``overwrite=True`` repairs it. `open_or_create_store` resumes a store made with the same
schema and provenance, and refuses one made by another teacher or for another dataset.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import zarr
from zarr.core.buffer import Buffer
from zarr.core.sync import sync  # zarr's own bridge onto its event loop
from zarr.storage import MemoryStore

from md import __version__
from md.errors import StoreError
from md.stores.aio import gather_all
from md.stores.arrays import create_array
from md.stores.backends import (
    CheckedStore,
    Location,
    has_objects,
    key_exists,
    open_backend,
    parse_location,
)
from md.stores.codecs import CodecPreset, get_preset
from md.stores.encode import checked_attrs, run_identity
from md.stores.fingerprint import create_files_array, split_provenance
from md.stores.handle import write_error
from md.stores.schema import SCHEMA_VERSION, WRITTEN, StoreSchema
from md.stores.target_store import TargetStore, open_store

_UPLOAD_WINDOW = 32  # objects written at once when a new store is laid out on its backend


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
    user_attrs, fingerprint_files = split_provenance(checked_attrs(attrs or {}, loc.url))
    bare_root, objects = _layout(schema, user_attrs, fingerprint_files)
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


def _layout(
    schema: StoreSchema, user_attrs: Mapping[str, Any], fingerprint_files: list[str] | None
) -> tuple[Buffer, dict[str, Buffer]]:
    """A new empty store laid out in memory: (root metadata without attributes, every
    object by key). One upload then writes it to any backend, in few round trips. The
    per-file sha256s of a dataset fingerprint go into their own array (md.stores.fingerprint)."""
    objects: dict[str, Buffer] = {}
    memory = MemoryStore(objects)
    group = zarr.open_group(memory, mode="w", zarr_format=3)
    bare_root = objects["zarr.json"]
    preset = get_preset(schema.codec)
    arrays = {
        spec.name: create_array(group, spec, schema, preset) for spec in schema.stored_arrays()
    }
    arrays[WRITTEN][:] = False  # materialize its chunks: every chunk key exists now
    if fingerprint_files is not None:
        create_files_array(group, fingerprint_files, preset.compressors())
    group.attrs.update(
        {**_store_attrs(schema, preset), "identity": run_identity(user_attrs), **user_attrs}
    )
    return bare_root, objects


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
        raise write_error(store.url, "a new store", e) from None


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
    as_stored, _ = split_provenance(checked_attrs(attrs or {}, loc.url))
    for key, value in as_stored.items():
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


def _store_attrs(schema: StoreSchema, preset: CodecPreset) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "schema": schema.to_json(),
        "codec": preset.to_json(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool_version": __version__,
    }
