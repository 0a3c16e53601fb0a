"""Clean-up a request owes (settling a budget, storing a run's outcome) carried to its end even while
the request is being cancelled: a client that leaves a stream cancels the response's task at every
await (Starlette delivers the cancel again and again), so a plain `await` in a `finally` is cut short."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

_carried: set[asyncio.Future[Any]] = set()  # referenced until done, so nothing collects them midway


async def carry_through(work: Awaitable[T]) -> T:
    """Await `work` in its own task. If the caller is cancelled meanwhile, the cancel reaches the
    caller at once and `work` still runs to its end."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        _carried.add(task)
        task.add_done_callback(_carried.discard)
        raise


async def carried_work_done() -> None:
    """Wait for every carried task still running (the server's shutdown, before its store closes)."""
    while _carried:
        await asyncio.gather(*list(_carried), return_exceptions=True)
