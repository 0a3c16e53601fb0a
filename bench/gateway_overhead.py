"""What the gateway adds: proxied calls through it vs. straight to the (instant) fake upstream, and
fusion throughput at a fixed concurrency. Prints p50/p99 latency and requests per second. The fake,
the gateway and this client share one process (and the GIL), so read the figures relative to each other.

    .venv/bin/python bench/gateway_overhead.py [--requests 300] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gateway_helpers import Gateway
from panelfuse.testing import FakeUpstream, Script
from pipeline_helpers import script_panel


async def hammer(url: str, body: dict, n: int, concurrency: int) -> tuple[list[float], float]:
    gate = asyncio.Semaphore(concurrency)
    lat: list[float] = []
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as http:

        async def one() -> None:
            async with gate:
                t = time.perf_counter()
                r = await http.post(url, json=body, headers={"Authorization": "Bearer k"})
                r.raise_for_status()
                lat.append(time.perf_counter() - t)

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return lat, time.perf_counter() - started


def report(name: str, lat: list[float], wall: float) -> None:
    s = sorted(lat)
    print(
        f"{name:34} p50 {s[len(s) // 2] * 1000:7.1f} ms   p99 {s[int(len(s) * 0.99)] * 1000:7.1f} ms   "
        f"{len(s) / wall:7.1f} req/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    plain = {"model": "fake/plain", "messages": [{"role": "user", "content": "hi"}]}
    fusion = {"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "hi"}]}
    with FakeUpstream() as fake, tempfile.TemporaryDirectory() as tmp:
        fake.script("plain", Script(text="ok"))
        script_panel(fake)
        gw = Gateway(fake, f"sqlite+aiosqlite:///{tmp}/runs.db").start()
        try:
            body = {**plain, "model": "plain"}
            report(
                "direct to the fake",
                *asyncio.run(hammer(f"{fake.openai_base_url}/chat/completions", body, args.requests, args.concurrency)),
            )
            report(
                "proxied through the gateway",
                *asyncio.run(hammer(f"{gw.url}/v1/chat/completions", plain, args.requests, args.concurrency)),
            )
            report(
                "fusion (3 members, judge, synth)",
                *asyncio.run(hammer(f"{gw.url}/v1/chat/completions", fusion, args.requests // 3, args.concurrency)),
            )
        finally:
            gw.stop()


if __name__ == "__main__":
    main()
