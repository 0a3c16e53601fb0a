"""The one SSE writer: `data:` framing, keep-alive comments while the source is quiet, and the
response headers every event stream gets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from fastapi.responses import StreamingResponse

KEEPALIVE = ": keep-alive\n\n"
DONE = "data: [DONE]\n\n"


def sse(data: Mapping[str, Any] | str, *, event: str | None = None, event_id: int | None = None) -> str:
    text = data if isinstance(data, str) else orjson.dumps(data).decode()
    head = (f"id: {event_id}\n" if event_id is not None else "") + (f"event: {event}\n" if event else "")
    return f"{head}data: {text}\n\n"


async def with_keepalive(source: AsyncIterator[str], every: float) -> AsyncIterator[str]:
    """`source`'s frames, plus a keep-alive comment whenever it is quiet for `every` seconds (the
    panel may think for minutes: proxies must not time the stream out). Closing this closes `source`."""
    pending: asyncio.Future[str] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield KEEPALIVE
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


def sse_response(
    source: AsyncIterator[str], *, keepalive: float | None = None, headers: Mapping[str, str] | None = None
) -> StreamingResponse:
    frames = with_keepalive(source, keepalive) if keepalive else source
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )
