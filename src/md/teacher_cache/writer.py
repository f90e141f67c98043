"""A background writer that encodes and writes whole shards while the teacher computes.

Two kinds with one contract: `ShardWriter` (a thread) and `ProcessShardWriter` (a forked
child process, the default where it can run: Linux, outside daemonic processes such as Dask
workers; `make_writer`). The zarr write path is Python-heavy, so on a thread it holds the GIL
against the teacher's thread: writing 8 shards beside the forward took as long as doing the
two one after the other (1.22-1.47 s vs 1.21-1.47 s serial, 0.80-0.87 s forward alone);
with the writer in its own process the same took 0.88-1.03 s. (Measured before
`write_shard` encoded shard objects in one pass, `md.stores.shard_object`, which cut a
shard's write ~4x; the process still wins, 0.74-0.80x vs 0.68-0.75x of forward-only.)

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
  failed one are dropped and stay unwritten, so a rerun recomputes them;
- the writer process dies with the process that started it (SIGKILL, SIGTERM, a crash): it
  never lives on re-parented, and never writes a shard after its run is gone.
"""

from __future__ import annotations

import abc
import ctypes
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import numpy as np

from md.errors import StoreError
from md.stores import TargetStore


@dataclass
class Shard:
    """One shard's targets: arrays with a leading axis of the shard's sample count."""

    index: int
    arrays: dict[str, np.ndarray]
    sample_ids: list[str]
    groups: list[str]


class _Stop:
    """The queue sentinel of both writers: no more shards. It pickles by reference to the
    module's one instance, so the process writer's child sees ``item is _STOP`` too."""

    def __reduce__(self) -> str:
        return "_STOP"

    def __repr__(self) -> str:
        return "_STOP"


_STOP = _Stop()


class _WriterProtocol(abc.ABC):
    """What both writers share: the ``with`` semantics and the bounded, error-checking put.

    Subclasses set ``_queue`` (a bounded queue with ``put(item, timeout=)``) and ``_error``,
    and implement `close` and `_alive`.
    """

    _queue: Any
    _error: BaseException | None

    @abc.abstractmethod
    def close(self) -> None:
        """Wait until every submitted shard is written; re-raise the writer's error."""

    @abc.abstractmethod
    def _alive(self) -> bool:
        """Whether the writer (thread or process) still takes shards."""

    def __enter__(self) -> Any:
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
        """Queue `item`, waiting while the queue is full; raise the writer's error; give up
        quietly if the writer is gone (`close` reports why)."""
        while True:
            if self._error is not None:
                raise self._error
            if not self._alive():
                return
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue


class ShardWriter(_WriterProtocol):
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

    def _alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            assert isinstance(item, Shard)
            try:
                nbytes = self.store.write_shard(
                    item.index, item.arrays, item.sample_ids, item.groups
                )
                self.shards_written += 1
                self.bytes_written += nbytes
                if self.on_written is not None:
                    self.on_written(item, nbytes)
            except BaseException as e:  # incl. KeyboardInterrupt: handed to the caller
                self._error = e
                return


WriterKind = Literal["auto", "thread", "process"]


def make_writer(
    store: TargetStore,
    max_queued: int = 2,
    on_written: Callable[[Shard, int], None] | None = None,
    kind: WriterKind = "auto",
) -> ShardWriter | ProcessShardWriter:
    """The writer for this process: a child process where one can be forked (``auto``: Linux,
    and this process is not daemonic, e.g. not a Dask worker), else a thread."""
    if kind == "auto":
        can_fork = sys.platform.startswith("linux") and not multiprocessing.current_process().daemon
        kind = "process" if can_fork else "thread"
    if kind == "process":
        return ProcessShardWriter(store, max_queued, on_written)
    return ShardWriter(store, max_queued, on_written)


class ProcessShardWriter(_WriterProtocol):
    """`ShardWriter`'s contract with the writing in a forked child process.

    The child ignores SIGINT: on Ctrl-C the caller's ``with`` block still waits for the
    shards already submitted, as with the thread. An error in the child (or its death) is
    re-raised in the caller at the next `submit` or on leaving the block; shards queued behind
    it stay unwritten. ``on_written`` runs on a reader thread of the caller's process.
    """

    def __init__(
        self,
        store: TargetStore,
        max_queued: int = 2,
        on_written: Callable[[Shard, int], None] | None = None,
    ) -> None:
        self.store = store
        self.on_written = on_written
        self.shards_written = 0
        self.bytes_written = 0
        self._error: BaseException | None = None
        self._submitted: dict[int, Shard] = {}  # in flight: index -> ids/groups (no arrays)
        ctx = multiprocessing.get_context("fork")
        self._queue: Any = ctx.Queue(maxsize=max(1, max_queued))
        self._results: Any = ctx.Queue()
        self._proc = ctx.Process(
            target=_write_in_child,
            args=(store, self._queue, self._results, os.getpid()),
            name="md-shard-writer",
            daemon=True,
        )
        self._proc.start()
        self._reader = threading.Thread(
            target=self._read_results, name="md-writer-results", daemon=True
        )
        self._reader.start()

    def submit(self, shard: Shard) -> None:
        """Queue a computed shard; blocks while the queue is full; raises the writer's error."""
        self._submitted[shard.index] = Shard(shard.index, {}, shard.sample_ids, shard.groups)
        self._put(shard)

    def close(self) -> None:
        """Wait until every submitted shard is written; re-raise the writer's error."""
        if self._proc.is_alive() and self._error is None:
            self._put(_STOP)
        self._proc.join()
        self._reader.join()
        self._queue.cancel_join_thread()  # shards never taken by a dead child: left unwritten
        self._queue.close()
        self._results.close()
        if self._error is None and self._proc.exitcode != 0:
            self._error = StoreError(
                f"the shard writer process died (exit code {self._proc.exitcode}); rerun to "
                "write the missing shards"
            )
        if self._error is not None:
            raise self._error

    def _alive(self) -> bool:
        return self._proc.is_alive()

    def _read_results(self) -> None:
        while True:
            try:
                msg = self._results.get(timeout=0.1)
            except queue.Empty:
                if not self._proc.is_alive() and self._results.empty():
                    return
                continue
            if msg[0] == "written":
                _, k, nbytes = msg
                shard = self._submitted.pop(k)  # ids of shards in flight only
                self.shards_written += 1
                self.bytes_written += nbytes
                if self.on_written is not None:
                    self.on_written(shard, nbytes)
            elif msg[0] == "error":
                self._error = msg[1]
                return
            else:  # "done"
                return


def _write_in_child(store: TargetStore, jobs: Any, results: Any, parent: int) -> None:
    """The child's loop: write each shard, report ("written", k, bytes), stop at `_STOP`.

    The child dies with its parent: the kernel SIGKILLs it when the parent goes
    (`_die_with_parent`), and before each shard it checks that its parent is still the one
    that forked it, so no shard of a dead run is written beside a resumed one.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; see ProcessShardWriter
    _die_with_parent()
    while True:
        if os.getppid() != parent:  # re-parented: the run that submitted the job is gone
            os._exit(0)
        try:
            item = jobs.get(timeout=_PARENT_POLL_S)
        except queue.Empty:
            continue
        if item is _STOP:
            break
        if os.getppid() != parent:
            os._exit(0)
        try:
            nbytes = store.write_shard(item.index, item.arrays, item.sample_ids, item.groups)
            results.put(("written", item.index, nbytes))
        except BaseException as e:
            try:  # Queue.put pickles later, on a feeder thread: check it pickles now
                pickle.loads(pickle.dumps(e))
                error: BaseException = e
            except Exception:  # keep its words
                error = StoreError(f"{type(e).__name__}: {e}")
            results.put(("error", error))
            return
    store.close()
    results.put(("done",))


_PARENT_POLL_S = 0.5  # how often an idle child checks that its parent is alive
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``).

    The signal fires when the *thread* that forked us exits; `ProcessShardWriter` is made on
    the thread that runs the cache, which lives as long as the run. Elsewhere (no prctl) the
    getppid checks in `_write_in_child` still end the child within `_PARENT_POLL_S`.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return


def shard_stored_bytes(store: TargetStore, k: int) -> int:
    """Stored bytes of an already written shard k over every array (one size lookup per
    array; a fresh write gets the same figure from `TargetStore.write_shard`)."""
    return store.shard_stored_bytes(k)
