"""A client gone before the first chunk: the stream's clean-up still runs (the admission is settled).
Driven through Starlette's StreamingResponse as uvicorn calls it, with the SSE writer's keep-alive
wrapper, and a disconnect that is already there when the response starts."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

import anyio
from starlette.responses import StreamingResponse

from panelfuse.providers.base import StreamEvent
from panelfuse.server.proxy import opened_stream, proxy_chunks
from panelfuse.server.sse import with_keepalive
from panelfuse.service.carry import carried_work_done, carry_through


class RecordingAdmission:
    def __init__(self) -> None:
        self.released: list[float | None] = []

    async def release(self, cost: float | None) -> None:
        await asyncio.sleep(0)  # settling awaits the store
        self.released.append(cost)

    async def release_shielded(self, cost: float | None) -> None:
        await carry_through(self.release(cost))


async def serve_to_a_client_already_gone(frames: AsyncIterator[str]) -> None:
    scope = {"type": "http", "asgi": {"spec_version": "2.3"}}

    async def receive() -> dict[str, str]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        return None

    await StreamingResponse(with_keepalive(frames, 15))(scope, receive, send)
    gc.collect()
    await asyncio.sleep(0.05)


async def test_a_proxied_stream_left_before_its_first_chunk_still_settles():
    async def upstream() -> AsyncIterator[StreamEvent]:
        yield StreamEvent(text="first")
        await asyncio.sleep(30)
        yield StreamEvent(text="never")

    admission = RecordingAdmission()
    frames = proxy_chunks(
        await opened_stream(upstream(), admission),
        "fake/m1",
        "chatcmpl-x",
        0,
        admission,
        None,
    )
    await serve_to_a_client_already_gone(frames)
    assert admission.released == [None]  # settled: nothing was reported, the reservation stands for it


async def test_a_proxied_stream_closed_under_a_standing_cancel_still_settles():
    # A client that stops reading cancels the response while it waits to send; the SSE writer then
    # closes our generator inside that cancelled scope, where anyio cancels every await again. Closing
    # the upstream awaits (its connection), and used to cut the settling short: the reservation leaked.
    async def upstream() -> AsyncIterator[StreamEvent]:
        try:
            yield StreamEvent(text="first")
            yield StreamEvent(text="second")
        finally:
            await asyncio.sleep(0)  # a real connection's close awaits

    admission = RecordingAdmission()
    frames = proxy_chunks(await opened_stream(upstream(), admission), "fake/m1", "chatcmpl-x", 0, admission, None)
    await anext(frames)  # the role chunk
    await anext(frames)  # "first": the generator now waits at a yield, as while the response sends
    with anyio.CancelScope() as scope:
        scope.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await frames.aclose()
    await carried_work_done()
    assert admission.released == [None]
