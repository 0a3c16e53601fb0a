"""The process's shared HTTP clients.

Model calls go through one pooled aiohttp session per event loop (in practice one per process; tests
create a loop per test): its C parser reads a streamed answer several times cheaper than httpx did
(docs/performance.md has the numbers). The web tools keep one pooled httpx client (`shared_client`):
`web_fetch` pins each connection to the address it checked, which httpx's transports make easy.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import httpx
import orjson

T = TypeVar("T")

_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()

# Per-call deadlines are set by the callers; these are only the pool's outer bounds.
_LIMITS = httpx.Limits(max_connections=512, max_keepalive_connections=64, keepalive_expiry=30)
# Errors of the transport (not of the upstream's answer): connection refused or reset, a cut body, a timeout.
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)
MAX_ANSWER_BYTES = 32 * 1024 * 1024  # a whole (non-streamed) answer longer than this is refused, not read


def shared_session() -> aiohttp.ClientSession:
    """The pooled session for model calls. Connections are kept alive and reused under load."""
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        connector = aiohttp.TCPConnector(limit=512, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=300)
        # trust_env=False: a proxy variable on the machine must not silently reroute loopback calls.
        # No session timeout: every call's deadline is the caller's (providers/retry.py).
        # No cookie jar: model APIs need none, one jar would carry a cookie set for one caller's call
        # into every other caller's, and filling and filtering it was work on every request.
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            trust_env=False,
            auto_decompress=True,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        _sessions[loop] = session
    return session


def shared_client() -> httpx.AsyncClient:
    """The pooled httpx client of the web tools."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(limits=_LIMITS, timeout=httpx.Timeout(600.0), trust_env=False)
        _clients[loop] = client
    return client


@dataclass(frozen=True)
class HttpAnswer:
    """A whole (non-streamed) answer."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    oversize: bool = False  # the answer was longer than MAX_ANSWER_BYTES: `body` is its beginning only

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def encode_json(body: Any) -> bytes:
    """A request body as JSON; the standard library takes what orjson refuses (integers past 64 bits,
    which a caller may send and the upstream should be the one to refuse)."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body).encode()


async def request(method: str, url: str, *, headers: Mapping[str, str], body: Any = None) -> HttpAnswer:
    """One whole request and answer on the shared session (the caller bounds it in time). Raises one
    of TRANSPORT_ERRORS."""
    data = encode_json(body) if body is not None else None
    async with shared_session().request(method, url, headers=dict(headers), data=data) as resp:
        # Read no more than the cap: an upstream that never stops must not fill the memory.
        body_read = await resp.content.read(MAX_ANSWER_BYTES + 1)
        while len(body_read) <= MAX_ANSWER_BYTES and not resp.content.at_eof():
            more = await resp.content.read(MAX_ANSWER_BYTES + 1 - len(body_read))
            if not more:
                break
            body_read += more
        oversize = len(body_read) > MAX_ANSWER_BYTES
        return HttpAnswer(resp.status, resp.headers, body_read[:MAX_ANSWER_BYTES], oversize)


def run(main: Awaitable[T]) -> T:
    """`asyncio.run(main)`, closing the loop's pooled HTTP clients before the loop ends (a command
    line's one-shot loop; the gateway closes them at shutdown)."""

    async def closing() -> T:
        try:
            return await main
        finally:
            await close_shared_client()

    return asyncio.run(closing())


async def close_shared_client() -> None:
    loop = asyncio.get_running_loop()
    session = _sessions.pop(loop, None)
    if session is not None:
        await session.close()
    client = _clients.pop(loop, None)
    if client is not None:
        await client.aclose()
