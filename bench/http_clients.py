"""httpx against aiohttp for the upstream calls: CPU per streamed answer, read the way the gateway reads
it, with the fake upstream in its own process (`bench/fake_upstream.py`, no latency).

    .venv/bin/python bench/http_clients.py [--calls 300] [--concurrency 8] [--tokens 200]

httpx is read with httpx-sse (what the gateway used before) when it is installed, else line by line;
aiohttp with the gateway's own decoder (`panelfuse.providers.sse`). Both parse every chunk's JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import orjson

from panelfuse.providers.sse import SSEDecoder, parse_events

HERE = Path(__file__).resolve().parent
BODY = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def with_httpx(url: str, calls: int, concurrency: int) -> int:
    try:
        from httpx_sse import aconnect_sse
    except ImportError:
        aconnect_sse = None
    chunks = 0
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency), trust_env=False) as client:

        async def one() -> None:
            nonlocal chunks
            async with gate:
                if aconnect_sse is not None:
                    async with aconnect_sse(client, "POST", url, json=BODY) as source:
                        async for sse in source.aiter_sse():
                            if sse.data != "[DONE]":
                                json.loads(sse.data)
                                chunks += 1
                    return
                async with client.stream("POST", url, json=BODY) as resp:
                    async for line in resp.aiter_lines():
                        if line.startswith("data: {"):
                            orjson.loads(line[6:])
                            chunks += 1

        await asyncio.gather(*(one() for _ in range(calls)))
    return chunks


async def with_aiohttp(url: str, calls: int, concurrency: int) -> int:
    chunks = 0
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def one() -> None:
            nonlocal chunks
            async with gate, session.post(url, data=orjson.dumps(BODY)) as resp:
                decoder = SSEDecoder()
                async for piece in resp.content.iter_any():
                    chunks += len(parse_events(decoder.feed(piece), provider="p", model="m"))

        await asyncio.gather(*(one() for _ in range(calls)))
    return chunks


def measure(name: str, run: Callable[[str, int, int], Awaitable[int]], url: str, args: argparse.Namespace) -> float:
    asyncio.run(run(url, 10, 2))  # warm up
    before = cpu()
    chunks = asyncio.run(run(url, args.calls, args.concurrency))
    ms = (cpu() - before) * 1000 / args.calls
    print(f"{name:8} {ms:6.2f} ms CPU per streamed answer ({chunks // args.calls} chunks each)")
    return ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--tokens", type=int, default=200)
    args = p.parse_args()
    fake = subprocess.Popen(
        [sys.executable, str(HERE / "fake_upstream.py"), "--latency-ms", "0", "--tokens", str(args.tokens)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = fake.stdout.readline() if fake.stdout else ""
        url = f"http://127.0.0.1:{line.split()[1]}/v1/chat/completions"
        httpx_ms = measure("httpx", with_httpx, url, args)
        aiohttp_ms = measure("aiohttp", with_aiohttp, url, args)
        print(f"aiohttp uses {aiohttp_ms / httpx_ms:.0%} of httpx's CPU")
    finally:
        fake.terminate()
        fake.wait(10)


if __name__ == "__main__":
    main()
