"""The fusion pipeline against the fake upstream over loopback: panel, quorum, grace, fallbacks,
analysis, synthesis, modes, cost and cancellation. No clocks in assertions."""

from __future__ import annotations

import asyncio
import json

import pytest

from panelfuse.pipeline.modes import mode_for
from panelfuse.pipeline.prompts import PROMPT_VERSION, SYNTHESIZER_NO_ANALYSIS
from panelfuse.pipeline.run import FusionError
from panelfuse.testing import Failure, Script
from pipeline_helpers import PRICES, analysis_for, cancel_once_in_flight, fusion, judge_script, script_panel, spec


async def test_all_members_are_in_flight_at_once(fake):
    script_panel(
        fake,
        m1=Script(text="one", latency=0.4),
        m2=Script(text="two", latency=0.4),
        m3=Script(text="three", latency=0.4),
    )
    result = await fusion(fake, spec()).run("Why is the sky blue?")
    assert fake.max_in_flight == 3
    assert [m.status for m in result.panel] == ["ok", "ok", "ok"]
    assert result.status == "completed" and not result.degraded
    assert result.content == "The sky is blue because air scatters short wavelengths."
    assert result.model == "fake/synth"
    assert result.prompt_version == PROMPT_VERSION


async def test_quorum_reached_with_one_member_failing(fake):
    script_panel(fake, m2=Script(failure=Failure.HTTP, status_code=401))
    result = await fusion(fake, spec()).run("q")
    statuses = {m.member: m.status for m in result.panel}
    assert statuses == {"A": "ok", "B": "failed", "C": "ok"}
    assert result.degraded
    assert [f.to_dict() for f in result.failed_models] == [
        {"member": "B", "model": "fake/m2", "status": "failed", "error": result.panel[1].error, "status_code": 401}
    ]
    # the judge saw only the members that answered
    assert json.dumps(fake.requests_for("judge")[0].body).count('label=\\"') == 2


async def test_quorum_missed_lists_every_member(fake):
    script_panel(
        fake,
        m1=Script(failure=Failure.HTTP, status_code=401),
        m2=Script(failure=Failure.HTTP, status_code=400),
        m3=Script(text="fine"),
    )
    with pytest.raises(FusionError) as info:
        await fusion(fake, spec(quorum=2)).run("q")
    message = str(info.value)
    assert "quorum is 2" in message
    assert "A (fake/m1): failed" in message and "B (fake/m2): failed" in message
    assert info.value.result.status == "failed"
    assert not fake.requests_for("judge")


async def test_grace_cuts_a_straggler_without_degrading(fake):
    script_panel(fake, m3=Script(text="late", latency=30))
    events = []
    f = fusion(fake, spec(grace_ms=50))
    stream = f.stream("q")
    async for ev in stream:
        events.append(ev.type)
    result = stream.result
    assert result.panel[2].status == "cut"
    assert "panel.cut" in events
    assert not result.degraded
    assert result.status == "completed"


async def test_fallback_is_used_and_reported(fake):
    script_panel(fake, m1=Script(failure=Failure.HTTP, status_code=401), backup=Script(text="backup answer"))
    s = spec(members=[{"model": "fake/m1", "fallbacks": ["fake/backup"]}, {"model": "fake/m2"}])
    f = fusion(fake, s)
    stream = f.stream("q")
    events = [ev async for ev in stream]
    fallback = [e for e in events if e.type == "panel.fallback"]
    assert len(fallback) == 1
    assert fallback[0].data["from"] == "fake/m1" and fallback[0].data["to"] == "fake/backup"
    member = stream.result.panel[0]
    assert member.status == "ok" and member.model == "fake/backup" and member.content == "backup answer"
    assert not stream.result.degraded


async def test_judge_broken_json_is_repaired(fake):
    truncated = json.dumps(analysis_for(["A", "B", "C"]))[:-40]  # cut mid-object, as a max_tokens stop would
    script_panel(fake, judge=Script(text=truncated))
    result = await fusion(fake, spec()).run("q")
    assert result.analysis is not None
    assert result.analysis_repaired
    assert result.analysis.consensus == ["the sky scatters blue light"]
    assert not result.degraded


async def test_judge_unreadable_twice_then_fallback_judge(fake):
    script_panel(fake, judge=Script(text="I refuse to write JSON."))
    fake.script("backup", judge_script)
    s = spec(judge={"model": "fake/judge", "fallbacks": ["fake/backup"]})
    f = fusion(fake, s)
    stream = f.stream("q")
    events = [ev async for ev in stream]
    assert len(fake.requests_for("judge")) == 2  # the first try and its one retry
    retry_body = json.dumps(fake.requests_for("judge")[1].body)
    assert "could not be used" in retry_body
    assert any(e.type == "analysis.fallback" for e in events)
    assert stream.result.analysis is not None and stream.result.judge.model == "fake/backup"


async def test_judge_failing_degrades_and_synthesizes_from_raw_answers(fake):
    script_panel(fake, judge=Script(failure=Failure.HTTP, status_code=401))
    f = fusion(fake, spec())
    stream = f.stream("q")
    events = [ev async for ev in stream]
    assert any(e.type == "analysis.failed" for e in events)
    assert stream.result.analysis is None and stream.result.degraded
    assert stream.result.status == "completed" and stream.result.content
    synth_body = json.dumps(fake.requests_for("synth")[0].body)
    assert SYNTHESIZER_NO_ANALYSIS.splitlines()[0] in json.loads(synth_body)["messages"][1]["content"]


async def test_labels_map_back_to_models(fake):
    script_panel(fake)
    s = spec(members=[{"model": "fake/m1"}, {"model": "fake/m2"}, {"model": "fake/m1"}])
    result = await fusion(fake, s).run("q")
    insight = result.analysis.to_dict()["unique_insights"][0]
    assert insight == {"model": "fake/m1", "member": "A", "insight": "insight from A"}
    stances = result.analysis.to_dict()["contradictions"][0]["stances"]
    assert [(st["member"], st["model"]) for st in stances] == [("A", "fake/m1"), ("B", "fake/m2"), ("C", "fake/m1")]
    partial = result.analysis.to_dict()["partial_coverage"][0]
    assert partial["models"] == ["fake/m1", "fake/m2"] and partial["members"] == ["A", "B"]
    # and the judge itself saw labels only, never model ids
    judge_text = json.dumps(fake.requests_for("judge")[0].body["messages"])
    assert "fake/m1" not in judge_text and "m2" not in judge_text


async def test_judge_gets_structured_output_schema_with_label_enum(fake):
    script_panel(fake)
    await fusion(fake, spec()).run("q")
    fmt = fake.requests_for("judge")[0].body["response_format"]
    schema = fmt["json_schema"]["schema"]
    assert fmt["type"] == "json_schema"
    assert schema["properties"]["unique_insights"]["items"]["properties"]["model"]["enum"] == ["A", "B", "C"]
    assert schema["properties"]["consensus"]["maxItems"] > 0
    assert fake.requests_for("judge")[0].body["temperature"] == 0.0


async def test_weights_reach_the_judge_prompt(fake):
    script_panel(fake)
    s = spec(members=[{"model": "fake/m1", "weight": 2}, {"model": "fake/m2", "weight": 0.5}, {"model": "fake/m3"}])
    await fusion(fake, s).run("q")
    instructions = fake.requests_for("judge")[0].body["messages"][-1]["content"]
    assert "A: 2" in instructions and "B: 0.5" in instructions


async def test_conversation_reaches_the_panel(fake):
    script_panel(fake)
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    await fusion(fake, spec(panel_sees="conversation")).run(conversation)
    assert fake.requests_for("m1")[0].body["messages"] == conversation
    fake.reset()
    script_panel(fake)
    await fusion(fake, spec()).run(conversation)  # the default, as on OpenRouter: the last user turn
    assert fake.requests_for("m2")[0].body["messages"] == [conversation[0], conversation[3]]
    # the judge still reads the whole conversation
    assert "My name is Ada." in json.dumps(fake.requests_for("judge")[0].body["messages"])


async def test_mode_single_uses_only_the_first_member(fake):
    script_panel(fake)
    result = await fusion(fake, spec(mode="fast")).run("q")
    assert result.mode == "single"
    assert result.content == "Rayleigh scattering makes the sky blue." and result.model == "fake/m1"
    assert not fake.requests_for("m2") and not fake.requests_for("judge")


async def test_mode_best_of_returns_the_chosen_answer_verbatim(fake):
    script_panel(fake, judge=Script(text=json.dumps({"best": "B", "reason": "most precise"})))
    result = await fusion(fake, spec(mode="best-of")).run("q")
    assert result.content == "Shorter wavelengths scatter more."
    assert result.model == "fake/m2"
    assert result.best_of.to_dict() == {"member": "B", "model": "fake/m2", "reason": "most precise"}
    assert not fake.requests_for("synth")


async def test_mode_judge_writes_streams_only_the_answer(fake):
    text = json.dumps(analysis_for(["A", "B", "C"])) + "\n=== ANSWER ===\nBlue light scatters most."
    script_panel(fake, judge=Script(text=text))
    f = fusion(fake, spec(mode="judge-writes"))
    stream = f.stream("q")
    deltas = [ev.data["text"] async for ev in stream if ev.type == "final.delta"]
    assert "".join(deltas).strip() == "Blue light scatters most."
    assert stream.result.analysis.consensus == ["the sky scatters blue light"]
    assert stream.result.model == "fake/judge"
    assert not fake.requests_for("synth")


async def test_mode_synthesize_streams_final_deltas(fake):
    script_panel(fake)
    f = fusion(fake, spec())
    stream = f.stream("q")
    events = [ev async for ev in stream]
    types = [e.type for e in events]
    assert types[0] == "run.started" and types[-1] == "run.completed"
    assert types.index("analysis.completed") < types.index("final.delta") < types.index("final.completed")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert "".join(e.data["text"] for e in events if e.type == "final.delta") == stream.result.content
    assert {e.stage for e in events if e.type.startswith("panel.")} == {"panel"}


async def test_costs_are_computed_per_member_and_stage(fake):
    script_panel(fake)
    fake.script("m2", Script(text="two", prompt_tokens=10, completion_tokens=20, cost=0.5))  # provider-reported
    fake.script(
        "judge",
        lambda body: Script(text=json.dumps(analysis_for(["A", "B", "C"])), prompt_tokens=100, completion_tokens=50),
    )
    result = await fusion(fake, spec()).run("q")
    member_cost = (10 * 1.0 + 20 * 2.0) / 1e6
    assert result.panel[0].cost == pytest.approx(member_cost)
    assert result.panel[1].cost == pytest.approx(0.5)  # the provider's figure wins
    assert result.judge.cost == pytest.approx((100 * 3.0 + 50 * 6.0) / 1e6)
    assert result.synthesizer.cost == pytest.approx((200 * 3.0 + 30 * 6.0) / 1e6)
    total = 2 * member_cost + 0.5 + (100 * 3 + 50 * 6) / 1e6 + (200 * 3 + 30 * 6) / 1e6
    assert result.cost == pytest.approx(total)
    assert result.usage.prompt_tokens == 10 * 3 + 100 + 200
    details = result.cost_details()
    assert details["panel"]["B"] == pytest.approx(0.5) and details["estimated"] is False


async def test_max_cost_refuses_a_run_whose_estimate_exceeds_it(fake):
    script_panel(fake)
    f = fusion(fake, spec(max_cost=0.0001))
    with pytest.raises(FusionError) as info:
        await f.run("q")
    assert "exceeds max_cost" in str(info.value)
    assert fake.requests == []  # refused before any call


async def test_max_cost_stops_new_calls_mid_run(fake):
    # Each member reports a cost far above its estimate: after the panel, the judge may not start.
    script_panel(
        fake,
        m1=Script(text="a", cost=0.4),
        m2=Script(text="b", cost=0.4),
        m3=Script(text="c", cost=0.4),
    )
    f = fusion(fake, spec(max_cost=1.0))
    result = await f.run("q")
    assert not fake.requests_for("judge") and not fake.requests_for("synth")
    assert result.stopped_by_max_cost and result.degraded
    assert result.content in ("a", "b", "c")
    assert result.cost == pytest.approx(1.2)
    assert "max_cost" in result.judge.error


async def test_cancelling_a_run_cancels_every_upstream_call(fake):
    script_panel(
        fake,
        m1=Script(text="slow " * 200, token_rate=5),
        m2=Script(text="slow " * 200, token_rate=5),
        m3=Script(text="late", latency=30),
    )
    stream = fusion(fake, spec()).stream("q")
    await cancel_once_in_flight(fake, stream, calls=3)
    assert fake.disconnects == 3
    assert stream.result.status == "cancelled"
    assert {m.status for m in stream.result.panel} == {"cancelled"}
    # streamed text of a cancelled call is billed as an estimate, and says so
    assert stream.result.cost_details()["estimated"] is True


async def test_estimate_matches_the_documented_formula(fake):
    s = spec(members=[{"model": "fake/m1", "fallbacks": ["fake/backup"]}, {"model": "fake/m2"}])
    f = fusion(fake, s)
    question = "x" * 400  # 100 tokens by chars/4, plus 4 for the role
    est = f.estimate(question)
    p = 104
    panel = 3 * (p * 1.0 + 100 * 2.0) / 1e6  # m1, its fallback, m2
    judge_prompt = p + 2 * 100 + 400
    judge = (judge_prompt * 3.0 + 100 * 6.0) / 1e6
    synth = ((judge_prompt + 100) * 3.0 + 100 * 6.0) / 1e6
    assert est.total == pytest.approx(panel + judge + synth)
    assert [c.who for c in est.calls] == ["A", "A", "B", "judge", "synthesizer"]
    assert est.unpriced == []


def test_spec_validation_names_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="members"):
        spec(members=[{"model": f"fake/m{i}"} for i in range(9)])
    with pytest.raises(ValidationError, match="quorum 4 is larger than the panel"):
        spec(quorum=4)
    with pytest.raises(ValidationError, match="colour"):
        spec(colour="blue")
    assert spec(mode="full").mode == "synthesize"
    with pytest.raises(ValidationError, match="one of the analysis's own keys"):
        spec(judge={"model": "fake/judge", "dimensions": ["anomalies"]})
    # one successful member is enough unless the spec asks for more (OpenRouter's behaviour)
    assert mode_for("synthesize").quorum(spec()) == 1 and mode_for("synthesize").quorum(spec(quorum=2)) == 2
    assert mode_for("single").quorum(spec(mode="single")) == 1


async def test_a_member_on_an_unconfigured_provider_fails_with_its_reason(fake):
    script_panel(fake)
    s = spec(members=[{"model": "local/no-such-model"}, {"model": "fake/m1"}, {"model": "fake/m2"}])
    result = await fusion(fake, s).run("q")
    assert result.panel[0].status == "failed"
    assert "unknown local model" in result.panel[0].error
    assert result.degraded and result.status == "completed"


def test_prices_table_lookup():
    assert PRICES.lookup("fake/m1").input == 1.0
    assert PRICES.lookup("local/smollm2").output == 0.0
    assert PRICES.lookup("openrouter/unknown/x") is None


async def test_a_bug_inside_the_pipeline_is_a_failed_run_not_a_crash(fake, monkeypatch):
    script_panel(fake)
    from panelfuse.pipeline.modes import synthesize as synthesize_module

    async def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(synthesize_module, "run_analysis", broken)
    f = fusion(fake, spec())
    stream = f.stream("q")
    events = [ev.type async for ev in stream]
    assert events[-1] == "run.failed"
    result = stream.result
    assert result.status == "failed" and "internal error" in result.error and "boom" in result.error


async def test_mode_single_streams_the_answer_live(fake):
    # The answer's deltas arrive while the member is still answering, not in one piece at the end.
    script_panel(fake, m1=Script(text="one two three four", token_rate=50))
    f = fusion(fake, spec(mode="single"))
    stream = f.stream("q")
    types = [ev.type async for ev in stream]
    finals = [i for i, t in enumerate(types) if t == "final.delta"]
    assert len(finals) == 4
    assert finals[0] < types.index("panel.completed")
    assert stream.result.content == "one two three four"


async def test_mode_single_falls_back_only_before_any_answer_text(fake):
    script_panel(fake, m1=Script(failure=Failure.HTTP, status_code=401), backup=Script(text="from backup"))
    s = spec(mode="single", members=[{"model": "fake/m1", "fallbacks": ["fake/backup"]}])
    f = fusion(fake, s)
    stream = f.stream("q")
    finals = [ev.data["text"] async for ev in stream if ev.type == "final.delta"]
    assert "".join(finals) == "from backup" and stream.result.model == "fake/backup"
    # a member cut after streaming part of its answer is not followed by a fallback's text
    fake.reset()
    script_panel(
        fake, m1=Script(text="a b c d e f", failure=Failure.CUT, cut_after_tokens=2), backup=Script(text="from backup")
    )
    f = fusion(fake, s)
    stream = f.stream("q")
    finals = [ev.data["text"] async for ev in stream if ev.type == "final.delta"]
    assert "".join(finals) == "a b "
    assert stream.result.status == "failed" and not fake.requests_for("backup")


async def test_reasoning_reaches_openai_style_members_only(fake):
    script_panel(fake)
    s = spec(reasoning={"effort": "high"}, members=[{"model": "fake/m1"}, {"model": "fakeanthropic/m2"}])
    await fusion(fake, s).run("q")
    assert fake.requests_for("m1")[0].body["reasoning"] == {"effort": "high"}
    assert "reasoning" not in fake.requests_for("m2")[0].body  # the Messages API has no such field
    assert fake.requests_for("judge")[0].body["reasoning"] == {"effort": "high"}  # panel and judge alike
    assert "reasoning" not in fake.requests_for("synth")[0].body  # the answer's is the request's own


async def test_judge_and_synthesizer_prompts_share_their_first_message(fake):
    """The request and the answers open both prompts byte for byte, so a provider's prompt cache (llama.cpp's
    slots, hosted prefix caching) reads them once; each stage's instructions come after."""
    script_panel(fake)
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]
    await fusion(fake, spec()).run(conversation)
    judge = fake.requests_for("judge")[0].body["messages"]
    synth = fake.requests_for("synth")[0].body["messages"]
    assert judge[0] == synth[0] and judge[0]["role"] == "system"
    assert "Why is the sky blue?" in judge[0]["content"] and '<answer label="A">' in judge[0]["content"]
    assert "analyst of a panel" in judge[1]["content"] and "analyst of a panel" not in judge[0]["content"]
    assert "The analysis:" in synth[1]["content"]
    # the user's own system message and turns follow, so the synthesizer answers the last turn
    assert synth[2:] == conversation


async def test_every_stage_reports_its_fallbacks_and_failures_the_same_way(fake):
    # One chain runner: the members', the judge's and the synthesizer's fallbacks are the same events.
    script_panel(
        fake,
        m1=Script(failure=Failure.HTTP, status_code=401),
        backup=Script(text="from backup", prompt_tokens=10, completion_tokens=5),
        synth=Script(failure=Failure.HTTP, status_code=400),
        synth2=Script(text="the fallback's synthesis", prompt_tokens=10, completion_tokens=5),
    )
    fake.script("judge", Script(failure=Failure.HTTP, status_code=401))
    fake.script("judge2", judge_script)
    s = spec(
        members=[{"model": "fake/m1", "fallbacks": ["fake/backup"]}, {"model": "fake/m2"}],
        judge={"model": "fake/judge", "fallbacks": ["fake/judge2"]},
        synthesizer={"model": "fake/synth", "fallbacks": ["fake/synth2"]},
    )
    stream = fusion(fake, s).stream("q")
    events = [ev async for ev in stream]
    fallbacks = {ev.type: ev.data for ev in events if ev.type.endswith(".fallback")}
    assert fallbacks["panel.fallback"] == {
        "from": "fake/m1",
        "to": "fake/backup",
        "reason": fallbacks["panel.fallback"]["reason"],
        "member": "A",
    }
    assert (fallbacks["analysis.fallback"]["from"], fallbacks["analysis.fallback"]["to"]) == (
        "fake/judge",
        "fake/judge2",
    )
    assert (fallbacks["synthesis.fallback"]["from"], fallbacks["synthesis.fallback"]["to"]) == (
        "fake/synth",
        "fake/synth2",
    )
    assert {ev.stage for ev in events if ev.type.endswith(".fallback")} == {"panel", "analysis", "synthesis"}
    assert stream.result.content == "the fallback's synthesis" and stream.result.model == "fake/synth2"
    # the last model of a chain failing is `<stage>.failed`, with the model and status
    fake.reset()
    script_panel(fake, synth=Script(failure=Failure.HTTP, status_code=400))
    fake.script("judge", judge_script)
    stream = fusion(fake, spec()).stream("q")
    failed = [ev async for ev in stream if ev.type == "synthesis.failed"]
    assert [(ev.data["model"], ev.data["status"], ev.stage) for ev in failed] == [("fake/synth", "failed", "synthesis")]


async def test_one_fusion_runs_two_streams_at_once(fake):
    script_panel(fake, m1=Script(text="slow answer " * 5, token_rate=100))
    fake.script("judge", judge_script)
    f = fusion(fake, spec())
    first, second = f.stream("first question"), f.stream("second question")

    async def drain(stream):
        return [ev async for ev in stream]

    a, b = await asyncio.gather(drain(first), drain(second))
    assert first.run_id != second.run_id
    assert {ev.run_id for ev in a} == {first.run_id} and {ev.run_id for ev in b} == {second.run_id}
    assert [ev.seq for ev in a] == list(range(1, len(a) + 1))
    assert first.result.status == second.result.status == "completed"
    assert first.result is not second.result and first.result.run_id == first.run_id
    asked = sorted(json.dumps(r.body["messages"]) for r in fake.requests_for("m2"))
    assert "first question" in asked[0] and "second question" in asked[1]


def test_the_mode_registry_and_the_spec_agree():
    from typing import get_args

    from panelfuse.pipeline.modes import MODES
    from panelfuse.spec import Mode

    assert set(MODES) == set(get_args(Mode))
    assert all(name == mode.name for name, mode in MODES.items())


def test_a_plan_for_another_conversation_has_that_conversations_estimate_and_verdict(fake):
    # The server tool plans once on the caller's conversation and runs the fusion on the outer model's
    # question: the verdict must be the question's, with nothing resolved again.
    long = [
        {"role": "user", "content": "Summarise the report."},
        {"role": "assistant", "content": "Reading it.", "name": "reader"},
        {"role": "user", "content": "lorem ipsum " * 20000},
    ]
    plan = fusion(fake, spec(max_cost=0.05)).plan(long)
    assert plan.refusal is not None and "exceeds max_cost" in plan.refusal
    asked = plan.with_messages("Is the plan sound?")
    assert asked.refusal is None and asked.estimate.total < plan.estimate.total
    assert asked.members == plan.members and asked.judge == plan.judge  # the same resolved calls
    assert asked.panel_messages == [{"role": "user", "content": "Is the plan sound?"}]
