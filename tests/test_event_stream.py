"""The event-stream response on its own, driven as an ASGI app: the body as its frames came, a last
frame sent with the end of the body, and a client that leaves stopping the source (whose clean-up
runs) while the request itself ends normally; a cancel from elsewhere still cancels the request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from panelfuse.server.sse import LastFrame, sse_response

SCOPE = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "method": "GET", "headers": []}


class Client:
    """The server's side of one connection: what was sent, and a disconnect to trigger."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def bodies(self) -> list[tuple[bytes, bool]]:
        return [(m["body"], m["more_body"]) for m in self.sent if m["type"] == "http.response.body"]


async def test_frames_go_out_as_they_came_and_the_body_ends_after_them():
    async def frames() -> AsyncIterator[str]:
        yield "a"
        yield "b"

    client = Client()
    await sse_response(frames())(SCOPE, client.receive, client.send)
    assert client.sent[0]["type"] == "http.response.start"
    assert client.bodies() == [(b"a", True), (b"b", True), (b"", False)]


async def test_a_last_frame_is_sent_with_the_end_of_the_body_and_the_source_still_finishes():
    finished = []

    async def frames() -> AsyncIterator[str]:
        try:
            yield "a"
            yield LastFrame("data: [DONE]\n\n")
        finally:
            finished.append(True)

    client = Client()
    await sse_response(frames())(SCOPE, client.receive, client.send)
    assert client.bodies() == [(b"a", True), (b"data: [DONE]\n\n", False)]
    assert finished == [True]


async def endless(started: asyncio.Event, cleaned: list[bool]) -> AsyncIterator[str]:
    """A tick every 10 ms until stopped; `started` once the first went out, `cleaned` on the way out."""
    try:
        while True:
            yield "tick"
            started.set()
            await asyncio.sleep(0.01)
    finally:
        await asyncio.sleep(0)  # clean-up may await
        cleaned.append(True)


async def test_a_client_that_leaves_stops_the_source_and_the_request_ends_normally():
    started, cleaned = asyncio.Event(), []
    client = Client()
    request = asyncio.ensure_future(sse_response(endless(started, cleaned))(SCOPE, client.receive, client.send))
    await started.wait()
    client.gone.set()
    await asyncio.wait_for(request, 5)
    assert not request.cancelled() and request.exception() is None  # the request's task goes on
    assert cleaned == [True]
    assert all(more for _, more in client.bodies())  # nothing claimed the body was complete


async def test_a_cancel_from_elsewhere_still_cancels_the_request():
    started, cleaned = asyncio.Event(), []
    client = Client()
    request = asyncio.ensure_future(sse_response(endless(started, cleaned))(SCOPE, client.receive, client.send))
    await started.wait()
    request.cancel()  # a server shutting down, say: not the client leaving
    with pytest.raises(asyncio.CancelledError):
        await request
    assert cleaned == [True]


async def test_the_disconnect_reported_after_the_body_is_complete_cancels_nothing():
    client = Client()

    async def frames() -> AsyncIterator[str]:
        yield LastFrame("x")
        client.gone.set()  # uvicorn reports http.disconnect once the response is complete
        await asyncio.sleep(0.05)  # the source's own tail end, after its last frame

    await sse_response(frames())(SCOPE, client.receive, client.send)
    assert client.bodies() == [(b"x", False)]
