"""The Anthropic Messages API (`/v1/messages`), driven by the official `anthropic` SDK against a real
gateway on loopback: a fusion alias and proxied models (an OpenAI-compatible upstream translated, an
Anthropic upstream natively), streaming, tool use round-trips, usage and errors in Anthropic's shape."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import anthropic
import httpx
import pytest

from gateway_helpers import Gateway, gateway_config
from panelfuse.config import ProviderConfig
from panelfuse.store import RunStore
from panelfuse.testing import Script
from pipeline_helpers import script_panel

SYNTH = "The sky is blue because air scatters short wavelengths."
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def gw(fake, tmp_path):
    config = gateway_config(fake)
    config.providers["anth"] = ProviderConfig(kind="anthropic", base_url=fake.anthropic_base_url, api_key="anth-key")
    gateway = Gateway(fake, f"sqlite+aiosqlite:///{tmp_path}/runs.db", config=config).start()
    yield gateway
    gateway.stop()


@pytest.fixture
def claude(gw):
    with anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0) as client:
        yield client


def ask(**kw):
    return {"max_tokens": 200, "messages": [{"role": "user", "content": "Why is the sky blue?"}], **kw}


def test_a_fusion_alias_answers_as_an_anthropic_message(fake, claude):
    script_panel(fake)
    msg = claude.messages.create(model="panelfuse/fusion", **ask(system="Be brief."))
    assert msg.type == "message" and msg.role == "assistant"
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == SYNTH
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    fusion = msg.model_extra["fusion"]
    assert fusion["analysis"]["consensus"] == ["the sky scatters blue light"] and fusion["status"] == "completed"
    members = fake.requests_for("m1")
    assert members[0].body["messages"][0] == {"role": "system", "content": "Be brief."}


def test_a_fusion_alias_streams_anthropic_events(fake, claude):
    script_panel(fake)
    with claude.messages.stream(model="panelfuse/fusion", **ask()) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == SYNTH
    assert final.content[0].text == SYNTH and final.stop_reason == "end_turn" and final.usage.output_tokens > 0


def test_the_stream_pings_while_the_panel_works_and_carries_progress_on_request(fake, gw):
    script_panel(fake, m1=Script(text="slow but sure", latency=0.8))
    body = ask(model="panelfuse/fusion", stream=True, fusion_events=True)
    with httpx.stream("POST", f"{gw.url}/v1/messages", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        names = [line[7:] for line in r.iter_lines() if line.startswith("event: ")]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert "ping" in names  # the keep-alive, while the slow member thinks
    assert "fusion" in names  # the extension: the run's progress, asked for with fusion_events
    kinds = [n for n in names if n not in ("ping", "fusion")]
    assert kinds == ["message_start", "content_block_start", *["content_block_delta"] * (len(kinds) - 5),
                     "content_block_stop", "message_delta", "message_stop"]  # fmt: skip


def test_a_proxied_openai_compatible_model_create_and_stream(fake, claude):
    fake.script("m1", Script(text="Scattering.", prompt_tokens=12, completion_tokens=3))
    # This SDK sends sampling settings through extra_body (newer Claude models dropped them).
    msg = claude.messages.create(model="fake/m1", extra_body={"temperature": 0.2}, **ask(stop_sequences=["END"]))
    assert msg.content[0].text == "Scattering." and msg.model == "fake/m1"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (12, 3)
    sent = fake.requests_for("m1")[-1].body
    assert sent["max_tokens"] == 200 and sent["temperature"] == 0.2 and sent["stop"] == ["END"]
    with claude.messages.stream(model="fake/m1", **ask()) as stream:
        assert "".join(stream.text_stream) == "Scattering."
        assert stream.get_final_message().usage.output_tokens == 3


@pytest.mark.parametrize("streaming", [False, True])
def test_tool_use_round_trip_on_a_proxied_model(fake, claude, streaming):
    fake.script(
        "m1",
        Script(tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "call_1"}]),
        Script(text="It is cold in Oslo."),
    )
    first = ask(tools=[WEATHER], tool_choice={"type": "auto"})
    if streaming:
        with claude.messages.stream(model="fake/m1", **first) as stream:
            msg = stream.get_final_message()
    else:
        msg = claude.messages.create(model="fake/m1", **first)
    (call,) = [b for b in msg.content if b.type == "tool_use"]
    assert (call.name, call.input, msg.stop_reason) == ("get_weather", {"city": "Oslo"}, "tool_use")
    offered = fake.requests_for("m1")[-1].body["tools"][0]["function"]
    assert offered["name"] == "get_weather" and offered["parameters"] == WEATHER["input_schema"]
    follow = {
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "-5 C"}]},
        ],
    }
    answer = claude.messages.create(model="fake/m1", max_tokens=100, tools=[WEATHER], **follow)
    assert answer.content[0].text == "It is cold in Oslo." and answer.stop_reason == "end_turn"
    sent = fake.requests_for("m1")[-1].body["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": json.dumps({"city": "Oslo"})}
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "-5 C"}


def test_an_anthropic_upstream_is_called_natively(fake, claude):
    fake.script("claude-x", Script(text="Native.", prompt_tokens=5, completion_tokens=2))
    msg = claude.messages.create(
        model="anth/claude-x",
        thinking={"type": "enabled", "budget_tokens": 1024},
        service_tier="auto",
        extra_body={"top_k": 5},
        **ask(max_tokens=2000),
    )
    assert msg.content[0].text == "Native." and (msg.usage.input_tokens, msg.usage.output_tokens) == (5, 2)
    sent = fake.requests_for("claude-x")[-1]
    assert sent.headers["x-api-key"] == "anth-key"  # the operator's Anthropic key, on Anthropic's wire
    assert sent.body["thinking"] == {"type": "enabled", "budget_tokens": 1024} and sent.body["top_k"] == 5
    assert sent.body["service_tier"] == "auto"  # Anthropic's own fields pass through to Anthropic


def test_the_anthropic_base_url_path_works_too(fake, gw):
    fake.script("m1", Script(text="Same route."))
    with anthropic.Anthropic(base_url=f"{gw.url}/anthropic", api_key="unused", max_retries=0) as client:
        assert client.messages.create(model="fake/m1", **ask()).content[0].text == "Same route."


def test_errors_come_in_anthropics_shape_and_parse_as_the_sdks_errors(fake, claude, gw):
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model="fake/m1", max_tokens=0, messages=[{"role": "user", "content": "q"}])
    assert bad.value.body["type"] == "error" and bad.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="panelfuse/fusion-nope", **ask())
    assert missing.value.body["error"]["type"] == "not_found_error"
    raw = httpx.post(f"{gw.url}/v1/messages", json={"model": "fake/m1", "messages": []}, timeout=10)
    assert raw.status_code == 400 and raw.json()["type"] == "error"
    fake.script("m1", Script(failure="500"))
    with pytest.raises(anthropic.APIStatusError) as upstream:
        claude.messages.create(model="fake/m1", **ask())
    assert upstream.value.status_code == 502 and upstream.value.body["error"]["type"] == "api_error"


def test_a_failed_fusion_stream_ends_with_an_error_event(fake, claude):
    failing = Script(failure="500")
    script_panel(fake, m1=failing, m2=failing, m3=failing)
    with (
        pytest.raises(anthropic.APIStatusError) as failed,
        claude.messages.stream(model="panelfuse/fusion", **ask()) as s,
    ):
        "".join(s.text_stream)
    assert "fusion failed" in str(failed.value)


def test_keys_apply_to_the_messages_api(fake, tmp_path):
    db = f"sqlite+aiosqlite:///{tmp_path}/runs.db"

    async def key():
        async with await RunStore.open(db) as store:
            return await store.keys.create("claude-users", budget_usd=1.0)

    created = asyncio.run(key())
    gateway = Gateway(fake, db).start()
    try:
        with anthropic.Anthropic(base_url=gateway.url, api_key="pf-wrong", max_retries=0) as wrong:
            with pytest.raises(anthropic.AuthenticationError) as denied:
                wrong.messages.create(model="fake/m1", **ask())
            assert denied.value.body["error"]["type"] == "authentication_error"
        fake.script("m1", Script(text="ok", prompt_tokens=10, completion_tokens=5))
        with anthropic.Anthropic(base_url=gateway.url, api_key=created.secret, max_retries=0) as right:
            assert right.messages.create(model="fake/m1", **ask()).content[0].text == "ok"

        async def spent():
            async with await RunStore.open(db) as store:
                fresh = await store.keys.get(created.key.id)
                return fresh.spent_usd, fresh.reserved_usd

        spend, held = asyncio.run(spent())
        assert spend > 0 and held == 0.0  # billed like any proxied call
    finally:
        gateway.stop()


def test_the_readme_example_works_as_written(fake, gw, capsys):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = re.split(r"\n##+ ", readme.split("### The Anthropic Messages API", 1)[1], maxsplit=1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    script_panel(fake)
    exec(compile(code.replace("http://127.0.0.1:8000", gw.url), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == SYNTH  # the answer
    assert printed[1].endswith("['the sky scatters blue light']")  # usage, then the analysis's consensus
    assert printed[2] == SYNTH  # the stream, printed as it came
