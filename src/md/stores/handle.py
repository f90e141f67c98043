"""One process's open store (`Handle`): its Zarr group, schema, codec and open arrays.

A `TargetStore` opens a handle lazily, keyed on the pid (`open_handle`); after a fork the
child opens its own and keeps the parent's referenced but unused (`INHERITED_HANDLES`), so
the parent's client finalizers never run in the child. Arrays are opened once per handle and
checked against the schema on first use, so an edited ``zarr.json`` is refused, not read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import zarr
from zarr.core.sync import sync  # zarr's own bridge onto its event loop

from md.errors import StoreError, disk_error
from md.stores.array_io import open_arrays
from md.stores.arrays import array_mismatches
from md.stores.backends import CheckedStore, Location, missing_store_error, open_backend
from md.stores.codecs import CodecPreset, preset_of_store
from md.stores.schema import SCHEMA_VERSION, StoreSchema
from md.stores.shard_object import ShardLayout


@dataclass
class Handle:
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
            opened = sync(open_arrays(self.store, todo))
            for name, node in zip(todo, opened, strict=True):
                if isinstance(node, zarr.AsyncArray):
                    self.arrays[name] = zarr.Array(node).with_config({"write_empty_chunks": True})
        return [self.array(name, check=check) for name in names]


def open_handle(loc: Location, writable: bool) -> Handle:
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
    return Handle(os.getpid(), loc, store, group, schema, preset, sha)


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


INHERITED_HANDLES: list[Handle] = []  # handles a forked child got from its parent


def write_error(url: str, what: str, error: OSError) -> StoreError:
    """A failed write as one line: the disk's fix if it is about the disk, else the cause."""
    disk = disk_error(error, url, what, "rerun the same command: finished shards are kept")
    if disk is not None:
        return StoreError(str(disk))
    return StoreError(f"{url}: cannot write {what} ({type(error).__name__}: {error})")
