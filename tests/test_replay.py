"""A response cache hit's result and stream (pipeline/replay.py), without a server: a real run's stored
result comes back as a completed, undegraded, free run that names its source and calls nobody."""

from __future__ import annotations

from panelfuse.pipeline.replay import ReplayStream, replayed_result
from pipeline_helpers import fusion, script_panel, spec


async def test_a_stored_run_replays_as_a_free_completed_run(fake):
    script_panel(fake)
    f = fusion(fake, spec(cache_ttl_s=60))
    paid = await f.run("Why is the sky blue?")
    assert paid.cost and paid.calls == 5 and not paid.degraded
    stored = paid.to_dict()
    calls = len(fake.requests)

    plan = f.plan("Why is the sky blue?")
    hit = replayed_result(
        stored, run_id="run_hit", spec=plan.spec, source_run_id=paid.run_id, finish_reason=paid.finish_reason
    )
    assert hit.status == "running"  # until its stream has emitted it
    stream = ReplayStream(f, plan, hit)
    types = [ev.type async for ev in stream]
    assert types == ["run.started", "final.delta", "final.completed", "run.completed"]
    assert len(fake.requests) == calls  # nobody was called
    result = stream.result
    assert result.status == "completed" and result.run_id == "run_hit"
    assert result.content == paid.content and result.model == paid.model
    assert result.cost == 0 and result.calls == 0 and result.usage.prompt_tokens == 0
    assert result.cached is True and result.cached_from == paid.run_id and not result.degraded
    assert result.analysis == paid.analysis
    assert [m.content for m in result.panel] == [m.content for m in paid.panel]
    out = result.to_dict()
    assert out["cached"] is True and out["calls"] == 0 and out["usage"]["cost"] == 0
    completed = stream.log.events[-1].data
    assert completed["cost"] == 0 and completed["degraded"] is False


def test_what_an_older_version_stored_still_replays():
    hit = replayed_result(
        {"content": "an answer", "model": "fake/synth", "analysis": {"not": "an analysis"}, "best_of": {"x": 1}},
        run_id="run_hit",
        spec=spec(),
        source_run_id="run_old",
    )
    assert hit.content == "an answer" and hit.analysis is None and not hit.degraded
    assert hit.best_of is not None and hit.escalation is None and hit.vote is None
