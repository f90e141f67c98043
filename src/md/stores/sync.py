"""`sync_store`: copy a store to another place over a link that drops, resumably.

SRC (directory, packed zip or fsspec URL) is compared object by object with DST (directory
or fsspec URL) by sha256; only objects missing at DST or differing there are copied, one at
a time (a cut loses at most the object in flight), optionally under a bandwidth limit.

What DST looks like meanwhile (the marker ``md_sync.json`` at its root):

1. the marker says ``"state": "in-progress"`` (with SRC's schema and identity) before the
   first byte is copied, and DST's root ``zarr.json`` (the group metadata that makes it a
   store) is removed: a half-synced DST is never opened as a store;
2. every other object is copied, objects DST has and SRC has not are deleted, and every
   object is read back and checked against SRC's sha256;
3. the root ``zarr.json`` is copied, then the marker is rewritten last with
   ``"state": "complete"`` and the per-object sha256 manifest.

Rerunning after a cut (kill -9, a dropped link) hashes what DST holds and copies only what
is still missing or wrong; an object corrupted at DST later is replaced the same way. A DST
that holds (or was being synced from) a store of another schema or run is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from md.errors import StoreError
from md.progress import progress_bar
from md.stores.aio import gather_all
from md.stores.backends import CheckedStore, Location, list_keys, open_backend, parse_location
from md.stores.pack import MANIFEST_NAME
from md.stores.schema import StoreSchema
from md.stores.target_store import open_store

SYNC_MARKER = "md_sync.json"
SYNC_FORMAT = "md-store-sync"
SYNC_VERSION = 1
ROOT = "zarr.json"
_WINDOW = 16  # objects hashed at once (reads only; copies go one at a time)


@dataclass
class SyncResult:
    """What one `sync_store` call did."""

    src: str
    dst: str
    objects_total: int = 0  # objects of SRC
    objects_copied: int = 0
    objects_skipped: int = 0  # already identical at DST
    objects_deleted: int = 0  # at DST only
    bytes_total: int = 0  # bytes of SRC
    bytes_copied: int = 0
    seconds: float = 0.0
    verified: bool = False
    copied_keys: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sync_store(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    bandwidth_limit: float | None = None,
    allow_incomplete: bool = False,
    progress: bool = False,
    on_copy: Callable[[str, int], None] | None = None,
) -> SyncResult:
    """Make DST an exact, verified copy of store SRC, copying only what DST lacks.

    `bandwidth_limit` is in bytes per second (None: as fast as the link goes). `on_copy`
    is called after each object lands at DST with its key and size (audit hooks, tests).
    An incomplete SRC is refused unless `allow_incomplete`.
    """
    t0 = time.monotonic()
    sloc, dloc = parse_location(src), parse_location(dst)
    if dloc.kind == "zip":
        raise StoreError(
            f"{dloc.url}: a .zip is written by `md store pack`, not synced into; "
            "sync into a directory or an s3:// prefix"
        )
    if _same_place(sloc, dloc):
        raise StoreError(f"{sloc.url}: SRC and DST are the same store; choose another DST")
    if bandwidth_limit is not None and bandwidth_limit <= 0:
        raise StoreError(f"bandwidth limit must be > 0 bytes/s (got {bandwidth_limit})")
    with open_store(sloc.url) as ts:  # refuses a non-store SRC in one line
        schema = ts.schema
        identity = ts.attrs.get("identity")
        missing = ts.missing_shards()
    if missing and not allow_incomplete:
        raise StoreError(
            f"{sloc.url}: shards {missing} were never written; finish the store first "
            "(md cache-teacher resumes), or pass --allow-incomplete"
        )
    result = SyncResult(src=sloc.url, dst=dloc.url)
    sstore = open_backend(sloc, writable=False)
    dstore = open_backend(dloc, writable=True)
    try:
        keys = [k for k in list_keys(sstore) if _is_store_object(k)]
        dkeys = [k for k in list_keys(dstore) if k != SYNC_MARKER]
        _check_dst(dloc, dstore, dkeys, schema, identity)
        manifest = _hashes(sstore, keys, sloc.url)
        result.objects_total = len(keys)
        result.bytes_total = sum(size for _, size in manifest.values())
        present = set(dkeys)
        have = _hashes(dstore, [k for k in keys if k in present], dloc.url)
        todo = [k for k in keys if have.get(k) != manifest[k]]
        extra = sorted(set(dkeys) - set(keys))
        marker = _read_marker(dstore)
        done = not todo and not extra and marker is not None and marker.get("state") == "complete"
        if not done:
            _start(dstore, sloc.url, schema, identity, root_stale=bool(todo))
            if ROOT not in todo and todo:
                todo.append(ROOT)  # removed above so DST does not look complete meanwhile
            _copy(sstore, dstore, todo, manifest, result, bandwidth_limit, progress, on_copy)
            for key in extra:
                sync(dstore.delete(key))
            result.objects_deleted = len(extra)
        result.objects_skipped = result.objects_total - result.objects_copied
        _verify(dstore, keys, manifest, dloc.url)
        result.verified = True
        if not done:
            _write_json(dstore, SYNC_MARKER, _marker(sloc.url, schema, identity, manifest))
    finally:
        sstore.close()
        dstore.close()
    result.seconds = time.monotonic() - t0
    return result


def _same_place(a: Location, b: Location) -> bool:
    if a.kind == "fsspec" or b.kind == "fsspec":
        return a.url.rstrip("/") == b.url.rstrip("/")
    return os.path.realpath(a.path) == os.path.realpath(b.path)


def _is_store_object(key: str) -> bool:
    """Objects of the store proper: not a pack manifest, sync marker or writer temp file."""
    return key not in (MANIFEST_NAME, SYNC_MARKER) and not key.endswith(".partial")


def _check_dst(
    loc: Location, store: CheckedStore, dkeys: Sequence[str], schema: StoreSchema, identity: Any
) -> None:
    """Refuse a DST that holds another store, a half-sync of another store, or non-store
    objects; an empty DST, or one holding (part of) this store, is fine."""
    marker = _read_marker(store)
    if marker is not None:
        theirs, their_id, what = marker.get("schema"), marker.get("identity"), "a sync of"
    elif ROOT in dkeys:
        attrs = _read_json(store, ROOT, loc.url).get("attributes", {})
        theirs, their_id, what = attrs.get("schema"), attrs.get("identity"), "a store with"
    elif dkeys:
        raise StoreError(
            f"{loc.url} holds objects but no store and no sync marker: refusing to sync "
            "into it; delete it or choose another DST"
        )
    else:
        return
    if theirs != schema.to_json():
        raise StoreError(
            f"{loc.url} holds {what} another schema than the source's "
            f"({_schema_text(theirs)} vs {_schema_text(schema.to_json())}): sync into a new "
            "DST, or delete it first"
        )
    if their_id != identity:
        raise StoreError(
            f"{loc.url} holds {what} another run (identity {str(their_id)[:12]}... vs "
            f"{str(identity)[:12]}...): sync into a new DST, or delete it first"
        )


def _schema_text(s: Any) -> str:
    if not isinstance(s, dict):
        return "no schema"
    levels = ",".join(str(lv.get("name")) for lv in s.get("levels", []) if isinstance(lv, dict))
    return f"n={s.get('n')} codec={s.get('codec')} levels={levels}"


def _hashes(store: CheckedStore, keys: Sequence[str], url: str) -> dict[str, tuple[str, int]]:
    """{key: (sha256, size)} of the objects `keys` present in `store` (absent ones left out)."""
    out: dict[str, tuple[str, int]] = {}
    for start in range(0, len(keys), _WINDOW):
        window = keys[start : start + _WINDOW]
        for key, blob in zip(window, _get_many(store, window), strict=True):
            if blob is not None:
                out[key] = (hashlib.sha256(blob).hexdigest(), len(blob))
    return out


def _get_many(store: CheckedStore, keys: Sequence[str]) -> list[bytes | None]:
    proto = default_buffer_prototype()

    async def get_all() -> list[bytes | None]:
        bufs = await gather_all(*(store.get(k, proto) for k in keys))
        return [None if b is None else b.to_bytes() for b in bufs]

    with store.writing():  # an absent chunk is an answer here, not an error
        return sync(get_all())


def _put(store: CheckedStore, key: str, blob: bytes) -> None:
    sync(store.set(key, default_buffer_prototype().buffer.from_bytes(blob)))


def _start(
    store: CheckedStore, src: str, schema: StoreSchema, identity: Any, *, root_stale: bool
) -> None:
    """Mark DST in progress, then remove its root metadata: from here until the end it does
    not open as a store."""
    _write_json(
        store,
        SYNC_MARKER,
        {
            "format": SYNC_FORMAT,
            "version": SYNC_VERSION,
            "state": "in-progress",
            "source": src,
            "schema": schema.to_json(),
            "identity": identity,
        },
    )
    if root_stale:
        sync(store.delete(ROOT))


def _copy(
    src: CheckedStore,
    dst: CheckedStore,
    todo: Sequence[str],
    manifest: dict[str, tuple[str, int]],
    result: SyncResult,
    limit: float | None,
    progress: bool,
    on_copy: Callable[[str, int], None] | None,
) -> None:
    """Copy `todo` one object at a time, the root metadata last, under `limit` bytes/s."""
    order = [k for k in todo if k != ROOT] + [k for k in todo if k == ROOT]
    total = sum(manifest[k][1] for k in order)
    bar = progress_bar(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="sync", disable=not progress
    )
    started = time.monotonic()
    try:
        for key in order:
            (blob,) = _get_many(src, [key])
            if blob is None or hashlib.sha256(blob).hexdigest() != manifest[key][0]:
                raise StoreError(
                    f"{result.src}: object {key} changed or vanished during the sync; "
                    "rerun when no writer is using the source"
                )
            _put(dst, key, blob)
            result.objects_copied += 1
            result.bytes_copied += len(blob)
            result.copied_keys.append(key)
            bar.update(len(blob))
            if on_copy is not None:
                on_copy(key, len(blob))
            if limit is not None:  # sleep until the average rate is back under the limit
                ahead = result.bytes_copied / limit - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        bar.close()


def _verify(
    store: CheckedStore, keys: Sequence[str], manifest: dict[str, tuple[str, int]], url: str
) -> None:
    """Read every object back from DST and check it against SRC's sha256."""
    got = _hashes(store, keys, url)
    bad = [k for k in keys if got.get(k) != manifest[k]]
    if bad:
        raise StoreError(
            f"{url}: {len(bad)} objects differ from the source after the sync "
            f"(first: {bad[0]}); rerun `md store sync`, it copies them again"
        )


def _marker(
    src: str, schema: StoreSchema, identity: Any, manifest: dict[str, tuple[str, int]]
) -> dict[str, Any]:
    return {
        "format": SYNC_FORMAT,
        "version": SYNC_VERSION,
        "state": "complete",
        "source": src,
        "schema": schema.to_json(),
        "identity": identity,
        "files": {k: {"sha256": h, "size": n} for k, (h, n) in sorted(manifest.items())},
    }


def _read_marker(store: CheckedStore) -> dict[str, Any] | None:
    (blob,) = _get_many(store, [SYNC_MARKER])
    if blob is None:
        return None
    try:
        value = json.loads(blob)
    except ValueError:
        return None  # a marker cut mid-write: treated as absent (the sync starts over)
    return value if isinstance(value, dict) and value.get("format") == SYNC_FORMAT else None


def _read_json(store: CheckedStore, key: str, url: str) -> dict[str, Any]:
    (blob,) = _get_many(store, [key])
    try:
        value = json.loads(blob or b"{}")
    except ValueError as e:
        raise StoreError(f"{url}: {key} is not JSON ({e}); delete DST and sync again") from None
    return value if isinstance(value, dict) else {}


def _write_json(store: CheckedStore, key: str, value: dict[str, Any]) -> None:
    _put(store, key, json.dumps(value, indent=1, sort_keys=True).encode())
