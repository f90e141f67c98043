"""`pack` a store into one shippable zip, `unpack` it safely, check its manifest.

`pack` reads a directory store or an fsspec URL (``s3://bucket/run.zarr``) and writes a local
zip; `unpack` writes into a new directory or an empty fsspec prefix. The zip is ZIP_STORED (chunks are already zstd-compressed; stored members keep byte-range
reads cheap, so the zip is read directly as a read-only store) with fixed timestamps and
sorted members, so packing the same store twice gives the same bytes. A manifest
(``md_manifest.json``: sha256 and size per member) goes in last; `unpack` and `verify` check it.
`unpack` refuses absolute paths, ``..``, backslashes, drive letters, links, members not in
the manifest, and extracts into a temporary sibling that is renamed only when all is well.
Before reading any member, `unpack` and `verify` check the central directory: every member
stored (not compressed: a small zip could inflate to gigabytes), its declared size that of
its manifest entry, the manifest itself no bigger than its entries need. Members are then
hashed and copied in 1 MiB reads, never read past their manifest size, so memory stays
bounded whatever the zip claims.
Object stores have no rename: there `unpack` uploads the root ``zarr.json`` last (until it
lands the prefix is no store, and `md store info` says so), and removes what it uploaded if
it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from md.errors import StoreError
from md.stores.aio import gather_all
from md.stores.backends import (
    CheckedStore,
    Location,
    check_stored_member,
    has_objects,
    key_exists,
    list_keys,
    open_backend,
    parse_location,
)
from md.stores.target_store import open_store

MANIFEST_NAME = "md_manifest.json"
MANIFEST_FORMAT = "md-store-pack"
MANIFEST_VERSION = 1
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: reproducible zips
_DRIVE = re.compile(r"^[A-Za-z]:")
_WINDOW = 16  # objects in flight at once when reading from / writing to an object store
_WINDOW_BYTES = 256 << 20  # bytes of objects held at once to upload (or one bigger object)
_READ_CHUNK = 1 << 20  # bytes per read while hashing / copying a member
# A manifest entry is its name (JSON-escaped: <= 12 bytes per character) plus ~130 bytes of
# sha256, size and indentation; a manifest bigger than this allows is refused unread.
_MANIFEST_BASE, _MANIFEST_PER_ENTRY, _MANIFEST_PER_CHAR = 4096, 256, 12


def pack(
    url: str | os.PathLike[str],
    zip_path: str | os.PathLike[str],
    *,
    allow_incomplete: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Pack the store at `url` (directory or fsspec URL) into local `zip_path`; returns a
    summary (files, bytes). Refuses an incomplete store unless `allow_incomplete`, and an
    existing zip unless `force`.
    """
    loc = parse_location(url)
    if loc.kind == "zip":
        raise StoreError(f"{loc.url} is packed already: ship it as it is, or unpack it first")
    out = Path(zip_path)
    with open_store(loc.url) as ts:  # raises if it is not a readable store
        missing = ts.missing_shards()
    if missing and not allow_incomplete:
        raise StoreError(
            f"{loc.url}: shards {missing} were never written; finish the store first, or pass --allow-incomplete"
        )
    _check_output(loc, out, force)
    tmp = out.with_name(out.name + ".partial")
    entries: dict[str, dict[str, Any]] = {}
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for rel, data in _store_objects(loc):
                zf.writestr(_member(rel), data)
                entries[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "files": entries}
            zf.writestr(_member(MANIFEST_NAME), json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "zip": str(out),
        "files": len(entries),
        "bytes": out.stat().st_size,
        "incomplete_shards": missing,
    }


def _check_output(loc: Location, out: Path, force: bool) -> None:
    if out.suffix.lower() != ".zip":
        raise StoreError(
            f"{out}: the packed store must end in .zip (that is how it is opened later)"
        )
    if loc.kind == "local" and out.resolve().is_relative_to(Path(loc.path).resolve()):
        raise StoreError(f"{out} lies inside the store {loc.path}: write the zip elsewhere")
    if out.exists() and not force:
        raise StoreError(f"{out} already exists: remove it or pass --force")


def _store_objects(loc: Location) -> Iterator[tuple[str, bytes]]:
    """(relative key, bytes) of every object of the store, sorted by key."""
    if loc.kind == "local":
        root = Path(loc.path)
        for rel in _store_files(root):
            yield rel, (root / rel).read_bytes()
        return
    store = open_backend(loc, writable=False)
    try:
        keys = [k for k in list_keys(store) if k != MANIFEST_NAME]
        for start in range(0, len(keys), _WINDOW):  # a window of gets in flight at once
            window = keys[start : start + _WINDOW]
            yield from zip(window, sync(_get_all(store, loc, window)), strict=True)
    finally:
        store.close()


async def _get_all(store: CheckedStore, loc: Location, keys: Sequence[str]) -> list[bytes]:
    proto = default_buffer_prototype()
    bufs = await gather_all(*(store.get(k, proto) for k in keys))
    for key, buf in zip(keys, bufs, strict=True):
        if buf is None:
            raise StoreError(f"{loc.url}: object {key} vanished while packing; pack again")
    return [buf.to_bytes() for buf in bufs if buf is not None]


def _store_files(root: Path) -> list[str]:
    """Relative POSIX paths of the store's files, sorted; writers' temp files are skipped."""
    files = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise StoreError(f"{path}: links are not packed; replace it with a regular file")
        if path.is_file() and not path.name.endswith(".partial") and rel != MANIFEST_NAME:
            files.append(rel)
    return sorted(files)


def _member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16  # regular file, rw-r--r--
    return info


def unpack(zip_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path | str:
    """Extract a packed store into `out_dir` after checking every member: a new or empty
    directory (returned as a Path), or an empty fsspec prefix such as ``s3://bucket/run.zarr``
    (its URL is returned)."""
    src, loc = Path(zip_path), parse_location(out_dir)
    if loc.kind == "zip":
        raise StoreError(
            f"{loc.url}: unpack into a directory or a URL such as s3://..., not a .zip"
        )
    if loc.kind == "fsspec":
        _unpack_to_url(src, loc)
        return loc.url
    dest = Path(loc.path)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StoreError(f"{dest} exists and is not an empty directory: choose a new directory")
    tmp = dest.with_name(f".{dest.name}.unpack-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _open_zip(src) as zf:
            entries = _checked_members(zf, src)
            for name, want in entries.items():
                # Straight into the temporary tree: a member that fails its check is
                # removed with the tree, and nothing is renamed into place.
                target = tmp.joinpath(*PurePosixPath(name).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as out:
                    _copy_member(zf, src, name, want, out.write)
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _unpack_to_url(src: Path, loc: Location) -> None:
    """Upload the checked members under an empty prefix, the root zarr.json last."""
    store = open_backend(loc, writable=True)
    uploaded: list[str] = []
    try:
        if key_exists(store, "zarr.json") or has_objects(store):
            raise StoreError(f"{loc.url} is not empty: unpack into a new prefix")
        with _open_zip(src) as zf:
            entries = _checked_members(zf, src)
            names = sorted(entries, key=lambda n: n == "zarr.json")  # stable: root last
            sizes = {name: int(entries[name]["size"]) for name in names}
            for window in _windows(names, sizes):
                # store.set takes whole objects: each is checked (its manifest size bounds
                # it) before the window is uploaded, and a window holds <= _WINDOW_BYTES.
                blobs = [_member_bytes(zf, src, name, entries[name]) for name in window]
                sync(_set_all(store, window, blobs))
                uploaded += window
    except BaseException:
        _remove_quietly(store, uploaded)
        raise
    finally:
        store.close()


def _windows(
    names: Sequence[str],
    sizes: Mapping[str, int],
    *,
    max_objects: int = _WINDOW,
    max_bytes: int = _WINDOW_BYTES,
) -> Iterator[list[str]]:
    """`names` in order, in batches of at most `max_objects` objects and `max_bytes` bytes
    (an object bigger than that goes alone): what an upload holds in memory at once."""
    window: list[str] = []
    held = 0
    for name in names:
        if window and (len(window) == max_objects or held + sizes[name] > max_bytes):
            yield window
            window, held = [], 0
        window.append(name)
        held += sizes[name]
    if window:
        yield window


async def _set_all(store: CheckedStore, keys: Sequence[str], blobs: Sequence[bytes]) -> None:
    proto = default_buffer_prototype()
    await gather_all(
        *(store.set(k, proto.buffer.from_bytes(b)) for k, b in zip(keys, blobs, strict=True))
    )


def _remove_quietly(store: CheckedStore, keys: Sequence[str]) -> None:
    """Best effort: take back what a failed unpack uploaded (the backend may be gone)."""
    if not keys:
        return

    async def remove() -> None:
        await asyncio.gather(*(store.delete(k) for k in keys), return_exceptions=True)

    with contextlib.suppress(Exception):
        sync(remove())


def check_manifest(zip_path: str | os.PathLike[str]) -> list[str]:
    """Problems with a packed zip's members against its manifest ([] if all is well)."""
    src = Path(zip_path)
    try:
        with _open_zip(src) as zf:
            entries = _checked_members(zf, src)
            problems = []
            for name, want in entries.items():
                try:
                    _copy_member(zf, src, name, want, _discard)
                except StoreError as e:
                    problems.append(str(e))
            return problems
    except StoreError as e:
        return [str(e)]


def _open_zip(src: Path) -> zipfile.ZipFile:
    if not zipfile.is_zipfile(src):
        raise StoreError(f"{src} is not a readable zip file: re-pack it with `md store pack`")
    try:
        return zipfile.ZipFile(src, "r")
    except zipfile.BadZipFile as e:
        raise StoreError(
            f"{src} is not a readable zip file ({e}): re-pack it with `md store pack`"
        ) from None


def _checked_members(zf: zipfile.ZipFile, src: Path) -> dict[str, dict[str, Any]]:
    """Safe, stored member names that match the manifest exactly, each declaring its
    manifest size -> their manifest entries. Reads no member but the manifest, and that only
    once its own declared size is known to be sane."""
    infos = [info for info in zf.infolist() if not info.is_dir()]
    names = [info.filename for info in infos]
    for info in zf.infolist():
        _check_name(src, info)
        check_stored_member(src, info)
    if len(set(names)) != len(names):
        raise StoreError(f"{src}: duplicate member names; re-pack the store")
    if MANIFEST_NAME not in names:
        raise StoreError(
            f"{src}: no {MANIFEST_NAME} (not made by `md store pack`); re-pack the store"
        )
    files = _read_manifest(zf, src, infos)
    members = set(names) - {MANIFEST_NAME}
    extra, lost = sorted(members - set(files)), sorted(set(files) - members)
    if extra or lost:
        raise StoreError(
            f"{src}: members not in the manifest {extra[:5]}, missing members {lost[:5]}; re-pack the store"
        )
    for info in infos:
        want = files.get(info.filename)
        if want is not None and info.file_size != want["size"]:
            raise StoreError(
                f"{src}: member {info.filename} declares {info.file_size} bytes, its manifest "
                f"entry {want['size']}; re-send the zip, or re-pack the store"
            )
    return {name: files[name] for name in sorted(members)}


def _check_name(src: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename
    parts = PurePosixPath(name).parts
    unsafe = (
        name.startswith(("/", "\\"))
        or "\\" in name
        or _DRIVE.match(name)
        or ".." in parts
        or "\x00" in name
        or stat.S_ISLNK(info.external_attr >> 16)
    )
    if unsafe:
        raise StoreError(f"{src}: refusing unsafe member {name!r} (absolute path, '..', or link)")


def _read_manifest(
    zf: zipfile.ZipFile, src: Path, infos: Sequence[zipfile.ZipInfo]
) -> dict[str, dict[str, Any]]:
    """The manifest's entries, read only if its declared size fits the members it lists."""
    cap = _MANIFEST_BASE + sum(
        _MANIFEST_PER_ENTRY + _MANIFEST_PER_CHAR * len(i.filename) for i in infos
    )
    declared = zf.getinfo(MANIFEST_NAME).file_size
    if declared > cap:
        raise StoreError(
            f"{src}: {MANIFEST_NAME} declares {declared} bytes, more than {cap} for "
            f"{len(infos)} members; re-pack the store with `md store pack`"
        )
    try:
        manifest = json.loads(_member_bytes(zf, src, MANIFEST_NAME, {"size": declared}))
        ok = manifest.get("format") == MANIFEST_FORMAT and isinstance(manifest.get("files"), dict)
        ok = ok and all(map(_entry_ok, manifest["files"].values()))
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise StoreError(f"{src}: {MANIFEST_NAME} is malformed; re-pack the store")
    if int(manifest.get("version", 0)) > MANIFEST_VERSION:
        raise StoreError(
            f"{src}: manifest version {manifest['version']} is newer than this md: upgrade md"
        )
    return dict(manifest["files"])


def _entry_ok(entry: Any) -> bool:
    """A manifest entry: {"sha256": str, "size": int >= 0}."""
    if not isinstance(entry, dict):
        return False
    size = entry.get("size")
    sized = isinstance(size, int) and not isinstance(size, bool) and size >= 0
    return sized and isinstance(entry.get("sha256"), str)


def _copy_member(
    zf: zipfile.ZipFile,
    src: Path,
    name: str,
    want: Mapping[str, Any],
    write: Callable[[bytes], object],
) -> None:
    """Pass member `name` to `write` in `_READ_CHUNK` pieces, hashing them; refuse it if
    its size or sha256 is not `want`'s (the sha256 is skipped when `want` has none, as
    for the manifest). Reads at most one byte past the manifest size: a reader that yields
    more than the central directory declared is caught without reading the rest."""
    limit = int(want["size"]) + 1
    digest, got = hashlib.sha256(), 0
    try:
        with zf.open(name) as member:
            while got < limit and (piece := member.read(min(_READ_CHUNK, limit - got))):
                digest.update(piece)
                write(piece)
                got += len(piece)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise StoreError(f"{src}: member {name} is unreadable ({e}); re-send the zip") from None
    sha = want.get("sha256")
    if got != want["size"] or (sha is not None and digest.hexdigest() != sha):
        raise StoreError(
            f"{src}: member {name} does not match its manifest sha256 (corrupt in transit); re-send the zip"
        )


def _member_bytes(zf: zipfile.ZipFile, src: Path, name: str, want: Mapping[str, Any]) -> bytes:
    """The whole (checked) member, for callers that need it in one piece."""
    pieces: list[bytes] = []
    _copy_member(zf, src, name, want, pieces.append)
    return b"".join(pieces)


def _discard(piece: bytes) -> None:
    """A `write` for `_copy_member` that only checks."""
