"""Concurrent store I/O that never leaves work behind.

`asyncio.gather` raises the first failure while its other awaitables keep running as
tasks on zarr's event loop. Whoever handles the error (removing what a failed unpack
uploaded, deleting a half-created store, exiting the process) then races writes still in
flight, and an exit with them pending prints "Task was destroyed but it is pending".
`gather_all` waits for every awaitable, then raises the first failure in argument order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def gather_all(*aws: Awaitable[T]) -> list[T]:
    """Results of `aws` in order, once every one has finished; the first failure (in
    argument order) is raised only after all have settled."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)  # type: ignore[arg-type]  # no exception is left in it


__all__ = ["gather_all"]
