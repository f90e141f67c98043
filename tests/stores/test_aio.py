"""Concurrent store I/O settles every request before it raises (issue 12: work left in
flight raced the cleanup after an error, and printed "Task was destroyed" at exit)."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import pytest

from md.stores.aio import gather_all

pack = importlib.import_module("md.stores.pack")  # the module; md.stores.pack is the function


class Boom(OSError):
    pass


async def _fail() -> None:
    await asyncio.sleep(0)
    raise Boom("disk gone")


def test_gather_all_waits_for_every_awaitable_before_raising() -> None:
    done: list[str] = []

    async def slow(name: str) -> str:
        await asyncio.sleep(0.05)
        done.append(name)
        return name

    async def run(gather: Any) -> list[str]:
        with pytest.raises(Boom):
            await gather(slow("a"), _fail(), slow("b"))
        return list(done)  # what had finished when the error arrived

    assert asyncio.run(run(gather_all)) == ["a", "b"]
    done.clear()
    assert asyncio.run(run(asyncio.gather)) == []  # why: plain gather raises at once
    assert asyncio.run(gather_all(slow("x"), slow("y"))) == ["x", "y"]


def test_gather_all_raises_the_first_failure_in_argument_order() -> None:
    async def late() -> None:
        await asyncio.sleep(0.02)
        raise ValueError("first argument, last to fail")

    with pytest.raises(ValueError, match="first argument"):
        asyncio.run(gather_all(late(), _fail()))


class _SlowStore:
    """A backend whose set of key "bad" fails at once while the others take a while."""

    def __init__(self) -> None:
        self.written: list[str] = []

    async def set(self, key: str, value: Any) -> None:
        if key == "bad":
            raise Boom("no space left")
        await asyncio.sleep(0.05)
        self.written.append(key)


def test_unpack_upload_window_settles_before_its_cleanup_runs() -> None:
    # `_unpack_to_url` removes what it uploaded when a window fails; every set of the
    # window must have landed by then, or one lands after the cleanup and stays.
    store = _SlowStore()
    with pytest.raises(Boom):
        asyncio.run(pack._set_all(store, ["a", "bad", "b"], [b"1", b"2", b"3"]))  # type: ignore[arg-type]
    assert sorted(store.written) == ["a", "b"]
