"""A non-streamed request's work stops when its client leaves: nobody would read the answer, and
its upstream calls would go on billing the caller."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from panelfuse.server.errors import ApiError

T = TypeVar("T")
DISCONNECT_POLL = 0.5  # seconds between checks that the client is still there


async def unless_client_leaves(work: Awaitable[T], request: Request) -> T:
    """`work`'s result; if the client disconnects first, `work` is cancelled (and awaited, so its
    clean-up has run) and a 499 is raised."""
    task = asyncio.ensure_future(work)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                await asyncio.wait({task})
                raise ApiError(499, "the client disconnected", code="client_disconnected")
        return task.result()
    finally:
        task.cancel()  # a no-op once done; stops the work when this request itself is cancelled
