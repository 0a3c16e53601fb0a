"""Modes `escalate` and `vote` through the gateway over real HTTP: the plugin and a preset select them,
the response's `fusion` object and the stored run carry the call count, the decision and the tally,
the new events ride the chat completions, Responses and Messages streams without breaking them, and
a bad `escalation` / `vote` field is a 400 naming it."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway_helpers import TEST_PRESET, Gateway, gateway_config
from panelfuse.testing import Script
from pipeline_helpers import analysis_for, labels_in

Q = [{"role": "user", "content": "What is 6 x 7?"}]
PRESETS = {
    "esc": {**TEST_PRESET, "mode": "escalate", "escalation": {"first_stage": 2, "rule": "final-answer"}},
    "votes": {**TEST_PRESET, "mode": "vote"},
}


@pytest.fixture
def gw(fake, tmp_path):
    config = gateway_config(fake)
    config.presets.update(PRESETS)
    gateway = Gateway(fake, f"sqlite+aiosqlite:///{tmp_path}/runs.db", config=config).start()
    yield gateway
    gateway.stop()


@pytest.fixture
def client(gw):
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def script(fake, m1: str, m2: str, m3: str = "42") -> None:
    for model, text in (("m1", m1), ("m2", m2), ("m3", m3)):
        fake.script(model, Script(text=text, prompt_tokens=10, completion_tokens=20))
    fake.script("synth", Script(text="Synthesized: 42.", prompt_tokens=200, completion_tokens=30))

    def judge(body: dict[str, Any]) -> Script:
        labels = labels_in(body)
        return Script(text=json.dumps({**analysis_for(labels), "contradictions": []}))

    fake.script("judge", judge)


def plugin(**fields: Any) -> dict[str, Any]:
    return {"plugins": [{"id": "fusion", **fields}]}


def test_escalate_through_the_plugin_shows_the_decision_and_the_calls(fake, gw, client):
    script(fake, "The answer is 42.", "42")
    raw = client.chat.completions.with_raw_response.create(
        model="panelfuse/fusion",
        messages=Q,
        extra_body=plugin(mode="escalate", escalation={"rule": "final-answer"}),
    )
    r = raw.parse()
    assert r.choices[0].message.content == "The answer is 42." and r.model == "fake/m1"
    fusion = r.model_extra["fusion"]
    assert fusion["mode"] == "escalate" and fusion["escalated"] is False and fusion["calls"] == 2
    assert fusion["escalation"]["rule"] == "final-answer" and fusion["escalation"]["first_stage"] == ["A", "B"]
    assert fusion["vote"] is None and [m["member"] for m in fusion["panel"]] == ["A", "B"]
    assert fake.requests_for("m3") == [] and fake.requests_for("judge") == [] and fake.requests_for("synth") == []
    # The stored run's result holds the same facts.
    stored = httpx.get(f"{gw.url}/v1/fusion/runs/{raw.headers['x-panelfuse-run-id']}").json()
    assert stored["result"]["calls"] == 2 and stored["result"]["escalated"] is False
    assert stored["cost"] == pytest.approx(r.usage.model_extra["cost"])


def test_escalate_through_a_preset_escalates_and_streams_the_decision(fake, gw):
    script(fake, "The answer is 41.", "42")
    body = {"model": "panelfuse/fusion-esc", "messages": Q, "stream": True}
    chunks: list[Any] = []
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: ") :]))
    assert all(len(c["choices"]) == 1 for c in chunks)
    events = [c["fusion"] for c in chunks if "event" in (c.get("fusion") or {})]
    decided = [e for e in events if e["event"] == "escalation.decided"]
    assert len(decided) == 1 and decided[0]["escalated"] is True and decided[0]["stage"] == "analysis"
    assert "differ" in decided[0]["reason"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Synthesized: 42."
    final = chunks[-1]["fusion"]
    assert final["escalated"] is True and final["calls"] == 5 and final["preset"] == "esc"
    assert len(fake.requests_for("m1")) == 1 and len(fake.requests_for("m3")) == 1


def test_vote_through_a_preset_reports_the_tally(fake, client):
    script(fake, "I get 41.", "The answer is 42.", "42")
    r = client.chat.completions.create(model="panelfuse/fusion-votes", messages=Q)
    assert r.choices[0].message.content == "The answer is 42."
    fusion = r.model_extra["fusion"]
    assert fusion["mode"] == "vote" and fusion["calls"] == 3 and fusion["escalated"] is None
    assert fusion["vote"]["winner"] == "B" and fusion["vote"]["groups"][0]["members"] == ["B", "C"]
    assert fusion["vote"]["groups"][0]["votes"] == 2 and fusion["synthesizer"] is None
    assert fake.requests_for("synth") == [] and fake.requests_for("judge") == []


def test_vote_through_the_plugin_with_the_judges_reading_streams(fake, client):
    script(fake, "Paris.", "Lyon", "It is Paris")
    fake.script("judge", Script(text=json.dumps({"groups": [["A", "C"], ["B"]]})))
    seen, text = [], ""
    for chunk in client.chat.completions.create(
        model="panelfuse/fusion", messages=Q, stream=True, extra_body=plugin(mode="vote", vote={"reading": "judge"})
    ):
        text += chunk.choices[0].delta.content or ""
        fusion = (chunk.model_extra or {}).get("fusion") or {}
        seen.append(fusion.get("event"))
        if chunk.choices[0].finish_reason:
            assert fusion["vote"]["reading"] == "judge" and fusion["calls"] == 4
    assert text == "Paris." and "vote.tallied" in seen


def test_the_new_events_do_not_break_the_responses_stream(fake, client):
    script(fake, "The answer is 41.", "42")
    with client.responses.stream(model="panelfuse/fusion-esc", input="What is 6 x 7?") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "Synthesized: 42." and final.status == "completed"


def test_the_new_events_do_not_break_the_messages_stream(fake, gw):
    script(fake, "I get 41.", "The answer is 42.", "42")
    with (
        anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0) as claude,
        claude.messages.stream(model="panelfuse/fusion-votes", max_tokens=100, messages=Q) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "The answer is 42." and final.stop_reason == "end_turn"


@pytest.mark.parametrize(
    ("fields", "param", "needle"),
    [
        ({"mode": "escalate", "escalation": {"first_stage": 3}}, "plugins[0].escalation.first_stage", "less than"),
        ({"mode": "escalate", "escalation": {"rule": "vibes"}}, "plugins[0].escalation.rule", "'judge'"),
        ({"mode": "escalate", "escalation": {"threshold": 2}}, "plugins[0].escalation.threshold", "less than"),
        ({"mode": "escalate", "escalation": {"bogus": 1}}, "plugins[0].escalation.bogus", "Extra inputs"),
        ({"mode": "vote", "vote": {"reading": "tea"}}, "plugins[0].vote.reading", "'normalise'"),
        (
            {"mode": "escalate", "escalation": {"rule": "overlap", "first_stage": 1}},
            "fusion.escalation",
            "needs first_stage 2",
        ),
        (
            {"mode": "escalate", "analysis_models": ["fake/m1"]},
            "fusion",
            "escalation.first_stage 2 is larger than the panel",
        ),
    ],
)
def test_a_bad_escalation_or_vote_field_is_a_400_naming_it(gw, fields, param, needle):
    body = {"model": "panelfuse/fusion", "messages": Q, **plugin(**fields)}
    r = httpx.post(f"{gw.url}/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and needle in err["message"]
