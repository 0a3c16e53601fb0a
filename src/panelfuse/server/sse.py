"""The one SSE writer: `data:` framing, keep-alive comments while the source is quiet, the response
headers every event stream gets, and ready batches (what piled up behind a slow reader, to merge)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, Generic, TypeVar

import orjson
from fastapi.responses import StreamingResponse

KEEPALIVE = ": keep-alive\n\n"
DONE = "data: [DONE]\n\n"

T = TypeVar("T")


def sse(data: Mapping[str, Any] | str, *, event: str | None = None, event_id: int | None = None) -> str:
    text = data if isinstance(data, str) else orjson.dumps(data).decode()
    head = (f"id: {event_id}\n" if event_id is not None else "") + (f"event: {event}\n" if event else "")
    return f"{head}data: {text}\n\n"


async def with_keepalive(source: AsyncIterator[str], every: float, ping: str = KEEPALIVE) -> AsyncIterator[str]:
    """`source`'s frames, plus a keep-alive `ping` (a comment by default) whenever it is quiet for
    `every` seconds (the panel may think for minutes: proxies must not time the stream out). Closing
    this closes `source`."""
    pending: asyncio.Future[str] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield ping
                continue
            try:
                frame = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield frame
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


class _End(Generic[T]):
    """The source is exhausted (or failed with `error`)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


async def ready_batches(source: AsyncIterator[T]) -> AsyncGenerator[list[T], None]:
    """`source`'s items in lists: each list is the next item and every item already waiting behind
    it, taken without waiting for more. A consumer as fast as `source` gets lists of one; a slower one
    gets what piled up meanwhile, in one list, so it can merge it (never delaying an item to do so).
    `source` is read by a task of its own; closing this stops it and closes `source`."""
    queue: asyncio.Queue[T | _End[T]] = asyncio.Queue()

    async def pump() -> None:
        end: _End[T] = _End()
        try:
            async for item in source:
                queue.put_nowait(item)
        except BaseException as exc:  # handed to the reader; a cancel of this task ends it as well
            end = _End(exc)
        finally:
            queue.put_nowait(end)  # always: the reader must never wait on a pump that is gone

    task = asyncio.ensure_future(pump())
    try:
        while True:
            batch: list[T] = []
            item = await queue.get()
            while not isinstance(item, _End):
                batch.append(item)
                if queue.empty():
                    break
                item = queue.get_nowait()
            if batch:
                yield batch
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
    finally:
        task.cancel()  # a no-op once done
        await asyncio.wait({task})  # its exception, if any, was handed on above
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


def sse_response(
    source: AsyncIterator[str],
    *,
    keepalive: float | None = None,
    keepalive_frame: str = KEEPALIVE,
    headers: Mapping[str, str] | None = None,
) -> StreamingResponse:
    frames = with_keepalive(source, keepalive, keepalive_frame) if keepalive else source
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )
