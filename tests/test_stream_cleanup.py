"""A client gone before the first chunk: the stream's clean-up still runs (the admission is settled).
Driven through Starlette's StreamingResponse as uvicorn calls it, with the SSE writer's keep-alive
wrapper, and a disconnect that is already there when the response starts."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse

from panelfuse.providers.base import StreamEvent
from panelfuse.server.proxy import opened_stream, proxy_chunks
from panelfuse.server.sse import with_keepalive


class RecordingAdmission:
    def __init__(self) -> None:
        self.released: list[float | None] = []

    async def release_shielded(self, cost: float | None) -> None:
        self.released.append(cost)


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
