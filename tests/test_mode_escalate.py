"""Mode `escalate` over the fake upstream: it escalates exactly when its rule says so, asks the first
stage once, and its cost and call count are those of the calls it made (read off the fake's log)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from panelfuse.pipeline.escalation import by_analysis, by_final_answer, by_overlap, by_verdict
from panelfuse.pipeline.verdicts import Verdict
from panelfuse.spec import FusionSpec
from panelfuse.testing import Failure, Script
from pipeline_helpers import PRICES, analysis_for, fusion, labels_in, spec

# Every call's usage is scripted, so each call's price is known: (prompt, completion) tokens per model.
TOKENS = {"m1": (10, 20), "m2": (10, 20), "m3": (10, 20), "judge": (100, 50), "synth": (200, 30)}


def agreeing_analysis(labels: list[str]) -> dict[str, Any]:
    return {**analysis_for(labels), "contradictions": []}


def judge(contradicts: bool, verdict: str = "sure"):
    """A judge that reads what it is asked: a verdict (one answer, the verdict prompt), else an analysis
    with or without a contradiction."""

    def answer(body: dict[str, Any]) -> Script:
        asked = json.dumps(body.get("messages", []))
        if '\\"verdict\\"' in asked:
            text = json.dumps({"verdict": verdict, "reason": "checked"})
        else:
            labels = labels_in(body)
            text = json.dumps(analysis_for(labels) if contradicts else agreeing_analysis(labels))
        return Script(text=text, prompt_tokens=TOKENS["judge"][0], completion_tokens=TOKENS["judge"][1])

    return answer


def script(fake, m1: str, m2: str, m3: str = "Air scatters blue light.", *, contradicts=False, verdict="sure"):
    for model, text in (("m1", m1), ("m2", m2), ("m3", m3)):
        fake.script(model, Script(text=text, prompt_tokens=10, completion_tokens=20))
    fake.script("synth", Script(text="The synthesized answer.", prompt_tokens=200, completion_tokens=30))
    fake.script("judge", judge(contradicts, verdict))


def escalate(**escalation: Any) -> FusionSpec:
    return spec(mode="escalate", escalation=escalation)


def calls_by_model(fake) -> dict[str, int]:
    return {m: len(fake.requests_for(m)) for m in TOKENS}


def priced(fake) -> float:
    """What the calls in the fake's log cost at the test prices: the run's cost must be this."""
    total = 0.0
    for model, n in calls_by_model(fake).items():
        price = PRICES.lookup(f"fake/{model}")
        prompt, completion = TOKENS[model]
        total += n * (prompt * price.input + completion * price.output) / 1e6
    return total


# --- the rules, end to end ---------------------------------------------------------------------------


async def test_judge_rule_no_contradiction_answers_with_the_first_member(fake):
    script(fake, "Rayleigh scattering.", "Rayleigh scattering, mostly.")
    stream = fusion(fake, escalate(rule="judge")).stream("Why is the sky blue?")
    events = [e async for e in stream]
    result = stream.result
    assert result.status == "completed" and result.content == "Rayleigh scattering."
    assert result.escalated is False and result.model == "fake/m1"
    assert calls_by_model(fake) == {"m1": 1, "m2": 1, "m3": 0, "judge": 1, "synth": 0}
    assert result.calls == 3 and result.synthesizer is None
    assert result.analysis is not None and result.analysis.contradictions == []  # the first stage's analysis
    assert result.cost == pytest.approx(priced(fake))
    assert result.degraded is False and [m.member for m in result.panel] == ["A", "B"]
    decided = [e for e in events if e.type == "escalation.decided"]
    assert len(decided) == 1 and decided[0].data["escalated"] is False and decided[0].stage == "analysis"
    assert decided[0].data["first_stage"] == ["A", "B"] and decided[0].data["rule"] == "judge"


async def test_judge_rule_contradiction_escalates_to_the_full_panel(fake):
    script(fake, "Rayleigh scattering.", "The ocean reflects.", contradicts=True)
    stream = fusion(fake, escalate(rule="judge")).stream("Why is the sky blue?")
    types = [e.type async for e in stream]
    result = stream.result
    assert result.status == "completed" and result.content == "The synthesized answer."
    assert result.escalated is True and "contradiction" in result.escalation.reason
    # The first stage is not asked twice; the judge reads twice (the decision, then the full analysis).
    assert calls_by_model(fake) == {"m1": 1, "m2": 1, "m3": 1, "judge": 2, "synth": 1}
    assert result.calls == 6
    assert labels_in(fake.requests_for("judge")[1].body) == ["A", "B", "C"]
    assert result.cost == pytest.approx(priced(fake))
    assert result.gate is not None and result.judge is not None and result.synthesizer is not None
    assert result.cost_details()["gate"] == pytest.approx((100 * 3.0 + 50 * 6.0) / 1e6)
    assert [m.member for m in result.panel] == ["A", "B", "C"] and result.degraded is False
    assert types.index("escalation.decided") < types.index("final.delta")
    assert types.count("analysis.completed") == 2


async def test_overlap_rule_needs_no_model_call(fake):
    script(fake, "The sky is blue because of Rayleigh scattering.", "Rayleigh scattering makes the sky blue.")
    result = await fusion(fake, escalate(rule="overlap", threshold=0.5)).run("Why is the sky blue?")
    assert result.escalated is False and result.escalation.score == pytest.approx(4 / 6)  # "because", "makes"
    assert calls_by_model(fake) == {"m1": 1, "m2": 1, "m3": 0, "judge": 0, "synth": 0}
    assert result.calls == 2 and result.cost == pytest.approx(priced(fake)) and result.gate is None


async def test_overlap_rule_escalates_below_its_threshold(fake):
    script(fake, "Rayleigh scattering of sunlight.", "Reflection from the ocean surface.")
    result = await fusion(fake, escalate(rule="overlap")).run("Why is the sky blue?")
    assert result.escalated is True and result.escalation.score == 0.0
    assert calls_by_model(fake) == {"m1": 1, "m2": 1, "m3": 1, "judge": 1, "synth": 1}
    assert result.calls == 5 and result.cost == pytest.approx(priced(fake))


@pytest.mark.parametrize(
    ("a", "b", "escalated"),
    [("The answer is 42.", "42", False), ("The answer is 42.", "I get 41.", True), ("(C)", "The answer is C", False)],
)
async def test_final_answer_rule(fake, a, b, escalated):
    script(fake, a, b)
    result = await fusion(fake, escalate(rule="final-answer")).run("What is 6 x 7?")
    assert result.escalated is escalated
    assert len(fake.requests_for("m3")) == int(escalated) and len(fake.requests_for("synth")) == int(escalated)
    assert result.content == (a if not escalated else "The synthesized answer.")
    assert result.cost == pytest.approx(priced(fake))


@pytest.mark.parametrize(("verdict", "escalated"), [("sure", False), ("unsure", True)])
async def test_one_member_first_stage_asks_the_judge_for_a_verdict(fake, verdict, escalated):
    script(fake, "Rayleigh scattering.", "Shorter wavelengths scatter more.", verdict=verdict)
    result = await fusion(fake, escalate(first_stage=1, rule="judge")).run("Why is the sky blue?")
    assert result.escalated is escalated and result.escalation.first_stage == ("A",)
    verdict_prompt = json.dumps(fake.requests_for("judge")[0].body["messages"])
    assert '\\"verdict\\"' in verdict_prompt and 'label=\\"A\\"' in verdict_prompt
    assert 'label=\\"B\\"' not in verdict_prompt
    if escalated:
        assert calls_by_model(fake) == {"m1": 1, "m2": 1, "m3": 1, "judge": 2, "synth": 1}
        assert result.content == "The synthesized answer."
    else:
        assert calls_by_model(fake) == {"m1": 1, "m2": 0, "m3": 0, "judge": 1, "synth": 0}
        assert result.content == "Rayleigh scattering." and result.analysis is None and result.degraded is False
    assert result.calls == sum(calls_by_model(fake).values()) and result.cost == pytest.approx(priced(fake))


async def test_an_unreadable_verdict_escalates(fake):
    script(fake, "Rayleigh scattering.", "Shorter wavelengths scatter more.")
    fake.script("judge", Script(text="probably fine", prompt_tokens=100, completion_tokens=50), judge(False))
    result = await fusion(fake, escalate(first_stage=1)).run("Why is the sky blue?")
    assert result.escalated is True and "verdict failed" in result.escalation.reason
    assert result.content == "The synthesized answer."


async def test_a_failed_first_stage_member_escalates_and_counts_its_call(fake):
    script(fake, "Rayleigh scattering.", "unused", contradicts=False)
    fake.script("m2", Script(failure=Failure.HTTP, status_code=400))
    result = await fusion(fake, escalate(rule="overlap")).run("Why is the sky blue?")
    assert result.escalated is True and "did not answer" in result.escalation.reason
    assert result.status == "completed" and [m.status for m in result.panel] == ["ok", "failed", "ok"]
    assert len(fake.requests_for("m2")) == 1 and result.calls == 5  # m1, m2 (failed), m3, judge, synth


async def test_a_fallback_call_counts(fake):
    script(fake, "The answer is 42.", "42")
    fake.script("m1", Script(failure=Failure.HTTP, status_code=400))
    fake.script("backup", Script(text="The answer is 42.", prompt_tokens=10, completion_tokens=20))
    s = spec(
        mode="escalate",
        escalation={"rule": "final-answer"},
        members=[{"model": "fake/m1", "fallbacks": ["fake/backup"]}, {"model": "fake/m2"}, {"model": "fake/m3"}],
    )
    result = await fusion(fake, s).run("What is 6 x 7?")
    assert result.escalated is False and result.content == "The answer is 42." and result.model == "fake/backup"
    assert result.calls == 3  # m1 failed, its fallback, m2


async def test_the_estimate_counts_the_full_path(fake):
    script(fake, "a", "b")
    full = fusion(fake, spec()).plan("Why is the sky blue?").estimate
    judged = fusion(fake, escalate(rule="judge")).plan("Why is the sky blue?").estimate
    free = fusion(fake, escalate(rule="overlap")).plan("Why is the sky blue?").estimate
    assert free.total == pytest.approx(full.total)  # every member, the judge and the synthesizer
    gate = [c for c in judged.calls if c.who == "gate"]
    assert gate and judged.total == pytest.approx(full.total + sum(c.cost for c in gate))
    assert {c.who for c in judged.calls if c.stage == "panel"} == {"A", "B", "C"}


async def test_a_resynthesis_of_an_escalate_run_takes_the_full_path(fake):
    script(fake, "Rayleigh scattering.", "The ocean reflects.", contradicts=True)
    first = await fusion(fake, escalate()).run("Why is the sky blue?")
    fake.requests.clear()
    again = await fusion(fake, escalate()).run("Why is the sky blue?", reuse_panel=first.panel)
    assert again.content == "The synthesized answer." and again.escalation is None
    assert calls_by_model(fake) == {"m1": 0, "m2": 0, "m3": 0, "judge": 1, "synth": 1}


# --- the spec ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("escalation", "members", "needle"),
    [
        ({"rule": "overlap", "first_stage": 1}, 3, "needs first_stage 2"),
        ({"threshold": 0.4}, 3, "threshold applies to rule 'overlap' only"),
        ({"first_stage": 3}, 3, "first_stage"),
        ({"rule": "vibes"}, 3, "rule"),
        ({"rule": "overlap", "threshold": 1.5}, 3, "threshold"),
        ({"first_stage": 2}, 1, "escalation.first_stage 2 is larger than the panel"),
    ],
)
def test_the_spec_names_the_bad_field(escalation, members, needle):
    with pytest.raises(ValidationError) as exc:
        spec(mode="escalate", escalation=escalation, members=[{"model": "fake/m1"}] * members)
    assert needle in str(exc.value)


# --- the pure decisions -----------------------------------------------------------------------------


def test_decisions():
    assert by_overlap("red apple", "red apple", 0.5).escalate is False
    assert by_overlap("red apple", "green pear", 0.5).escalate is True
    assert by_overlap("a b c d", "a b c e", 0.5).score == pytest.approx(0.5)  # "a" is a function word
    assert by_overlap("a b c d", "a b c e", 0.5).escalate is False  # escalates only below the threshold
    assert by_final_answer("The answer is 42.", "42.0").escalate is False
    assert by_final_answer("", "42").escalate is True
    assert by_verdict(None, "boom").escalate is True
    assert by_verdict(Verdict(True, "ok"), None).escalate is False
    assert by_verdict(Verdict(False, "hedges"), None).reason == "the judge is unsure: hedges"
    assert by_analysis(None, "timeout").escalate is True


# --- what the CLI shows -----------------------------------------------------------------------------


async def test_the_cli_progress_shows_the_decision_and_the_gate(fake):
    from rich.console import Console

    from panelfuse.cli.progress import ProgressPrinter

    script(fake, "Rayleigh [scattering].", "The ocean reflects.", contradicts=True)
    console = Console(record=True, width=200)
    printer = ProgressPrinter(console)
    stream = fusion(fake, escalate(rule="judge")).stream("Why is the sky blue?")
    async for ev in stream:
        printer.handle(ev)
    printer.totals(stream.result)
    text = console.export_text()
    assert "Escalation (judge): escalated to the full panel: the judge found 1 contradiction(s)" in text
    assert "escalation" in text and "The synthesized answer." in text
