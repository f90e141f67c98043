"""Backends: a store URL -> a Zarr store, wrapped so reads never fall back to fill values.

- a directory path (or ``file://``): `zarr.storage.LocalStore`, read-write;
- a path ending in ``.zip``: `zarr.storage.ZipStore`, read-only (made by `md store pack`);
  a zip with compressed, encrypted or inconsistently sized members is refused on open;
- any other ``scheme://`` URL (``s3://``, ``memory://``, ...): `zarr.storage.FsspecStore`.
  ``s3://bucket/prefix`` needs s3fs (``pip install 'md[s3]'``) and takes the usual AWS
  settings: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or ``AWS_PROFILE`` (``~/.aws``),
  ``AWS_ENDPOINT_URL`` for S3-compatible servers, and fsspec's own config
  (``FSSPEC_S3_ENDPOINT_URL``, ``~/.config/fsspec/s3.json``).

Every store is wrapped in `CheckedStore`: a chunk object that is absent raises
`MissingChunkError` instead of reading as zeros (stores are created with
``write_empty_chunks=True``, so a written shard always has its objects), and a backend that
cannot be reached, has no credentials or no such bucket raises a one-line
`StoreAccessError` naming the URL and the fix. Read-only handles also cache shard indexes: a
sharded read fetches the index once per shard and process, then one byte range per sample,
which keeps requests per sample low on remote backends.

Handles are per process (see `md.stores.target_store`); nothing here is shared across fork.
fsspec keeps one S3 client per process and thread (its instance cache, cleared in a forked
child), so handles of one process share connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import zipfile
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from zarr.abc.store import ByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.core.sync import sync  # zarr's own sync bridge (used by its sync API)
from zarr.storage import FsspecStore, LocalStore, WrapperStore, ZipStore

from md.errors import StoreError
from md.stores.aio import gather_all

BackendKind = Literal["local", "zip", "fsspec"]

# Chunk keys under the default v3 encoding: "<array path>/c/<i>/<j>/...".
_CHUNK_KEY = re.compile(r"(^|/)c(/\d+)+$")
_INDEX_CACHE_MAX = 1 << 16  # entries; an index is 16 bytes per chunk + 4
_S3_SCHEMES = ("s3", "s3a")
_ZIP_METHODS = {
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}
# Backend exceptions by class name (botocore / aiohttp come with s3fs, which is optional).
_NO_CREDENTIALS = frozenset(
    ("NoCredentialsError", "PartialCredentialsError", "ProfileNotFound", "CredentialRetrievalError")
)
_UNREACHABLE = frozenset(
    (
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ClientConnectorError",
        "ServerDisconnectedError",
    )
)
_CREDENTIALS_FIX = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE for a ~/.aws profile"
)
_ENDPOINT_FIX = (
    "check AWS_ENDPOINT_URL (or FSSPEC_S3_ENDPOINT_URL) for an S3-compatible server, "
    "and the network"
)


class StoreAccessError(StoreError):
    """The backend refused or could not serve a request: no credentials, endpoint
    unreachable, access denied, no such bucket. Not a finding about the store's data."""


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
    return CheckedStore(store, cache_index=not writable, url=loc.url)


def _open_zip(loc: Location, writable: bool) -> Store:
    if writable:
        raise StoreError(
            f"{loc.path} is a packed .zip store (read-only): write into a directory store, "
            "then `md store pack DIR OUT.zip`"
        )
    if not zipfile.is_zipfile(loc.path):
        raise StoreError(f"{loc.path} is not a readable zip file: re-pack it with `md store pack`")
    # ZipStore would inflate a compressed member whole on every read (a small zip can hold
    # gigabytes of zeros); stored members whose sizes agree read no more than the file holds.
    # One pass over the central directory, before any member is read.
    try:
        with zipfile.ZipFile(loc.path) as zf:
            for info in zf.infolist():
                check_stored_member(loc.path, info)
    except zipfile.BadZipFile as e:
        raise StoreError(
            f"{loc.path} is not a readable zip file ({e}): re-pack it with `md store pack`"
        ) from None
    return ZipStore(loc.path, mode="r")


def check_stored_member(zip_path: str | os.PathLike[str], info: zipfile.ZipInfo) -> None:
    """Refuse a member that is not as `md store pack` writes it: compressed, encrypted, or
    with a compressed size that differs from its size (stored data is its own size).
    Looks at the central directory only: nothing is read."""
    name = info.filename
    if info.compress_type != zipfile.ZIP_STORED:
        method = _ZIP_METHODS.get(info.compress_type, f"method {info.compress_type}")
        raise StoreError(
            f"{zip_path}: member {name} is compressed ({method}); `md store pack` writes "
            "uncompressed zips, read in place: re-pack the store with `md store pack`"
        )
    if info.flag_bits & 0x1:
        raise StoreError(
            f"{zip_path}: member {name} is encrypted; `md store pack` writes unencrypted zips: "
            "re-pack the store with `md store pack`"
        )
    if info.file_size != info.compress_size:
        raise StoreError(
            f"{zip_path}: member {name} declares {info.file_size} bytes but stores "
            f"{info.compress_size} (the zip is damaged or forged): re-pack the store with "
            "`md store pack`"
        )


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower()


def _open_fsspec(loc: Location, writable: bool) -> Store:
    scheme = _scheme(loc.url)
    parts = _s3_parts(loc.url)
    if writable and parts is not None and not parts[1]:
        # Replacing a store deletes its prefix: never a whole bucket.
        raise StoreError(
            f"{loc.url}: give the store a prefix inside the bucket, "
            f"e.g. {loc.url.rstrip('/')}/run.zarr"
        )
    options: dict[str, Any] = {}
    if scheme in _S3_SCHEMES:
        # No listings cache: "exists" and listings must see other writers' objects. One
        # transfer per object: s3fs otherwise sends a HEAD before every whole-object GET to
        # decide whether to split it (only objects > 50 MiB would be split; shards are less).
        options = {"use_listings_cache": False, "max_concurrency": 1}
    try:
        return FsspecStore.from_url(loc.url, storage_options=options, read_only=not writable)
    except ImportError as e:
        if scheme in _S3_SCHEMES:
            raise StoreError(
                f"cannot open {loc.url}: s3fs (fsspec's S3 backend) is not installed; "
                "pip install 'md[s3]'"
            ) from None
        raise StoreError(
            f"cannot open {loc.url}: the fsspec backend for {scheme}:// is not installed ({e})"
        ) from None
    except ValueError as e:
        raise StoreError(
            f"cannot open {loc.url} with fsspec ({e}); use a directory, a .zip or a URL "
            "such as s3://bucket/run.zarr"
        ) from None


def _s3_parts(url: str) -> tuple[str, str] | None:
    """(bucket, key prefix) of an s3:// URL, else None."""
    if _scheme(url) not in _S3_SCHEMES:
        return None
    bucket, _, key = url.partition("://")[2].partition("/")
    return bucket, key.strip("/")


def access_error(url: str, error: BaseException, *, writing: bool = False) -> StoreError | None:
    """A backend failure -> a one-line `StoreAccessError` naming `url` and the fix, or None
    for errors that are not about access (the caller handles those, as for local paths).
    Matched by class name: botocore and aiohttp are optional (installed with s3fs)."""
    if isinstance(error, StoreError):
        return error
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & _NO_CREDENTIALS:
        return StoreAccessError(f"no credentials for {url} ({error}): {_CREDENTIALS_FIX}")
    if names & _UNREACHABLE:
        return StoreAccessError(f"cannot reach the endpoint for {url} ({error}): {_ENDPOINT_FIX}")
    parts = _s3_parts(url)
    if parts is None:
        return None
    if isinstance(error, PermissionError):
        return StoreAccessError(
            f"access to {url} denied ({error}): check the credentials and their permissions "
            f"on the bucket; {_CREDENTIALS_FIX}"
        )
    # S3 has no directories to lack: a write that finds nothing lacks its bucket.
    if isinstance(error, FileNotFoundError) and (writing or "bucket" in str(error).lower()):
        return _no_bucket(url, parts[0])
    if names & {"ClientError", "BotoCoreError", "ClientResponseError"}:
        return StoreAccessError(f"{url}: the object store refused a request ({error})")
    return None


def missing_store_error(loc: Location) -> StoreError:
    """Why there is no readable store at `loc`: no such bucket, or nothing at the prefix."""
    parts = _s3_parts(loc.url)
    if parts is not None:
        bucket = parts[0]
        store = open_backend(loc, writable=False)
        try:
            fs = store.fsspec_fs()
            exists = fs is not None and sync(_guarded(loc.url, fs._exists(bucket)))
        finally:
            store.close()
        if not exists:
            return _no_bucket(loc.url, bucket)
    return StoreError(
        f"no store at {loc.url} (no zarr.json there): check the URL, or create the store "
        "with md cache-teacher"
    )


def _no_bucket(url: str, bucket: str) -> StoreAccessError:
    return StoreAccessError(
        f"{url}: bucket {bucket!r} does not exist at this endpoint: create it, or fix the URL; "
        f"{_ENDPOINT_FIX}"
    )


async def _guarded(url: str, coro: Any) -> Any:
    try:
        return await coro
    except Exception as e:
        err = access_error(url, e)
        if err is None:
            raise
        raise err from None


class CheckedStore(WrapperStore[Store]):
    """Wraps a store: absent chunk objects raise, backend failures become one-line
    `StoreAccessError`s, and read-only handles cache shard indexes.

    Not safe to share across fork (the wrapped store may hold a file handle or a client
    bound to this process's event loop).
    """

    def __init__(self, store: Store, *, cache_index: bool = False, url: str = "") -> None:
        super().__init__(store)
        self.url = url or repr(store)
        self._cache_index = cache_index and store.read_only
        self._index_cache: dict[tuple[str, int], tuple[BufferPrototype, Buffer]] = {}
        # One fetch per shard index even when reads of one shard run concurrently.
        self._index_locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._local_index: dict[tuple[str, int], bytes] = {}  # `read_local`'s index cache
        self._writing = 0  # > 0 while `writing()` is active
        self._zip_sizes: dict[str, int] | None = None
        # Local stores: keys whose path inside the store has no symbolic link (checked once).
        self._local_root = Path(store.root) if isinstance(store, LocalStore) else None
        self._plain_keys: set[str] = set()
        self.requests = 0  # data gets sent to the wrapped store (tests count them)
        self.index_reads = 0  # of those, shard-index fetches (cache misses)
        self.bytes_read = 0  # bytes those gets returned

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Allow absent chunks while writing: zarr 3.1 reads a shard before rewriting it,
        even a whole one, and a new shard is absent. Writers are single-threaded per handle."""
        self._writing += 1
        try:
            yield
        finally:
            self._writing -= 1

    @contextlib.contextmanager
    def _access(self, *, writing: bool = False) -> Iterator[None]:
        """Backend failures (credentials, endpoint, bucket) -> `StoreAccessError`."""
        try:
            yield
        except MissingChunkError:
            raise
        except Exception as e:
            err = access_error(self.url, e, writing=writing)
            if err is None:
                raise
            raise err from None

    def _no_link(self, key: str) -> None:
        """Refuse a key whose path inside a local store passes through a symbolic link: a
        read would follow it to data that is not the store's, and a write would land
        outside the store. (The store's own directory may be a link.)"""
        if self._local_root is None or key in self._plain_keys:
            return
        path = self._local_root
        for part in key.split("/"):
            path = path / part
            if path.is_symlink():
                raise StoreError(
                    f"{self.url}: {path.relative_to(self._local_root).as_posix()} is a "
                    f"symbolic link (to {os.readlink(path)}); a store holds plain files and "
                    "folders: replace the link with a copy of what it points to, or fetch the "
                    "store again"
                )
        self._plain_keys.add(key)

    def _with_store(self, store: Store) -> CheckedStore:
        return type(self)(store, cache_index=self._cache_index, url=self.url)

    def fsspec_fs(self) -> Any:
        """The fsspec filesystem of an fsspec-backed store, else None."""
        return self._store.fs if isinstance(self._store, FsspecStore) else None

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if not (self._cache_index and isinstance(byte_range, SuffixByteRequest)):
            return await self._get(key, prototype, byte_range)
        cache_key = (key, byte_range.suffix)
        lock = self._index_locks.setdefault(cache_key, asyncio.Lock())
        async with lock:  # a concurrent reader of the same shard waits for this fetch
            hit = self._index_cache.get(cache_key)
            if hit is not None and hit[0] == prototype:
                return hit[1]
            self.index_reads += 1
            buf = await self._get(key, prototype, byte_range)
            if buf is not None:
                if len(self._index_cache) >= _INDEX_CACHE_MAX:
                    self._index_cache.clear()
                    self._index_locks = {cache_key: lock}
                self._index_cache[cache_key] = (prototype, buf)
            return buf

    async def _get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None
    ) -> Buffer | None:
        self.requests += 1
        self._no_link(key)
        with self._access():
            buf = await self._store.get(key, prototype, byte_range)
        if buf is None and not self._writing and _CHUNK_KEY.search(key):
            raise MissingChunkError(key)
        self.bytes_read += len(buf) if buf is not None else 0
        return buf

    @property
    def local(self) -> bool:
        """Whether this is a read-only local directory store (`read_local` works)."""
        return self._local_root is not None and self._cache_index

    def read_local(
        self, key: str, ranges: Sequence[tuple[int, int]], index_nbytes: int
    ) -> tuple[bytes, list[bytes]]:
        """A local shard object's last `index_nbytes` bytes (cached like `get`'s suffix reads)
        and the byte ranges ``(start, stop)``, read with ``pread`` in the caller's thread:
        no round trip through zarr's event loop (20-35 ms per 640x512 batch on a busy
        2-core CPU). Counted in `requests` / `index_reads` / `bytes_read` as `get` counts.
        Only for read-only local stores (`local`); a missing object raises MissingChunkError."""
        assert self._local_root is not None
        self._no_link(key)
        path = self._local_root / key
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise MissingChunkError(key) from None
        try:
            cache_key = (key, index_nbytes)
            index = self._local_index.get(cache_key)
            if index is None:
                self.requests += 1
                self.index_reads += 1
                size = os.fstat(fd).st_size
                index = os.pread(fd, index_nbytes, max(0, size - index_nbytes))
                if len(self._local_index) >= _INDEX_CACHE_MAX:
                    self._local_index.clear()
                self._local_index[cache_key] = index
                self.bytes_read += len(index)
            out = []
            for start, stop in ranges:
                self.requests += 1
                data = os.pread(fd, stop - start, start)
                if len(data) != stop - start:
                    raise ValueError(f"{key}: byte range {start}-{stop} beyond the object's end")
                self.bytes_read += len(data)
                out.append(data)
            return index, out
        finally:
            os.close(fd)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [await self.get(key, prototype, rng) for key, rng in key_ranges]

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        for key, prototype, rng in requests:
            yield key, await self.get(key, prototype, rng)

    async def set(self, key: str, value: Buffer) -> None:
        self._no_link(key)
        with self._access(writing=True):
            await self._store.set(key, value)

    # WrapperStore hands these straight to the wrapped store, past the link refusal and the
    # access errors above; zarr reaches them (open_group mode "w-" asks is_empty).
    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self._no_link(key)
        with self._access(writing=True):
            await self._store.set_if_not_exists(key, value)

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        await gather_all(*(self.set(key, value) for key, value in values))

    async def is_empty(self, prefix: str) -> bool:
        with self._access():
            return await self._store.is_empty(prefix)

    async def clear(self) -> None:
        with self._access(writing=True):
            await self._store.clear()

    async def exists(self, key: str) -> bool:
        with self._access():
            return await self._store.exists(key)

    async def delete(self, key: str) -> None:
        with self._access(writing=True):
            await self._store.delete(key)

    async def delete_dir(self, prefix: str) -> None:
        with self._access(writing=True):
            await self._store.delete_dir(prefix)

    async def list(self) -> AsyncIterator[str]:
        with self._access():
            async for key in self._store.list():
                yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        with self._access():
            async for key in self._store.list_prefix(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        with self._access():
            async for key in self._store.list_dir(prefix):
                yield key

    async def getsize(self, key: str) -> int:
        if isinstance(self._store, ZipStore):  # its default would read the whole member
            if self._zip_sizes is None:
                with zipfile.ZipFile(self._store.path) as zf:
                    self._zip_sizes = {i.filename: i.file_size for i in zf.infolist()}
            if key in self._zip_sizes:
                return self._zip_sizes[key]
        self._no_link(key)
        with self._access():
            return await self._store.getsize(key)

    async def getsize_prefix(self, prefix: str) -> int:
        fs = self.fsspec_fs()
        with self._access():
            if fs is None:
                return await self._store.getsize_prefix(prefix)
            # One listing (1 request per 1000 objects on S3) instead of a HEAD per object.
            assert isinstance(self._store, FsspecStore)
            root = f"{self._store.path.rstrip('/')}/{prefix}".rstrip("/")
            try:
                found = await fs._find(root, detail=True)
            except FileNotFoundError:
                return 0
            return sum(int(info.get("size") or 0) for info in found.values())

    def __repr__(self) -> str:
        return f"CheckedStore({self._store!r})"


def stored_bytes(store: Store, prefix: str) -> int:
    """Total size of the objects under `prefix` (e.g. ``features/C3/c/`` for its chunks)."""
    return int(sync(store.getsize_prefix(prefix)))


def key_exists(store: Store, key: str) -> bool:
    """Whether an object exists (one request; used by `verify`, not on the read path)."""
    return bool(sync(store.exists(key)))


def has_objects(store: Store) -> bool:
    """Whether anything lies under the store's root (one listing request on S3)."""

    async def first() -> bool:
        async for _ in store.list_dir(""):
            return True
        return False

    return bool(sync(first()))


def list_keys(store: Store) -> list[str]:
    """Every object key of the store, sorted (one listing request per 1000 keys on S3)."""

    async def collect() -> list[str]:
        return [key async for key in store.list()]

    return sorted(sync(collect()))
