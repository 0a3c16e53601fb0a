"""The real `local` preset end to end: three SmolLM2 members, a SmolLM2 judge and synthesizer."""

from __future__ import annotations

import jsonschema
import pytest

from conftest import require_local_extra
from panelfuse.pipeline.analysis import analysis_schema
from panelfuse.pipeline.run import Fusion
from panelfuse.spec import all_presets, spec_from_preset

pytestmark = pytest.mark.local_model

require_local_extra()


async def test_local_preset_end_to_end():
    spec = spec_from_preset("local", all_presets())
    fusion = Fusion(spec)
    stream = fusion.stream("Why is the sky blue?")
    events = [ev async for ev in stream]
    result = stream.result

    assert result.status == "completed", result.error
    assert not result.degraded
    assert [m.status for m in result.panel] == ["ok", "ok", "ok"]
    answers = [m.content for m in result.panel]
    assert all(a.strip() for a in answers)
    assert len(set(answers)) > 1  # different temperatures and seeds give different samples

    # the analysis, with labels mapped back, is still valid against the bounded schema once the
    # labels are put back in place of the model ids
    relabelled = _relabel(result.analysis.to_dict())
    jsonschema.validate(relabelled, analysis_schema(["A", "B", "C"]))
    assert result.content.strip()

    calls = [c for m in result.panel for c in m.calls] + result.judge.calls + result.synthesizer.calls
    assert len(calls) == 5
    assert all(c.usage.prompt_tokens > 0 and c.usage.completion_tokens > 0 for c in calls)
    assert result.cost == 0.0
    assert any(ev.type == "final.delta" for ev in events)


def _relabel(value):
    if isinstance(value, dict):
        out = {k: _relabel(v) for k, v in value.items() if k not in ("member", "members")}
        if "member" in value:
            out["model"] = value["member"]
        if "members" in value:
            out["models"] = value["members"]
        return out
    if isinstance(value, list):
        return [_relabel(v) for v in value]
    return value
