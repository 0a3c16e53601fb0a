"""The benchmark's fake upstream, run as its own process: an OpenAI-wire server that answers every model
with `--tokens` tokens streamed `--tokens-per-chunk` to an SSE chunk, after a fixed or lognormal delay.

It is not `panelfuse.testing.FakeUpstream` (which scripts failures for the tests): this one does as
little as it can per request, so on a shared 2-core machine its own CPU stays small next to the
gateway's. Frames are built once per (model, length) and written in one `write` when no token rate is
set (the bytes on the wire are the same SSE chunks a hosted API sends, one token each).

    python bench/fake_upstream.py --port 0 [--latency-ms 200] [--heavy-model m3 --heavy-ratio 10]

Prints `ready <port>` on stdout once listening. `GET /stats` returns what it served: for each
synthesizer request, the time.monotonic() instants its first token was written (system-wide on
Linux, so the load generator's clock is the same one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import sys
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from aiohttp import web

_LABELS = re.compile(rb'label=\\"([A-H])\\"')
_WORDS = ("the", "sky", "is", "blue", "because", "air", "scatters", "short", "wavelengths", "more")
# The z-score of the 99th percentile: a lognormal with sigma = ln(ratio) / Z99 has p99 = ratio × median.
Z99 = 2.3263


@dataclass
class Options:
    latency_s: float = 0.2
    sigma: float = 0.0  # 0: fixed latency; else lognormal around latency_s
    tokens: int = 200
    tokens_per_chunk: int = 1
    token_rate: float = 0.0  # tokens/second while streaming; 0: as fast as the socket takes them
    heavy_model: str | None = None  # a model id suffix whose latency is heavy-tailed
    heavy_ratio: float = 10.0  # its p99 / median


@dataclass
class Stats:
    requests: int = 0
    synth_first_token: list[float] = field(default_factory=list)


def _analysis(labels: list[str]) -> str:
    labels = labels or ["A"]
    return json.dumps(
        {
            "consensus": ["the sky scatters blue light"],
            "contradictions": [{"topic": "cause", "stances": [{"model": lb, "stance": f"view {lb}"} for lb in labels]}],
            "partial_coverage": [{"models": labels[:2], "point": "sunsets are red"}],
            "unique_insights": [{"model": labels[0], "insight": f"insight from {labels[0]}"}],
            "blind_spots": ["polarisation"],
            "anomalies": [],
        }
    )


def _pieces(text: str, n: int) -> list[str]:
    """`text` cut into `n` pieces (about one token each) that join back to it exactly."""
    n = max(1, min(n, len(text)))
    step = len(text) / n
    cuts = [round(i * step) for i in range(n + 1)]
    return [text[cuts[i] : cuts[i + 1]] for i in range(n)]


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


@cache
def _frames(model: str, text: str, tokens: int, per_chunk: int, usage: bool) -> tuple[bytes, ...]:
    pieces = _pieces(text, tokens)
    groups = ["".join(pieces[i : i + per_chunk]) for i in range(0, len(pieces), per_chunk)]
    frames = [_chunk(model, {"role": "assistant", "content": ""})]
    frames += [_chunk(model, {"content": g}) for g in groups]
    frames.append(_chunk(model, {}, "stop"))
    if usage:
        tail = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": [],
            "usage": {"prompt_tokens": 100, "completion_tokens": tokens, "total_tokens": 100 + tokens},
        }
        frames.append(b"data: " + json.dumps(tail).encode() + b"\n\n")
    frames.append(b"data: [DONE]\n\n")
    return tuple(frames)


def _text_for(model: str, raw: bytes, tokens: int) -> str:
    if "judge" in model:
        return _analysis(sorted({m.decode() for m in _LABELS.findall(raw)}))
    words = [_WORDS[i % len(_WORDS)] for i in range(tokens)]
    return " ".join(words) + "."


def make_app(opts: Options) -> web.Application:
    rng = random.Random(1)
    stats = Stats()
    heavy_sigma = math.log(opts.heavy_ratio) / Z99

    def delay_for(model: str) -> float:
        if model.startswith("fast-"):  # the zero-latency models: what the gateway costs with nothing to wait for
            return 0.0
        if opts.heavy_model and model.endswith(opts.heavy_model):
            return rng.lognormvariate(math.log(max(opts.latency_s, 1e-3)), heavy_sigma)
        if opts.sigma > 0:
            return rng.lognormvariate(math.log(max(opts.latency_s, 1e-3)), opts.sigma)
        return opts.latency_s

    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            return await answer(request)
        except ConnectionResetError:  # the gateway cancelled the call (quorum reached, client gone)
            return web.Response()

    async def answer(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw)
        model = str(body.get("model", ""))
        stats.requests += 1
        text = _text_for(model, raw, opts.tokens)
        wait = delay_for(model)
        if wait > 0:
            await asyncio.sleep(wait)
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": model,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                    ],
                    "usage": {
                        "prompt_tokens": 100,
                        "completion_tokens": opts.tokens,
                        "total_tokens": 100 + opts.tokens,
                    },
                }
            )
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        frames = _frames(model, text, opts.tokens, opts.tokens_per_chunk, usage)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if "synth" in model:
            stats.synth_first_token.append(time.monotonic())
        if opts.token_rate <= 0:
            await resp.write(b"".join(frames))
        else:
            pause = opts.tokens_per_chunk / opts.token_rate
            for i, frame in enumerate(frames):
                if 1 < i < len(frames) - 2:
                    await asyncio.sleep(pause)
                await resp.write(frame)
        await resp.write_eof()
        return resp

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    async def read_stats(_: web.Request) -> web.Response:
        return web.json_response({"requests": stats.requests, "synth_first_token": stats.synth_first_token})

    async def reset(_: web.Request) -> web.Response:
        stats.requests = 0
        stats.synth_first_token.clear()
        return web.json_response({})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", read_stats)
    app.router.add_post("/stats/reset", reset)
    return app


def run_loop(main: Any) -> None:
    """asyncio.run on uvloop where it is installed (as the gateway runs)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency-ms", type=float, default=200.0)
    p.add_argument("--sigma", type=float, default=0.0, help="lognormal sigma for every model (0: fixed)")
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--tokens-per-chunk", type=int, default=1)
    p.add_argument("--token-rate", type=float, default=0.0, help="tokens/s while streaming (0: unpaced)")
    p.add_argument("--heavy-model", default=None, help="model id suffix with a heavy-tailed latency")
    p.add_argument("--heavy-ratio", type=float, default=10.0, help="that model's p99 / median")
    a = p.parse_args()
    opts = Options(
        latency_s=a.latency_ms / 1000,
        sigma=a.sigma,
        tokens=a.tokens,
        tokens_per_chunk=a.tokens_per_chunk,
        token_rate=a.token_rate,
        heavy_model=a.heavy_model,
        heavy_ratio=a.heavy_ratio,
    )

    async def serve() -> None:
        runner = web.AppRunner(make_app(opts), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", a.port, backlog=1024)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"ready {port}", flush=True)
        await asyncio.Event().wait()

    try:
        run_loop(serve())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
