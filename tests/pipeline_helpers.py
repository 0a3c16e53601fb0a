"""Builders shared by the pipeline tests: a fake-backed Fusion and a scripted judge."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from conftest import fake_providers
from panelfuse.pipeline.run import Fusion, FusionStream
from panelfuse.pricing import Price, PriceTable
from panelfuse.spec import FusionSpec
from panelfuse.testing import FakeUpstream, Script

# Hand-set prices so cost assertions can be computed by hand: USD per million tokens.
PRICES = PriceTable(
    {
        "fake/m1": Price(1.0, 2.0),
        "fake/m2": Price(1.0, 2.0),
        "fake/m3": Price(1.0, 2.0),
        "fake/backup": Price(1.0, 2.0),
        "fake/judge": Price(3.0, 6.0),
        "fake/synth": Price(3.0, 6.0),
    },
    as_of="test",
)


def labels_in(body: dict[str, Any]) -> list[str]:
    """The labels the judge was shown, read from the request it received."""
    text = json.dumps(body.get("messages", []))
    return sorted(set(re.findall(r'label=\\"([A-H])\\"', text)))


def analysis_for(labels: list[str]) -> dict[str, Any]:
    first = labels[0]
    return {
        "consensus": ["the sky scatters blue light"],
        "contradictions": [{"topic": "cause", "stances": [{"model": lb, "stance": f"view {lb}"} for lb in labels]}],
        "partial_coverage": [{"models": labels[:2], "point": "sunsets are red"}],
        "unique_insights": [{"model": first, "insight": f"insight from {first}"}],
        "blind_spots": ["polarisation"],
        "anomalies": [],
    }


def judge_script(body: dict[str, Any]) -> Script:
    """A judge that answers with a valid analysis naming exactly the labels it was shown."""
    return Script(text=json.dumps(analysis_for(labels_in(body))), prompt_tokens=100, completion_tokens=50)


def spec(**kw: Any) -> FusionSpec:
    data: dict[str, Any] = {
        "members": [{"model": "fake/m1"}, {"model": "fake/m2"}, {"model": "fake/m3"}],
        "judge": {"model": "fake/judge"},
        "synthesizer": {"model": "fake/synth"},
        "deadline_ms": 10_000,
        "max_tokens": 100,
    }
    data.update(kw)
    return FusionSpec.model_validate(data)


def fusion(fake: FakeUpstream, s: FusionSpec, prices: PriceTable = PRICES) -> Fusion:
    return Fusion(s, providers=fake_providers(fake), prices=prices)


def script_panel(fake: FakeUpstream, **per_model: Script) -> None:
    """Default scripts for m1..m3, the judge and the synthesizer; keyword arguments override one model."""
    defaults = {
        "m1": Script(text="Rayleigh scattering makes the sky blue.", prompt_tokens=10, completion_tokens=20),
        "m2": Script(text="Shorter wavelengths scatter more.", prompt_tokens=10, completion_tokens=20),
        "m3": Script(text="Air molecules scatter blue light.", prompt_tokens=10, completion_tokens=20),
        "synth": Script(
            text="The sky is blue because air scatters short wavelengths.", prompt_tokens=200, completion_tokens=30
        ),
    }
    defaults.update(per_model)
    for model, script in defaults.items():
        fake.script(model, script)
    if "judge" not in per_model:
        fake.script("judge", judge_script)


async def cancel_once_in_flight(fake: FakeUpstream, stream: FusionStream, calls: int) -> None:
    """Read `stream` in a task until `calls` upstream calls are open at the fake, cancel the task, and
    wait until the fake has seen every call end."""

    async def consume() -> None:
        async for _ in stream:
            pass

    task = asyncio.create_task(consume())
    for _ in range(250):
        if fake.in_flight == calls:
            break
        await asyncio.sleep(0.02)
    assert fake.in_flight == calls
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fake.wait_idle_async(5.0)
