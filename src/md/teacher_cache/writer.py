"""A background thread that encodes and writes whole shards while the teacher computes.

The teacher runs on the caller's thread and hands each finished shard to `ShardWriter.submit`;
one writer thread quantizes, compresses (zstd + crc32c) and stores it with
`TargetStore.write_shard`. The queue is bounded (`max_queued` shards), so a slow disk slows
the teacher down instead of filling memory.

Invariants:

- only the writer thread writes through the store handle while the writer is open;
- a shard is stored completely (``written`` set last, by `write_shard`) or not at all;
- leaving the ``with`` block waits until every submitted shard is written, also when the
  caller is leaving because of an exception (an interrupt keeps the finished work);
- an exception in the writer thread (a store error, an interrupt) is re-raised in the
  caller's thread, at the next `submit` or on leaving the block. Shards queued behind the
  failed one are dropped and stay unwritten, so a rerun recomputes them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import numpy as np
from zarr.core.sync import sync

from md.stores import TargetStore


@dataclass
class Shard:
    """One shard's targets: arrays with a leading axis of the shard's sample count."""

    index: int
    arrays: dict[str, np.ndarray]
    sample_ids: list[str]
    groups: list[str]


_STOP = object()  # queue sentinel: no more shards


class ShardWriter:
    """``with ShardWriter(store) as w: w.submit(shard)`` — see the module docstring."""

    def __init__(
        self,
        store: TargetStore,
        max_queued: int = 2,
        on_written: Callable[[Shard, int], None] | None = None,
    ) -> None:
        self.store = store
        self.on_written = on_written  # called on the writer thread with (shard, stored bytes)
        self.shards_written = 0
        self.bytes_written = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, max_queued))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="md-shard-writer", daemon=True)
        self._thread.start()

    def submit(self, shard: Shard) -> None:
        """Queue a computed shard; blocks while the queue is full; raises the writer's error."""
        self._put(shard)

    def close(self) -> None:
        """Wait until every submitted shard is written; re-raise the writer's error."""
        if self._thread.is_alive():
            self._put(_STOP)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        # The caller is failing: still store the shards it finished, then let its own
        # exception (which may be the writer's, re-raised by submit) propagate.
        try:
            self.close()
        except BaseException as writer_error:
            if writer_error is not exc:
                exc.__context__ = writer_error

    def _put(self, item: object) -> None:
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def _loop(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            assert isinstance(item, Shard)
            try:
                self.store.write_shard(item.index, item.arrays, item.sample_ids, item.groups)
                nbytes = shard_stored_bytes(self.store, item.index)
                self.shards_written += 1
                self.bytes_written += nbytes
                if self.on_written is not None:
                    self.on_written(item, nbytes)
            except BaseException as e:  # incl. KeyboardInterrupt: handed to the caller
                self._error = e
                return


def shard_stored_bytes(store: TargetStore, k: int) -> int:
    """Stored bytes of shard k over every array: one object per array (a shard of per-sample
    chunks, or one chunk of the whole shard), so this is one size lookup per array."""
    total = 0
    for name in store.raw_names():
        arr = store.raw_array(name)
        key = arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))
        total += int(sync(arr.store_path.store.getsize(f"{arr.store_path.path}/{key}")))
    return total
