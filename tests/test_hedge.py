"""Hedged member calls (`hedge_ms`, pipeline/hedge.py) against the fake upstream over loopback: the
duplicate starts after the delay and the first answer wins, the loser's upstream request is cancelled,
a failure on either side leaves the other going, the events never mix two calls' text, both calls are
billed and counted, the estimate holds the duplicate, and the plugin's field reaches the spec or is a
400 naming it. Delays are far apart (0.05 s against seconds); no clock is asserted beyond ordering."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from panelfuse.pipeline.events import Event
from panelfuse.pipeline.result import FusionResult
from panelfuse.testing import Failure, FakeUpstream, Script
from pipeline_helpers import cancel_once_in_flight, fusion, script_panel, spec

ONE = [{"model": "fake/m1", "fallbacks": ["fake/backup"]}]


async def run(fake: FakeUpstream, **kw: Any) -> tuple[list[Event], FusionResult]:
    stream = fusion(fake, spec(**kw)).stream("q")
    events = [ev async for ev in stream]
    return events, stream.result


def of(events: list[Event], member: str = "A") -> list[Event]:
    return [e for e in events if e.data.get("member") == member]


def kinds(events: list[Event], member: str = "A") -> list[str]:
    """The member's event types, a run of deltas as one (how tokens split into reads varies)."""
    out: list[str] = []
    for e in of(events, member):
        if not (e.type == "panel.delta" and out and out[-1] == "panel.delta"):
            out.append(e.type)
    return out


def member_text(events: list[Event], member: str = "A") -> str:
    """What a stream reader shows for a member: its deltas, started over after a fallback or a hedge's win."""
    text = ""
    for e in of(events, member):
        if e.type in ("panel.fallback", "panel.hedge_won"):
            text = ""
        elif e.type == "panel.delta":
            text += e.data["text"]
    return text


async def test_a_slow_first_call_is_hedged_and_the_faster_duplicate_wins(fake):
    script_panel(fake, m1=Script(text="slow answer", latency=30), backup=Script(text="backup answer"))
    events, result = await run(fake, members=ONE, hedge_ms=50)
    member = result.panel[0]
    assert member.status == "ok" and member.model == "fake/backup" and member.content == "backup answer"
    assert member.hedge is not None and member.hedge.model == "fake/backup" and member.hedge.won
    assert member.hedge.after_ms >= 50
    types = kinds(events)
    assert types == ["panel.started", "panel.hedged", "panel.hedge_won", "panel.delta", "panel.completed"]
    hedged = of(events)[1].data
    assert (hedged["from"], hedged["to"]) == ("fake/m1", "fake/backup") and hedged["after_ms"] >= 50
    assert member_text(events) == "backup answer"
    assert not result.degraded and result.status == "completed"
    # The slow first call's upstream request was cancelled, not left to run for 30 s.
    assert await fake.wait_idle_async(5.0)
    assert fake.disconnects == 1 and len(fake.requests_for("m1")) == 1
    # Both calls are the member's and the run's, and the stored shape says which won.
    assert sorted(c.model for c in member.calls) == ["fake/backup", "fake/m1"]  # in the order they ended
    assert result.calls == 4  # m1, its duplicate, the judge, the synthesizer
    assert result.to_dict()["panel"][0]["hedge"] == {
        "model": "fake/backup",
        "after_ms": member.hedge.after_ms,
        "won": True,
    }


async def test_no_hedge_when_the_member_answers_in_time(fake):
    script_panel(fake)
    events, result = await run(fake, hedge_ms=5_000)
    assert not [e for e in events if e.type.startswith("panel.hedge")]
    assert all(m.hedge is None and len(m.calls) == 1 for m in result.panel)
    assert result.to_dict()["panel"][0]["hedge"] is None
    assert result.calls == 5 and not fake.requests_for("backup")


async def test_the_first_call_wins_when_the_duplicate_is_slower(fake):
    script_panel(fake, m1=Script(text="first answer", latency=1.0), backup=Script(text="late", latency=30))
    events, result = await run(fake, members=ONE, hedge_ms=50)
    member = result.panel[0]
    assert member.model == "fake/m1" and member.content == "first answer"
    assert member.hedge is not None and member.hedge.model == "fake/backup" and not member.hedge.won
    types = kinds(events)
    assert types == ["panel.started", "panel.hedged", "panel.delta", "panel.completed"]
    assert member_text(events) == "first answer"
    assert await fake.wait_idle_async(5.0)
    assert fake.disconnects == 1  # the duplicate's request
    # The cancelled duplicate streamed nothing: it is in the calls, at no cost.
    assert {c.model: c.cost for c in member.calls} == {"fake/m1": pytest.approx(member.cost), "fake/backup": 0.0}


async def test_without_a_fallback_the_duplicate_goes_to_the_same_model(fake):
    script_panel(fake, m1=Script(text="slow", latency=30))
    fake.script("m1", Script(text="slow", latency=30), Script(text="quick"))
    events, result = await run(fake, members=[{"model": "fake/m1"}], hedge_ms=50)
    member = result.panel[0]
    assert member.content == "quick" and member.model == "fake/m1"
    assert member.hedge is not None and member.hedge.model == "fake/m1" and member.hedge.won
    assert len(fake.requests_for("m1")) == 2
    assert member_text(events) == "quick"


async def test_a_failing_first_call_hands_over_to_the_running_duplicate(fake):
    script_panel(
        fake,
        m1=Script(failure=Failure.HTTP, status_code=401, latency=0.5),
        backup=Script(text="backup answer", latency=1.5),
    )
    events, result = await run(fake, members=ONE, hedge_ms=50)
    member = result.panel[0]
    assert member.status == "ok" and member.model == "fake/backup" and member.content == "backup answer"
    assert member.hedge is not None and member.hedge.won
    types = kinds(events)
    # The duplicate takes over as a fallback would: no second backup request, no hedge_won.
    assert types == ["panel.started", "panel.hedged", "panel.fallback", "panel.delta", "panel.completed"]
    assert len(fake.requests_for("backup")) == 1
    assert member_text(events) == "backup answer"


async def test_a_failing_duplicate_leaves_the_first_call_going(fake):
    script_panel(
        fake, m1=Script(text="first answer", latency=1.0), backup=Script(failure=Failure.HTTP, status_code=401)
    )
    events, result = await run(fake, members=ONE, hedge_ms=50)
    member = result.panel[0]
    assert member.status == "ok" and member.model == "fake/m1" and member.content == "first answer"
    assert member.hedge is not None and not member.hedge.won
    assert kinds(events) == ["panel.started", "panel.hedged", "panel.delta", "panel.completed"]
    assert not result.degraded and len(member.calls) == 2


async def test_when_both_fail_the_chain_goes_on_with_the_fallbacks_left(fake):
    script_panel(
        fake,
        m1=Script(failure=Failure.HTTP, status_code=401, latency=0.8),
        backup=Script(failure=Failure.HTTP, status_code=401, latency=0.2),
        m2=Script(text="third answer"),
    )
    chain = [{"model": "fake/m1", "fallbacks": ["fake/backup", "fake/m2"]}]
    events, result = await run(fake, members=chain, hedge_ms=50)
    member = result.panel[0]
    assert member.status == "ok" and member.model == "fake/m2" and member.content == "third answer"
    assert member.hedge is not None and member.hedge.model == "fake/backup" and not member.hedge.won
    fallbacks = [(e.data["from"], e.data["to"]) for e in events if e.type == "panel.fallback"]
    assert fallbacks == [("fake/m1", "fake/m2")]  # the backup was tried already, by the hedge
    assert [c.model for c in member.calls] == ["fake/backup", "fake/m1", "fake/m2"]
    assert member_text(events) == "third answer"


async def test_a_member_without_fallbacks_fails_when_both_calls_fail(fake):
    script_panel(fake, m1=Script(failure=Failure.HTTP, status_code=401, latency=0.3))
    events, result = await run(fake, members=[{"model": "fake/m1"}, {"model": "fake/m2"}], hedge_ms=50)
    member = result.panel[0]
    assert member.status == "failed" and member.status_code == 401 and len(member.calls) == 2
    assert kinds(events)[-1] == "panel.failed"
    assert result.status == "completed" and result.degraded


async def test_the_stream_never_mixes_two_calls_text(fake):
    # The first call streams slowly; the duplicate answers whole while it does, and wins.
    script_panel(
        fake,
        m1=Script(text="a b c d e f g h i j k l", token_rate=4),
        backup=Script(text="x y z", latency=0.3),
    )
    events, result = await run(fake, members=ONE, hedge_ms=100)
    member = result.panel[0]
    assert member.content == "x y z" and member.hedge is not None and member.hedge.won
    mine = of(events)
    won = next(i for i, e in enumerate(mine) if e.type == "panel.hedge_won")
    before = "".join(e.data["text"] for e in mine[:won] if e.type == "panel.delta")
    after = [e.data["text"] for e in mine[won:] if e.type == "panel.delta"]
    assert "a b c d e f g h i j k l".startswith(before) and before  # only the first call's text, live
    assert after == ["x y z"]  # then only the winner's, in one piece
    assert member_text(events) == "x y z"
    # The loser had streamed text: its call is billed from it, as an estimate, not silently free.
    loser = next(c for c in member.calls if c.model == "fake/m1")
    assert loser.cost_estimated and loser.cost and loser.cost > 0
    assert member.cost == pytest.approx(sum(c.cost or 0 for c in member.calls))
    assert result.cost_details()["estimated"] is True


async def test_single_mode_hedges_before_any_answer_text(fake):
    script_panel(fake, m1=Script(text="slow", latency=30), backup=Script(text="backup answer"))
    events, result = await run(fake, mode="single", members=ONE, hedge_ms=50)
    finals = [e.data["text"] for e in events if e.type == "final.delta"]
    assert "".join(finals) == "backup answer" and result.content == "backup answer"
    assert result.panel[0].hedge is not None and result.panel[0].hedge.won
    assert [e.type for e in events].index("panel.hedge_won") < [e.type for e in events].index("final.delta")


async def test_single_mode_never_replaces_answer_text_the_caller_has(fake):
    # The first call's text reaches the caller at once: the duplicate is never started, or is cancelled.
    script_panel(fake, m1=Script(text="a b c d e f g h", token_rate=8), backup=Script(text="backup answer"))
    events, result = await run(fake, mode="single", members=ONE, hedge_ms=100)
    finals = "".join(e.data["text"] for e in events if e.type == "final.delta")
    assert finals == "a b c d e f g h" == result.content
    hedge = result.panel[0].hedge
    assert hedge is None or not hedge.won
    assert "panel.hedge_won" not in [e.type for e in events]


async def test_a_member_may_set_its_own_hedge_delay(fake):
    script_panel(fake, m1=Script(text="slow", latency=30), backup=Script(text="backup answer"))
    members = [{"model": "fake/m1", "fallbacks": ["fake/backup"], "hedge_ms": 50}, {"model": "fake/m2"}]
    _, result = await run(fake, members=members)
    assert result.panel[0].hedge is not None and result.panel[0].hedge.won
    assert result.panel[1].hedge is None


async def test_a_cancelled_run_cancels_both_calls(fake):
    script_panel(fake, m1=Script(text="slow", latency=30), backup=Script(text="slow too", latency=30))
    stream = fusion(fake, spec(members=ONE, hedge_ms=50)).stream("q")
    await cancel_once_in_flight(fake, stream, calls=2)  # the first call and its duplicate
    assert fake.disconnects == 2
    assert stream.result.status == "cancelled" and len(stream.result.panel[0].calls) == 2


def test_the_estimate_counts_the_duplicate_of_a_member_without_fallbacks(fake):
    members = [{"model": "fake/m1"}, {"model": "fake/m2", "fallbacks": ["fake/backup"]}]
    plain = fusion(fake, spec(members=members)).estimate("q")
    hedged = fusion(fake, spec(members=members, hedge_ms=300)).estimate("q")
    assert [c.who for c in plain.calls if c.stage == "panel"] == ["A", "B", "B"]
    assert [(c.who, c.model) for c in hedged.calls if c.stage == "panel"] == [
        ("A", "fake/m1"),
        ("A", "fake/m1"),  # the duplicate; B's goes to its fallback, counted already
        ("B", "fake/m2"),
        ("B", "fake/backup"),
    ]
    extra = next(c for c in plain.calls if c.who == "A").cost
    assert hedged.total == pytest.approx(plain.total + extra)


def test_hedge_ms_comes_from_a_preset_and_the_plugin():
    from panelfuse.service.plugin import spec_from_request
    from panelfuse.service.requests import ChatCompletionRequest, FusionPlugin

    presets = {"p": {"members": ["fake/m1"], "judge": "fake/judge", "hedge_ms": 400}}
    req = ChatCompletionRequest(model="panelfuse/fusion", messages=[{"role": "user", "content": "q"}])
    assert spec_from_request(req, None, "p", "p", presets).hedge_ms == 400
    plugin = FusionPlugin(id="fusion", hedge_ms=250, analysis_models=[{"model": "fake/m1", "hedge_ms": 90}])
    s = spec_from_request(req, plugin, "p", "p", presets)
    assert s.hedge_ms == 250 and s.members[0].hedge_ms == 90


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"hedge_ms": -1}, "plugins[0].hedge_ms"),
        ({"hedge_ms": "soon"}, "plugins[0].hedge_ms"),
        ({"hedge_ms": 10**12}, "plugins[0].hedge_ms"),
        ({"analysis_models": [{"model": "fake/m1", "hedge_ms": -5}]}, "plugins[0].analysis_models"),
    ],
)
def test_a_bad_hedge_ms_is_a_400_naming_it(gateway, fields, param):
    body = {"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "q"}]}
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json={**body, "plugins": [{"id": "fusion", **fields}]})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"].startswith(param), err
    assert "hedge_ms" in err["param"] or "hedge_ms" in err["message"]


def test_the_gateway_reports_the_hedge_in_the_response_and_the_stored_run(fake, gateway):
    script_panel(fake, m1=Script(text="slow", latency=30), backup=Script(text="backup answer"))
    plugin = {"id": "fusion", "hedge_ms": 50, "analysis_models": [{"model": "fake/m1", "fallbacks": ["fake/backup"]}]}
    body = {"model": "panelfuse/fusion", "messages": [{"role": "user", "content": "q"}], "plugins": [plugin]}
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    fusion_obj = r.json()["fusion"]
    assert fusion_obj["panel"][0]["hedge"]["model"] == "fake/backup" and fusion_obj["panel"][0]["hedge"]["won"]
    assert fusion_obj["calls"] == 4
    stored = httpx.get(f"{gateway.url}/v1/fusion/runs/{r.headers['x-panelfuse-run-id']}", timeout=10).json()
    assert stored["result"]["panel"][0]["hedge"] == fusion_obj["panel"][0]["hedge"]
    assert stored["result"]["calls"] == 4
    assert stored["cost"] == pytest.approx(r.json()["usage"]["cost"])
