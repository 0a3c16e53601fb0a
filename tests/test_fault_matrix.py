"""Reliability: the regression tests of issue 15's bugs, then the fault matrix of docs/reliability.md
(one case per row of its table, run over HTTP against a real gateway on loopback and the fake upstream).
"""

from __future__ import annotations

import asyncio

import pytest

from panelfuse.testing import Failure, Script
from pipeline_helpers import fusion, script_panel, spec

SLOW = 30.0  # seconds of latency: far past every deadline below, so only a deadline can end the wait
DEEP = "[" * 1200  # a judge output nested past Python's recursion limit

# --- regressions (the pipeline in process: fast) ----------------------------------------------------


async def run(f, question: str = "Why is the sky blue?", guard: float = 10.0):
    """Run to the end; `guard` seconds is the test's own bound (the run must have ended by then)."""
    stream = f.stream(question)
    async with asyncio.timeout(guard):
        events = [ev async for ev in stream]
    return stream.result, events


def types(events) -> list[str]:
    return [e.type for e in events]


@pytest.mark.parametrize(
    "raw",
    ['{"choices": ["x"]}', '{"choices": [], "usage": {"prompt_tokens": "abc"}}', '{"choices": [{"delta": 5}]}'],
)
@pytest.mark.parametrize("wire", ["fake", "fakeanthropic"])
async def test_a_members_malformed_chunk_fails_that_member_only(fake, raw, wire):
    if wire == "fakeanthropic":
        raw = '{"type": "message_start", "message": {"usage": {"input_tokens": "abc"}}}' if "abc" in raw else raw
        raw = raw.replace('"choices"', '"type": "content_block_delta", "delta"')
    script_panel(fake, m2=Script(failure=Failure.MALFORMED_CHUNK, raw_chunk=raw))
    members = [{"model": "fake/m1"}, {"model": f"{wire}/m2", "fallbacks": ["fake/m3"]}, {"model": "fake/m3"}]
    result, events = await run(fusion(fake, spec(members=members)))
    assert result.status == "completed" and result.degraded is False  # the fallback answered
    fallback = next(e for e in events if e.type == "panel.fallback")
    assert "malformed response from upstream" in fallback.data["reason"]
    assert result.panel[1].status == "ok" and result.panel[1].model == "fake/m3"


async def test_a_malformed_chunk_without_fallback_degrades_the_run(fake):
    script_panel(fake, m2=Script(failure=Failure.MALFORMED_CHUNK, raw_chunk='{"choices": ["x"]}'))
    result, _ = await run(fusion(fake, spec()))
    assert result.status == "completed" and result.degraded
    (failed,) = result.failed_models
    assert failed.member == "B" and failed.status == "failed" and "malformed response from upstream" in failed.error
    assert result.content == "The sky is blue because air scatters short wavelengths."


async def test_a_deeply_nested_judge_output_drops_the_analysis_not_the_run(fake):
    script_panel(fake, judge=Script(text=DEEP))
    result, events = await run(fusion(fake, spec()))
    assert result.status == "completed" and result.degraded and result.analysis is None
    assert len(fake.requests_for("judge")) == 2  # the repair retry, then the analysis is given up
    assert "nested deeper" in result.judge.error and "analysis.failed" in types(events)
    assert result.content == "The sky is blue because air scatters short wavelengths."


async def test_best_of_with_a_deeply_nested_judge_output_chooses_by_weight(fake):
    script_panel(fake, judge=Script(text=DEEP))
    members = [{"model": "fake/m1"}, {"model": "fake/m2", "weight": 2.0}, {"model": "fake/m3"}]
    result, _ = await run(fusion(fake, spec(mode="best-of", members=members)))
    assert result.status == "completed" and result.best_of.member == "B"
    assert result.content == "Shorter wavelengths scatter more." and "by weight" in result.best_of.reason


@pytest.mark.parametrize("text", ["", "  \n\t "])
async def test_an_empty_synthesizer_answer_is_a_failed_call(fake, text):
    script_panel(fake, synth=Script(text=text, failure=Failure.EMPTY if not text else None))
    result, events = await run(fusion(fake, spec()))
    assert result.status == "completed" and result.degraded
    assert "synthesis.failed" in types(events)
    assert "empty answer" in result.error and "the answer is member A's, verbatim" in result.error
    assert result.content == "Rayleigh scattering makes the sky blue."
    assert "".join(e.data["text"] for e in events if e.type == "final.delta") == result.content


async def test_an_empty_synthesizer_answer_falls_back(fake):
    script_panel(fake, synth=Script(text=" "), backup=Script(text="The backup's answer."))
    result, events = await run(fusion(fake, spec(synthesizer={"model": "fake/synth", "fallbacks": ["fake/backup"]})))
    assert result.status == "completed" and not result.degraded and result.content == "The backup's answer."
    assert "synthesis.fallback" in types(events)
    assert "".join(e.data["text"] for e in events if e.type == "final.delta") == "The backup's answer."


async def test_deadline_ms_bounds_the_whole_run(fake):
    # Every stage slow: only the run's deadline (1 s) can end it; per call (the old meaning) it took 3 s.
    script_panel(
        fake,
        m2=Script(latency=SLOW),
        m3=Script(latency=SLOW),
        judge=Script(latency=SLOW),
        synth=Script(latency=SLOW),
    )
    result, _ = await run(fusion(fake, spec(deadline_ms=1000)), guard=1.0 + 0.75)
    assert result.status == "completed" and result.degraded
    assert {f.status for f in result.failed_models} == {"timeout"}
    assert all("deadline passed" in f.error for f in result.failed_models)
    assert "deadline passed" in result.judge.error and "deadline passed" in result.error
    assert result.content == "Rayleigh scattering makes the sky blue."  # the one member that answered
    assert await fake.wait_idle_async(2.0)  # every upstream call was cancelled


async def test_a_run_past_its_deadline_in_the_panel_fails_naming_it(fake):
    script_panel(fake, m1=Script(latency=SLOW), m2=Script(latency=SLOW), m3=Script(latency=SLOW))
    result, events = await run(fusion(fake, spec(deadline_ms=600)), guard=0.6 + 0.75)
    assert result.status == "failed" and types(events)[-1] == "run.failed"
    assert "deadline passed" in result.error and len(result.failed_models) == 3
    assert await fake.wait_idle_async(2.0)
