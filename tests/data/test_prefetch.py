"""md.data.prefetch: same items in the same order, errors where they happened, clean stops."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from md.data.prefetch import Prefetcher


def test_yields_every_item_in_order():
    with Prefetcher(iter(range(100)), depth=3) as items:
        assert list(items) == list(range(100))
    with Prefetcher(iter([]), depth=1) as items:
        assert list(items) == []


def test_reads_ahead_on_another_thread_up_to_depth():
    read_by: list[str] = []

    def source():
        for i in range(10):
            read_by.append(threading.current_thread().name)
            yield i

    with Prefetcher(source(), depth=2, name="reader") as items:
        assert next(items) == 0
        # The reader fills the queue (2) and holds one more in hand, then waits.
        deadline = time.monotonic() + 10
        while len(read_by) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert len(read_by) == 4
        assert list(items) == list(range(1, 10))
    assert set(read_by) == {"reader"}


def test_error_is_raised_at_its_item_after_the_items_before_it():
    def source():
        yield 1
        yield 2
        raise ValueError("image 3 is damaged")

    got = []
    with pytest.raises(ValueError, match="image 3 is damaged"), Prefetcher(source()) as items:
        for item in items:
            got.append(item)
    assert got == [1, 2]


def test_leaving_early_stops_the_reader():
    with Prefetcher(itertools.count(), depth=2) as items:
        assert [next(items) for _ in range(3)] == [0, 1, 2]
        thread = items._thread
    assert not thread.is_alive()
    assert list(items) == []  # a closed prefetcher yields nothing more
