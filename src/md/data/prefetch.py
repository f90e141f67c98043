"""Read ahead on a thread: the next batches decode while the caller computes.

Pillow decodes and torch computes with the GIL released, so a reading thread overlaps image
decoding with a CPU or GPU forward in the same process, without the pickling and
shared-memory traffic of DataLoader worker processes (which on 2 cores cost `md
cache-teacher` more than they saved: docs/benchmarks.md).

`Prefetcher` yields exactly what the wrapped iterator yields, in order; an exception raised
while reading is re-raised in the caller at the item where it happened. Leaving early
(``close``, or the ``with`` block) stops the thread at its next item.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

_END = object()


class Prefetcher(Generic[T]):
    """``with Prefetcher(iter(loader), depth=2) as batches: for b in batches: ...``"""

    def __init__(self, source: Iterator[T], depth: int = 2, name: str = "md-prefetch") -> None:
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for item in self._source:
                if not self._offer(item):
                    return
            self._offer(_END)
        except BaseException as e:  # handed to the caller, in order
            self._offer(_Raised(e))

    def _offer(self, item: object) -> bool:
        """Queue `item`, waiting while the queue is full; False once the caller has left."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._stop.set()
            raise StopIteration
        if isinstance(item, _Raised):
            self._stop.set()
            raise item.error
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop reading ahead and wait for the thread (it finishes the item in hand)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error
