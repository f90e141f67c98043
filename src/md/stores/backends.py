"""Backends: a store URL -> a Zarr store, wrapped so reads never fall back to fill values.

- a directory path (or ``file://``): `zarr.storage.LocalStore`, read-write;
- a path ending in ``.zip``: `zarr.storage.ZipStore`, read-only (made by `md store pack`);
- any other ``scheme://`` URL (``s3://``, ``memory://``, ...): `zarr.storage.FsspecStore`.

Every store is wrapped in `CheckedStore`: a chunk object that is absent raises
`MissingChunkError` instead of reading as zeros (stores are created with
``write_empty_chunks=True``, so a written shard always has its objects). Read-only handles also
cache shard indexes: a sharded read fetches the index once per shard and process, then one
byte range per sample, which keeps requests per sample low on remote backends.

Handles are per process (see `md.stores.target_store`); nothing here is shared across fork.
"""

from __future__ import annotations

import contextlib
import os
import re
import zipfile
from collections.abc import AsyncGenerator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from zarr.abc.store import ByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.core.sync import sync  # zarr's own sync bridge (used by its sync API)
from zarr.storage import FsspecStore, LocalStore, WrapperStore, ZipStore

from md.errors import StoreError

BackendKind = Literal["local", "zip", "fsspec"]

# Chunk keys under the default v3 encoding: "<array path>/c/<i>/<j>/...".
_CHUNK_KEY = re.compile(r"(^|/)c(/\d+)+$")
_INDEX_CACHE_MAX = 1 << 16  # entries; an index is 16 bytes per chunk + 4


class MissingChunkError(Exception):
    """A chunk/shard object that should exist is absent (never written, or lost)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


@dataclass(frozen=True)
class Location:
    """Where a store lives: `path` is a filesystem path for local/zip, else the URL."""

    url: str
    kind: BackendKind
    path: str


def parse_location(url: str | os.PathLike[str]) -> Location:
    """Pick the backend from the URL: ``*.zip`` -> zip, ``scheme://`` -> fsspec, else local."""
    text = os.fspath(url)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        return Location(text, "fsspec", text)
    kind: BackendKind = "zip" if text.lower().endswith(".zip") else "local"
    return Location(text, kind, text)


def open_backend(loc: Location, *, writable: bool) -> CheckedStore:
    """Open the Zarr store for `loc`; read-only unless `writable` (zip is always read-only)."""
    if loc.kind == "zip":
        store: Store = _open_zip(loc, writable)
    elif loc.kind == "local":
        if not writable and not Path(loc.path).is_dir():
            raise StoreError(
                f"no store at {loc.path}: expected a directory store or a .zip from `md store pack`"
            )
        store = LocalStore(loc.path, read_only=not writable)
    else:
        store = _open_fsspec(loc, writable)
    return CheckedStore(store, cache_index=not writable)


def _open_zip(loc: Location, writable: bool) -> Store:
    if writable:
        raise StoreError(
            f"{loc.path} is a packed .zip store (read-only): write into a directory store, "
            "then `md store pack DIR OUT.zip`"
        )
    if not zipfile.is_zipfile(loc.path):
        raise StoreError(f"{loc.path} is not a readable zip file: re-pack it with `md store pack`")
    return ZipStore(loc.path, mode="r")


def _open_fsspec(loc: Location, writable: bool) -> Store:
    try:
        return FsspecStore.from_url(loc.url, read_only=not writable)
    except (ImportError, ValueError) as e:
        raise StoreError(
            f"cannot open {loc.url} with fsspec ({e}); install the fsspec backend for that scheme"
        ) from e


class CheckedStore(WrapperStore[Store]):
    """Wraps a store: absent chunk objects raise; read-only handles cache shard indexes.

    Not safe to share across fork (the wrapped store may hold a file handle).
    """

    def __init__(self, store: Store, *, cache_index: bool = False) -> None:
        super().__init__(store)
        self._cache_index = cache_index and store.read_only
        self._index_cache: dict[tuple[str, int], tuple[BufferPrototype, Buffer]] = {}
        self._writing = 0  # > 0 while `writing()` is active
        self._zip_sizes: dict[str, int] | None = None
        self.requests = 0  # data gets sent to the wrapped store (tests count them)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Allow absent chunks while writing: zarr 3.1 reads a shard before rewriting it,
        even a whole one, and a new shard is absent. Writers are single-threaded per handle."""
        self._writing += 1
        try:
            yield
        finally:
            self._writing -= 1

    def _with_store(self, store: Store) -> CheckedStore:
        return type(self)(store, cache_index=self._cache_index)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        cache_key = None
        if self._cache_index and isinstance(byte_range, SuffixByteRequest):
            cache_key = (key, byte_range.suffix)
            hit = self._index_cache.get(cache_key)
            if hit is not None and hit[0] == prototype:
                return hit[1]
        self.requests += 1
        buf = await self._store.get(key, prototype, byte_range)
        if buf is None and not self._writing and _CHUNK_KEY.search(key):
            raise MissingChunkError(key)
        if cache_key is not None and buf is not None:
            if len(self._index_cache) >= _INDEX_CACHE_MAX:
                self._index_cache.clear()
            self._index_cache[cache_key] = (prototype, buf)
        return buf

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [await self.get(key, prototype, rng) for key, rng in key_ranges]

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        for key, prototype, rng in requests:
            yield key, await self.get(key, prototype, rng)

    async def getsize(self, key: str) -> int:
        if isinstance(self._store, ZipStore):  # its default would read the whole member
            if self._zip_sizes is None:
                with zipfile.ZipFile(self._store.path) as zf:
                    self._zip_sizes = {i.filename: i.file_size for i in zf.infolist()}
            if key in self._zip_sizes:
                return self._zip_sizes[key]
        return await self._store.getsize(key)

    def __repr__(self) -> str:
        return f"CheckedStore({self._store!r})"


def stored_bytes(store: Store, prefix: str) -> int:
    """Total size of the objects under `prefix` (e.g. ``features/C3/c/`` for its chunks)."""
    return int(sync(store.getsize_prefix(prefix)))


def key_exists(store: Store, key: str) -> bool:
    """Whether an object exists (one request; used by `verify`, not on the read path)."""
    return bool(sync(store.exists(key)))
