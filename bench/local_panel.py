"""The embedded panel end to end: where the time of a local fusion goes.

Runs the `local` preset (three SmolLM2-135M members, SmolLM2 judge and synthesizer) on the README
question through the same pipeline real models use, and prints per-stage wall time, tokens/s and the
end-to-end figure (median over runs). Each run is a fresh process, as `panelfuse ask` is: the model
load is timed on its own, and no run finds the previous run's prompts in the engine's cache (the
preset's seeds make every run's answers identical, so a warm engine would flatter the figures).

    .venv/bin/python bench/local_panel.py [--runs 5] [--question "Why is the sky blue?"] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

from panelfuse.pipeline.run import Fusion
from panelfuse.providers.base import ChatRequest
from panelfuse.providers.local import LocalProvider
from panelfuse.spec import all_presets, spec_from_preset


@dataclass
class Stage:
    start: float | None = None
    end: float | None = None
    tokens: int = 0

    @property
    def seconds(self) -> float:
        return (self.end or 0.0) - (self.start or 0.0)


@dataclass
class RunTimes:
    total: float = 0.0
    stages: dict[str, Stage] = field(default_factory=dict)


async def one_run(question: str, max_tokens: int | None) -> RunTimes:
    spec = spec_from_preset("local", all_presets(), **({"max_tokens": max_tokens} if max_tokens else {}))
    fusion = Fusion(spec)
    times = RunTimes(stages={"panel": Stage(), "analysis": Stage(), "synthesis": Stage()})
    t0 = time.monotonic()

    def mark(stage: str, end: bool) -> None:
        now = time.monotonic() - t0
        s = times.stages[stage]
        if end:
            s.end = now
        elif s.start is None:
            s.start = now

    stream = fusion.stream(question)
    async for ev in stream:
        head = ev.type
        if head == "panel.started":
            mark("panel", end=False)
        elif head in ("panel.completed", "panel.failed", "panel.cut"):
            mark("panel", end=True)
        elif head == "analysis.started":
            mark("analysis", end=False)
        elif head in ("analysis.completed", "analysis.failed"):
            mark("analysis", end=True)
            mark("synthesis", end=False)
        elif head == "final.completed":
            mark("synthesis", end=True)
    times.total = time.monotonic() - t0
    result = stream.result
    assert result.status == "completed", result.error
    times.stages["panel"].tokens = sum(c.usage.completion_tokens for m in result.panel for c in m.calls)
    times.stages["analysis"].tokens = sum(c.usage.completion_tokens for c in result.judge.calls)
    times.stages["synthesis"].tokens = sum(c.usage.completion_tokens for c in result.synthesizer.calls)
    return times


async def child(question: str, max_tokens: int | None) -> None:
    t = time.monotonic()
    await LocalProvider().complete(
        ChatRequest(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=1, seed=0)
    )
    load = time.monotonic() - t
    r = await one_run(question, max_tokens)
    stages = {k: {"seconds": v.seconds, "tokens": v.tokens} for k, v in r.stages.items()}
    print(json.dumps({"load": load, "total": r.total, "stages": stages}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--question", default="Why is the sky blue?")
    ap.add_argument("--max-tokens", type=int, default=None, help="override the preset's limit per call")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        asyncio.run(child(args.question, args.max_tokens))
        return

    runs = []
    for _ in range(args.runs):
        cmd = [sys.executable, __file__, "--child", "--question", args.question]
        if args.max_tokens:
            cmd += ["--max-tokens", str(args.max_tokens)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))

    limit = f", max_tokens {args.max_tokens}" if args.max_tokens else ""
    print(f"local preset{limit}, {args.runs} runs in fresh processes (median), question {args.question!r}")
    print(f"{'model load':<10} {statistics.median(r['load'] for r in runs):>8.2f}")
    print(f"{'stage':<10} {'wall s':>8} {'tokens':>7} {'tokens/s':>9}")
    for name in ("panel", "analysis", "synthesis"):
        secs = statistics.median(r["stages"][name]["seconds"] for r in runs)
        toks = statistics.median(r["stages"][name]["tokens"] for r in runs)
        print(f"{name:<10} {secs:>8.2f} {toks:>7.0f} {toks / secs if secs else 0:>9.1f}")
    totals = [r["total"] for r in runs]
    print(f"{'end-to-end':<10} {statistics.median(totals):>8.2f}   (min {min(totals):.2f}, max {max(totals):.2f})")


if __name__ == "__main__":
    main()
