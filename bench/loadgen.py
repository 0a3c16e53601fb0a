"""The benchmark's closed-loop load generator, run as its own process: `--concurrency` workers each send
the next request as soon as their previous one has answered, until `--requests` have been sent.

    python bench/loadgen.py --url http://127.0.0.1:8000/v1/chat/completions --body '{"model": ...}' \
        --concurrency 8 --requests 200 [--stream] [--warmup 10]

Prints one JSON object on stdout: per-request latencies (s), times to the first answer token (s) and
the instants (time.monotonic(), system-wide on Linux) those first tokens arrived, errors, wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp
import orjson


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, stream: bool
) -> tuple[float, float | None, float]:
    """(latency, time to first answer token or None, monotonic instant of that token or 0)."""
    started = time.monotonic()
    first: float | None = None
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        if not stream:
            data = orjson.loads(await resp.read())
            if not data["choices"][0]["message"].get("content"):
                raise RuntimeError("empty answer")
            return time.monotonic() - started, None, 0.0
        buf = b""
        async for piece in resp.content.iter_any():
            if first is None:
                buf += piece
                while b"\n\n" in buf:
                    frame, buf = buf.split(b"\n\n", 1)
                    if not frame.startswith(b"data: {"):
                        continue
                    chunk = orjson.loads(frame[6:])
                    if chunk.get("error"):
                        raise RuntimeError(f"error chunk: {chunk['error']}")
                    choices = chunk.get("choices") or [{}]
                    if (choices[0].get("delta") or {}).get("content"):
                        first = time.monotonic()
                        break
            elif b'"error"' in piece and b'"finish_reason":"error"' in piece:
                raise RuntimeError("error chunk")
    ended = time.monotonic()
    return ended - started, (first - started) if first else None, first or 0.0


async def run(url: str, body: bytes, concurrency: int, requests: int, warmup: int, stream: bool) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for _ in range(warmup):
            await _one(session, url, body, stream)
        latencies: list[float] = []
        ttft: list[float] = []
        first_at: list[float] = []
        errors: list[str] = []
        left = requests

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                try:
                    lat, first, at = await _one(session, url, body, stream)
                except Exception as exc:  # counted and shown, never fatal to the run
                    errors.append(str(exc)[:300])
                    continue
                latencies.append(lat)
                if first is not None:
                    ttft.append(first)
                    first_at.append(at)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.monotonic() - started
    return {"latencies": latencies, "ttft": ttft, "first_token_at": first_at, "errors": errors, "wall_s": wall}


def run_loop(main: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--body", required=True, help="the request's JSON")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--stream", action="store_true")
    a = p.parse_args()
    body = json.loads(a.body)
    body["stream"] = a.stream
    out = run_loop(run(a.url, json.dumps(body).encode(), a.concurrency, a.requests, a.warmup, a.stream))
    sys.stdout.write(json.dumps(out))


if __name__ == "__main__":
    main()
