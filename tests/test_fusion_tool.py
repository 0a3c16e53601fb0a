"""Fusion as a server tool on any model, through the official openai SDK; the outer model is scripted."""

from __future__ import annotations

import json

import httpx
import openai

from panelfuse.testing import Script
from pipeline_helpers import script_panel

FUSION_TOOL = {
    "type": "panelfuse:fusion",
    "parameters": {"analysis_models": ["fake/m1", "fake/m2"], "model": "fake/judge"},
}
CALL_FUSION = Script(tool_calls=[{"name": "panelfuse_fusion", "arguments": {"question": "Why is the sky blue?"}}])


def tool_messages(body):
    return [json.loads(m["content"]) for m in body["messages"] if m["role"] == "tool"]


def test_outer_model_calls_the_fusion_and_answers(fake, client):
    script_panel(fake)
    fake.script(
        "outer",
        CALL_FUSION,
        Script(text="The panel agrees: scattering.", prompt_tokens=50, completion_tokens=10, cost=0.001),
    )
    r = client.chat.completions.create(
        model="fake/outer", messages=[{"role": "user", "content": "Why blue?"}], tools=[FUSION_TOOL]
    )
    assert r.choices[0].message.content == "The panel agrees: scattering."
    outer_requests = fake.requests_for("outer")
    assert len(outer_requests) == 2
    offered = [t["function"]["name"] for t in outer_requests[0].body["tools"]]
    assert offered == ["panelfuse_fusion"]
    result = tool_messages(outer_requests[1].body)[0]
    assert result["status"] == "ok"
    assert result["analysis"]["consensus"] == ["the sky scatters blue light"]
    assert {x["model"] for x in result["responses"]} == {"fake/m1", "fake/m2"}
    assert result["failed_models"] == []
    assert not fake.requests_for("m3") and not fake.requests_for("synth")  # panel + analysis only
    usage = r.usage.model_extra
    assert usage["server_tool_use_details"] == {
        "tool_calls_requested": 1,
        "tool_calls_executed": 1,
        "web_search_requests": 0,
    }
    assert usage["cost"] > 0.001  # the outer call's own cost plus the fusion's inner costs
    assert r.model_extra["fusion"]["mode"] == "analyze"


def test_a_second_fusion_call_is_capped(fake, client):
    script_panel(fake)
    fake.script("outer", CALL_FUSION, CALL_FUSION, Script(text="done"))
    r = client.chat.completions.create(
        model="fake/outer", messages=[{"role": "user", "content": "q"}], tools=[FUSION_TOOL]
    )
    assert r.choices[0].message.content == "done"
    results = tool_messages(fake.requests_for("outer")[2].body)
    assert results[0]["status"] == "ok"
    assert results[1] == {
        "status": "error",
        "error": "only one fusion may run per request",
        "failure_reason": "fusion_invocation_capped",
    }
    assert len(fake.requests_for("judge")) == 1
    details = r.usage.model_extra["server_tool_use_details"]
    assert details["tool_calls_requested"] == 2 and details["tool_calls_executed"] == 1


def test_recursion_guard(fake, gateway):
    script_panel(fake)
    fake.script("outer", CALL_FUSION, Script(text="ok"))
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0) as c:
        c.chat.completions.create(model="fake/outer", messages=[{"role": "user", "content": "q"}], tools=[FUSION_TOOL])
    # every call made for the fusion carries the depth header...
    assert fake.requests_for("m1")[0].headers["x-panelfuse-fusion-depth"] == "1"
    assert fake.requests_for("judge")[0].headers["x-panelfuse-fusion-depth"] == "1"
    assert "x-panelfuse-fusion-depth" not in fake.requests_for("outer")[0].headers
    # ...and a gateway starts no fusion on a request that carries it: as on OpenRouter, the outer model
    # runs without the fusion tool (tests/test_openrouter_compat.py covers the alias and the plugin)
    fake.script("outer", Script(text="alone"))
    body = {"model": "fake/outer", "messages": [{"role": "user", "content": "q"}], "tools": [FUSION_TOOL]}
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers={"X-Panelfuse-Fusion-Depth": "1"})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "alone"
    assert "tools" not in fake.requests_for("outer")[-1].body
    assert len(fake.requests_for("m1")) == 1  # no second fusion


def test_mixed_with_a_client_function_tool(fake, client):
    script_panel(fake)
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    fake.script("outer", CALL_FUSION, Script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}]))
    r = client.chat.completions.create(
        model="fake/outer", messages=[{"role": "user", "content": "q"}], tools=[FUSION_TOOL, weather]
    )
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    assert r.choices[0].finish_reason == "tool_calls"
    offered = {t["function"]["name"] for t in fake.requests_for("outer")[0].body["tools"]}
    assert offered == {"get_weather", "panelfuse_fusion"}


def test_tool_choice_forces_the_fusion_once(fake, client):
    script_panel(fake)
    fake.script("outer", CALL_FUSION, Script(text="answered"))
    r = client.chat.completions.create(
        model="fake/outer",
        messages=[{"role": "user", "content": "q"}],
        tools=[FUSION_TOOL],
        tool_choice={"type": "panelfuse:fusion"},
    )
    assert r.choices[0].message.content == "answered"
    first, second = fake.requests_for("outer")
    assert first.body["tool_choice"] == {"type": "function", "function": {"name": "panelfuse_fusion"}}
    assert second.body["tool_choice"] == "auto"


def test_streaming_carries_the_fusion_progress(fake, client):
    script_panel(fake)
    fake.script("outer", CALL_FUSION, Script(text="Streamed final answer."))
    chunks = list(
        client.chat.completions.create(
            model="fake/outer", messages=[{"role": "user", "content": "q"}], tools=[FUSION_TOOL], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    events = [c.model_extra["fusion"]["event"] for c in chunks if "event" in (c.model_extra.get("fusion") or {})]
    assert text == "Streamed final answer."
    assert "panel.completed" in events and "analysis.completed" in events
    assert chunks[-1].usage.model_extra["server_tool_use_details"]["tool_calls_executed"] == 1


def test_bad_fusion_tool_parameters_are_a_400(gateway):
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={
            "model": "fake/outer",
            "messages": [{"role": "user", "content": "q"}],
            "tools": [{"type": "openrouter:fusion", "parameters": {"colour": "blue"}}],
        },
    )
    assert r.status_code == 400 and "colour" in r.json()["error"]["message"]
