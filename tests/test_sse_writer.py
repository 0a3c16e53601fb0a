"""The SSE writer's keep-alive wrapper on its own: frames in order, pings only while the source is
quiet, errors and closing handed through, and a reader that stops reading makes the source wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from panelfuse.server.sse import KEEPALIVE, with_keepalive

EVERY = 0.05


async def quiet_then(frames: list[str], pause: float) -> AsyncIterator[str]:
    for frame in frames:
        await asyncio.sleep(pause)
        yield frame


async def test_frames_pass_through_in_order_without_pings_when_the_source_is_busy():
    async def busy() -> AsyncIterator[str]:
        for i in range(200):
            await asyncio.sleep(0)
            yield f"f{i}"

    got = [frame async for frame in with_keepalive(busy(), EVERY)]
    assert got == [f"f{i}" for i in range(200)]


async def test_a_quiet_source_gets_pings_between_its_frames():
    got = [frame async for frame in with_keepalive(quiet_then(["a", "b"], EVERY * 5), EVERY, ping="P")]
    assert [f for f in got if f != "P"] == ["a", "b"]
    assert got.index("a") >= 2  # pinged while waiting for the first frame
    assert got.index("b") - got.index("a") >= 3  # and again for the second
    assert got[-1] == "b"  # no ping after the end


async def test_the_default_ping_is_an_sse_comment():
    got = [frame async for frame in with_keepalive(quiet_then(["a"], EVERY * 3), EVERY)]
    assert got[0] == KEEPALIVE and KEEPALIVE.startswith(":") and got[-1] == "a"


async def test_the_sources_error_reaches_the_reader_after_its_frames():
    async def failing() -> AsyncIterator[str]:
        yield "a"
        raise ValueError("upstream broke")

    got: list[str] = []
    with pytest.raises(ValueError, match="upstream broke"):
        async with asyncio.timeout(10):  # a hang guard, as below
            async for frame in with_keepalive(failing(), EVERY):
                got.append(frame)
    assert got == ["a"]


async def test_a_cancellation_raised_by_the_source_itself_reaches_the_reader():
    # Not the wrapper's own cancel: the reader must see it rather than wait for ever.
    async def cancelled() -> AsyncIterator[str]:
        yield "a"
        raise asyncio.CancelledError()

    got: list[str] = []
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(10):  # a hang guard: a lost end would wait for ever
            async for frame in with_keepalive(cancelled(), EVERY):
                got.append(frame)
    assert got == ["a"]


async def test_closing_the_wrapper_closes_the_source_even_while_it_waits():
    closed = asyncio.Event()

    async def slow() -> AsyncIterator[str]:
        try:
            yield "a"
            await asyncio.sleep(30)
            yield "never"
        finally:
            closed.set()

    frames = with_keepalive(slow(), 10)
    assert await anext(frames) == "a"
    await asyncio.sleep(0.01)  # the source now waits inside its sleep
    await frames.aclose()
    assert closed.is_set()


async def test_a_reader_that_stops_reading_makes_the_source_wait():
    pulled: list[int] = []

    async def counting() -> AsyncIterator[str]:
        for i in range(100):
            pulled.append(i)
            yield f"f{i}"

    frames = with_keepalive(counting(), 10)
    assert await anext(frames) == "f0"
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(pulled) <= 3  # the frame read, one queued, one in hand: never the whole source
    rest = [frame async for frame in frames]
    assert rest == [f"f{i}" for i in range(1, 100)]
