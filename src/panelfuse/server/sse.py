"""The one SSE writer: `data:` framing, keep-alive comments while the source is quiet, the response
that writes a stream (and stops it when the client leaves), the headers every event stream gets, and
ready batches (what piled up behind a slow reader, to merge)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, Generic, TypeVar

import orjson
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

KEEPALIVE = ": keep-alive\n\n"
DONE = "data: [DONE]\n\n"

T = TypeVar("T")


class LastFrame(str):
    """A stream's last frame (its [DONE], or the error chunk that ends it): the response writes it
    with the end of the body, in one write instead of two."""

    __slots__ = ()


def sse(data: Mapping[str, Any] | str, *, event: str | None = None, event_id: int | None = None) -> str:
    text = data if isinstance(data, str) else orjson.dumps(data).decode()
    head = (f"id: {event_id}\n" if event_id is not None else "") + (f"event: {event}\n" if event else "")
    return f"{head}data: {text}\n\n"


class _End(Generic[T]):
    """The source is exhausted (or failed with `error`)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


async def with_keepalive(source: AsyncIterator[str], every: float, ping: str = KEEPALIVE) -> AsyncIterator[str]:
    """`source`'s frames, plus a keep-alive `ping` (a comment by default) whenever it is quiet for
    `every` seconds (the panel may think for minutes: proxies must not time the stream out). Closing
    this closes `source`.

    `source` is read by one task for the whole stream, at most two frames ahead of the reader (so a
    slow client still makes the source wait, and merge what piles up), and one timer, re-armed once
    per `every` seconds, decides on pings. (A task and a timeout per frame cost ~50 µs a frame.)"""
    loop = asyncio.get_running_loop()
    frames: asyncio.Queue[str | _End[str]] = asyncio.Queue(maxsize=1)
    last_taken = loop.time()
    timer: asyncio.TimerHandle

    async def pump() -> None:
        end: _End[str] = _End()
        try:
            async for frame in source:
                await frames.put(frame)
        except BaseException as exc:  # handed to the reader, unless it cancelled this (it is gone)
            this = asyncio.current_task()
            if this is not None and this.cancelling():
                raise
            end = _End(exc)
        await frames.put(end)

    def tick() -> None:
        nonlocal timer
        now = loop.time()
        due = last_taken + every
        if now < due:
            timer = loop.call_at(due, tick)
            return
        if frames.empty():  # the reader waits and nothing came for `every` seconds
            frames.put_nowait(ping)
        timer = loop.call_at(now + every, tick)

    task = asyncio.ensure_future(pump())
    timer = loop.call_at(last_taken + every, tick)
    try:
        while True:
            item = await frames.get()
            last_taken = loop.time()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        timer.cancel()
        task.cancel()  # a no-op once done
        with contextlib.suppress(BaseException):
            await task
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


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


class EventStream(StreamingResponse):
    """A StreamingResponse for event streams, written by the request's own task.

    Starlette (under an ASGI server older than spec 2.4, as uvicorn is) runs every stream in an anyio
    task group beside a task that waits for the client to leave. That cost a proxied request 0.8 ms
    of its 4.9 ms of CPU (docs/performance.md, item 17). Here one plain task waits for the disconnect
    and cancels the request's task, as the task group did its child: the source sees a CancelledError
    at its await and unwinds, and the request ends normally. A `LastFrame` goes out with the end of
    the body."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        spec = tuple(int(part) for part in scope.get("asgi", {}).get("spec_version", "2.0").split("."))
        task = asyncio.current_task()
        if scope["type"] != "http" or spec >= (2, 4) or task is None:
            await super().__call__(scope, receive, send)  # no task group there: Starlette's own way
            return
        writing = True
        left = False

        async def watch() -> None:
            nonlocal left
            while (await receive())["type"] != "http.disconnect":
                pass
            if writing:  # not the disconnect that uvicorn reports once the body is complete
                left = True
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        frames = self.body_iterator
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            ended = False
            async for frame in frames:
                ended = isinstance(frame, LastFrame)
                body = frame if isinstance(frame, bytes | memoryview) else frame.encode(self.charset)
                writing = not ended
                await send({"type": "http.response.body", "body": body, "more_body": not ended})
            writing = False
            if not ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # Ours (the client left, nothing else asked): the request goes on to its end, as Starlette's.
            if not left or task.uncancel() > 0:
                raise
        finally:
            writing = False
            watcher.cancel()
            # A cancel that landed while a frame was being written left the source at its yield: its
            # clean-up (settling a budget, closing the upstream) runs now, not whenever it is collected.
            aclose = getattr(frames, "aclose", None)
            if aclose is not None:
                await aclose()
        if self.background is not None:
            await self.background()


def sse_response(
    source: AsyncIterator[str],
    *,
    keepalive: float | None = None,
    keepalive_frame: str = KEEPALIVE,
    headers: Mapping[str, str] | None = None,
) -> EventStream:
    frames = with_keepalive(source, keepalive, keepalive_frame) if keepalive else source
    return EventStream(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )
