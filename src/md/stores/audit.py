"""The audit log inside a store on object storage (``s3://...``): the ``audit/log.jsonl``
object, appended under the store's writer lease.

Local directory stores need nothing from here: `md.audit` appends to
``STORE/audit/log.jsonl`` under ``flock``. Object stores have no append and no lock, so an
append takes the store's lease (`md.stores.lock.writer_lock`: one writer at a time, a dead
holder's lease expires), reads the object, adds the chained line and writes it back whole.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from md.audit import STORE_LOG, Audited, audited, chain_line
from md.errors import StoreError
from md.stores.backends import open_backend, parse_location
from md.stores.lock import writer_lock

_TRIES, _WAIT_S = 20, 0.5  # how long an append waits for another writer's lease (10 s)


def append_to_store(url: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Append `entry` to the log object of the store at `url`; returns the line written."""
    loc = parse_location(url)
    for attempt in range(_TRIES):
        try:
            lease = writer_lock(loc.url)
            lease.acquire()
        except StoreError:  # another writer holds the store: wait for it, a few times
            if attempt == _TRIES - 1:
                raise
            time.sleep(_WAIT_S)
            continue
        try:
            store = open_backend(loc, writable=True)
            try:
                proto = default_buffer_prototype()
                buf = sync(store.get(STORE_LOG, proto))
                existing = buf.to_bytes() if buf is not None else b""
                line, raw = chain_line(existing, entry)
                sync(store.set(STORE_LOG, proto.buffer.from_bytes(existing + raw)))
            finally:
                store.close()
        finally:
            lease.release()
        return line
    raise AssertionError("unreachable")


def read_store_log(url: str) -> bytes:
    """The log object's bytes (b"" when the store has none)."""
    loc = parse_location(url)
    store = open_backend(loc, writable=False)
    try:
        buf = sync(store.get(STORE_LOG, default_buffer_prototype()))
        return buf.to_bytes() if buf is not None else b""
    finally:
        store.close()


def audited_store(
    command: str,
    inputs: Mapping[str, Any] | None = None,
    outputs: Mapping[str, Any] | None = None,
    *,
    argv: Sequence[str] | None = None,
    logs: Sequence[str | os.PathLike[str]] = (),
) -> AbstractContextManager[Audited]:
    """`md.audit.audited` that also appends to the log inside outputs on object storage."""
    return audited(command, inputs, outputs, argv=argv, logs=logs, remote=_remote)


def _remote(url: str, entry: dict[str, Any]) -> None:
    append_to_store(url, entry)


__all__ = ["append_to_store", "audited_store", "read_store_log"]
