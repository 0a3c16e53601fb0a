"""A non-streamed request's work stops when its client leaves: nobody would read the answer, and
its upstream calls would go on billing the caller."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from panelfuse.server.errors import ApiError

T = TypeVar("T")


async def until_disconnected(request: Request) -> None:
    """Returns when the client has gone. The endpoint's body was read before it ran, so the server's
    next message is http.disconnect, sent the moment the connection drops: no polling, and no wake
    of the process while the client is still there. A receive that fails means the same."""
    with contextlib.suppress(Exception):
        while (await request.receive())["type"] != "http.disconnect":
            pass


async def unless_client_leaves(work: Awaitable[T], request: Request) -> T:
    """`work`'s result; if the client disconnects first, `work` is cancelled (and awaited, so its
    clean-up has run) and a 499 is raised."""
    task = asyncio.ensure_future(work)
    left = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({task, left}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
            raise ApiError(499, "the client disconnected", code="client_disconnected")
        return task.result()
    finally:
        task.cancel()  # a no-op once done; stops the work when this request itself is cancelled
        left.cancel()
