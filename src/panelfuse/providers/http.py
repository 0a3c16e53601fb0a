"""The process's shared async HTTP client.

One pooled client per process; an httpx client is bound to the event loop that first used it, so we
keep one per running loop (in practice one per process; tests create a loop per test).
"""

from __future__ import annotations

import asyncio
import weakref

import httpx

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()

# Per-call deadlines are set by the callers; these are only the pool's outer bounds.
_LIMITS = httpx.Limits(max_connections=512, max_keepalive_connections=64, keepalive_expiry=30)


def shared_client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        # trust_env=False: a proxy variable on the machine must not silently reroute loopback calls.
        client = httpx.AsyncClient(limits=_LIMITS, timeout=httpx.Timeout(600.0), trust_env=False)
        _clients[loop] = client
    return client


async def close_shared_client() -> None:
    loop = asyncio.get_running_loop()
    client = _clients.pop(loop, None)
    if client is not None:
        await client.aclose()
