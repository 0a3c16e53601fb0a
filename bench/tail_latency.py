"""Tail latency of fusion runs on the fake upstream: how quorum and grace cut the slow tail.

Each member's time to first byte is lognormal (median 0.3 s, sigma 0.8: a few very slow calls), the
judge and synthesizer answer at once. Prints p50/p90/p99 of whole-run latency per configuration.

    .venv/bin/python bench/tail_latency.py [--runs 60] [--concurrency 12]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from panelfuse.config import Config, ProviderConfig
from panelfuse.pipeline.run import Fusion
from panelfuse.pricing import PriceTable
from panelfuse.providers.registry import Providers
from panelfuse.spec import FusionSpec
from panelfuse.testing import FakeUpstream, Script

ANALYSIS = {
    "consensus": ["x"],
    "contradictions": [],
    "partial_coverage": [],
    "unique_insights": [],
    "blind_spots": [],
    "anomalies": [],
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(fake: FakeUpstream, spec: FusionSpec, runs: int, concurrency: int) -> list[float]:
    cfg = Config(
        default_provider="fake",
        providers={"fake": ProviderConfig(kind="openai_compat", base_url=fake.openai_base_url, api_key="k")},
    )
    providers = Providers(cfg, env={})
    prices = PriceTable({}, "bench")
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one() -> None:
        async with gate:
            started = time.perf_counter()
            await Fusion(spec, providers=providers, prices=prices).run("q")
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one() for _ in range(runs)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=12)
    args = parser.parse_args()
    base = {
        "members": [{"model": f"fake/m{i}"} for i in range(1, 5)],
        "judge": {"model": "fake/judge"},
        "deadline_ms": 30_000,
        "max_tokens": 50,
    }
    configs = {
        "wait for all 4": FusionSpec.model_validate(base),
        "quorum 2, grace 200 ms": FusionSpec.model_validate({**base, "quorum": 2, "grace_ms": 200}),
        "quorum 3, grace 100 ms": FusionSpec.model_validate({**base, "quorum": 3, "grace_ms": 100}),
        "single member": FusionSpec.model_validate({**base, "mode": "single"}),
    }
    with FakeUpstream(seed=7) as fake:
        for i in range(1, 5):
            fake.script(f"m{i}", Script(text="an answer " * 20, latency=(0.3, 0.8)))
        fake.script("judge", Script(text=json.dumps(ANALYSIS)))
        print(f"{'configuration':26} {'p50 s':>7} {'p90 s':>7} {'p99 s':>7} {'mean s':>7}   ({args.runs} runs)")
        for name, spec in configs.items():
            lat = asyncio.run(measure(fake, spec, args.runs, args.concurrency))
            print(
                f"{name:26} {percentile(lat, 0.5):7.3f} {percentile(lat, 0.9):7.3f} {percentile(lat, 0.99):7.3f} "
                f"{statistics.mean(lat):7.3f}"
            )


if __name__ == "__main__":
    main()
