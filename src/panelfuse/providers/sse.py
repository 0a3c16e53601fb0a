"""Reading an upstream's SSE stream of JSON objects: shared by every HTTP adapter, so connection
errors, error statuses, malformed lines and non-SSE answers map to the same typed errors."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from panelfuse.providers.errors import BadResponseError, ProviderError
from panelfuse.providers.http import shared_client

DONE = "[DONE]"


async def json_events(
    url: str,
    body: dict[str, Any],
    headers: Mapping[str, str],
    *,
    provider: str,
    model: str,
    on_status: Any,
    on_transport: Any,
) -> AsyncGenerator[tuple[str, dict[str, Any] | str], None]:
    """POST `body` and yield (SSE event name, parsed JSON object) per data line; the literal `[DONE]`
    line is yielded as the string DONE. `on_status(status, body, headers)` and `on_transport(exc)`
    turn HTTP failures into the adapter's typed errors."""
    try:
        async with aconnect_sse(shared_client(), "POST", url, json=body, headers=dict(headers)) as source:
            resp = source.response
            if resp.status_code >= 400:
                raise on_status(resp.status_code, await resp.aread(), resp.headers)
            async for sse in source.aiter_sse():
                data = sse.data.strip()
                if not data:
                    continue
                if data == DONE:
                    yield sse.event, DONE
                    continue
                try:
                    parsed = json.loads(data)
                except ValueError as exc:
                    raise BadResponseError(
                        f"malformed SSE data: {data[:200]!r}", provider=provider, model=model
                    ) from exc
                if not isinstance(parsed, dict):
                    raise BadResponseError("SSE data is not an object", provider=provider, model=model)
                yield sse.event, parsed
    except ProviderError:
        raise
    except SSEError as exc:  # e.g. a non-SSE content type on a 200
        raise BadResponseError(str(exc), provider=provider, model=model) from exc
    except httpx.HTTPError as exc:
        raise on_transport(exc) from exc
