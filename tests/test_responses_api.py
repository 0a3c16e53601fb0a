"""POST /v1/responses over real HTTP on loopback, driven by the official OpenAI SDK (`client.responses`),
LangChain and plain httpx; upstream is the fake."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from gateway_helpers import Gateway
from panelfuse.pipeline.prompts import ANSWER_MARKER
from panelfuse.store import RunStore
from panelfuse.testing import Failure, Script
from pipeline_helpers import analysis_for, judge_script, script_panel

ANSWER = "The sky is blue because air scatters short wavelengths."
FUSION_TOOL = {
    "type": "openrouter:fusion",
    "parameters": {"analysis_models": ["fake/m1", "fake/m2"], "model": "fake/judge"},
}
CALL_FUSION = Script(tool_calls=[{"name": "panelfuse_fusion", "arguments": {"question": "Why is the sky blue?"}}])
LOOKUP = {
    "type": "function",
    "name": "lookup",
    "description": "look a word up",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
}


def post(gateway, body, **kw):
    kw.setdefault("timeout", 30)
    return httpx.post(f"{gateway.url}/v1/responses", json=body, **kw)


def sse_events(text: str) -> list[tuple[str, dict]]:
    """(event line, data) of each frame; keep-alive comments skipped."""
    out = []
    for frame in text.split("\n\n"):
        lines = [ln for ln in frame.splitlines() if not ln.startswith(":")]
        if not lines:
            continue
        event = next(ln.removeprefix("event: ") for ln in lines if ln.startswith("event: "))
        data = json.loads(next(ln.removeprefix("data: ") for ln in lines if ln.startswith("data: ")))
        out.append((event, data))
    return out


def user_turns(body) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


# --- the fusion alias --------------------------------------------------------------------------------


def test_fusion_alias_answers_a_response_with_the_fusion_item(fake, client):
    script_panel(fake)
    r = client.responses.create(model="panelfuse/fusion", input="Why blue?", metadata={"ticket": "7"})
    assert r.object == "response" and r.status == "completed" and r.id.startswith("resp_")
    assert r.output_text == ANSWER
    assert r.model == "fake/synth" and r.metadata == {"ticket": "7"}
    fusion, message = r.output
    assert message.type == "message" and message.status == "completed" and message.role == "assistant"
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    item = fusion.model_dump()
    assert item["type"] == "openrouter:fusion" and item["status"] == "completed"
    assert item["analysis"]["consensus"] == ["the sky scatters blue light"]
    assert {x["model"] for x in item["responses"]} == {"fake/m1", "fake/m2", "fake/m3"}
    assert "Rayleigh scattering makes the sky blue." in [x["content"] for x in item["responses"]]
    assert item["failed_models"] == [] and item["failure_reason"] is None and item["error"] is None
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.model_extra["cost"] > 0
    # the run behind it is stored and named by the id
    run_id = "run_" + r.id.removeprefix("resp_")
    assert httpx.get(f"{client.base_url}fusion/runs/{run_id}").json()["status"] == "completed"


def test_fusion_alias_streams_every_event_the_sdk_reads(fake, client):
    script_panel(fake)
    events = list(client.responses.create(model="panelfuse/fusion", input="Why blue?", stream=True))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.fusion_call.in_progress",
    ]
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for kind in (
        "response.fusion_call.panel.added",
        "response.fusion_call.panel.delta",
        "response.fusion_call.panel.completed",
        "response.fusion_call.analysis.in_progress",
        "response.fusion_call.analysis.completed",
        "response.fusion_call.completed",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert kind in types, kind
    # the fusion call finishes before the answer starts; its item is done with the panel's answers
    assert types.index("response.fusion_call.completed") < types.index("response.output_text.delta")
    fusion_done = next(e for e in events if e.type == "response.output_item.done")
    assert fusion_done.item.type == "openrouter:fusion" and fusion_done.item.status == "completed"
    assert len(fusion_done.item.model_extra["responses"]) == 3
    panel_models = {e.model_extra["model"] for e in events if e.type == "response.fusion_call.panel.completed"}
    assert panel_models == {"fake/m1", "fake/m2", "fake/m3"}
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == ANSWER
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == ANSWER
    final = events[-1].response
    assert final.status == "completed" and final.output_text == ANSWER
    assert [o.type for o in final.output] == ["openrouter:fusion", "message"]
    assert final.usage.total_tokens > 0 and final.usage.model_extra["cost"] > 0
    assert {e.response.id for e in events if hasattr(e, "response")} == {final.id}


def test_the_sdk_stream_helper_accumulates_the_response(fake, client):
    script_panel(fake)
    with client.responses.stream(model="openrouter/fusion", input="Why blue?") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == ANSWER
    assert final.output_text == ANSWER and final.output[0].type == "openrouter:fusion"


def test_streaming_sends_keepalives_while_the_panel_works(fake, gateway):
    script_panel(fake, m1=Script(text="slow", latency=0.8))
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/responses",
        timeout=30,
        json={"model": "panelfuse/fusion", "stream": True, "input": "q"},
    ) as r:
        body = r.read().decode()
    assert ": keep-alive" in body
    events = sse_events(body)
    assert all(event == data["type"] for event, data in events)  # an `event:` line on every frame
    assert events[-1][0] == "response.completed"


def test_the_fusion_plugin_and_instructions_configure_the_run(fake, client):
    script_panel(fake, judge=Script(text=json.dumps({"best": "B", "reason": "clearest"})))
    r = client.responses.create(
        model="openrouter/fusion",
        instructions="Answer briefly.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "q"}]}],
        extra_body={
            "plugins": [
                {
                    "id": "fusion",
                    "analysis_models": ["fake/m1", "fake/m2"],
                    "mode": "best-of",
                    "model": "fake/judge",
                    "include_panel": False,
                }
            ]
        },
    )
    assert r.output_text == "Shorter wavelengths scatter more."
    item = r.output[0].model_dump()
    assert [x.keys() for x in item["responses"]] == [{"model"}, {"model"}]  # include_panel: false
    assert not fake.requests_for("m3")
    member = fake.requests_for("m1")[0].body
    assert member["messages"][0] == {"role": "system", "content": "Answer briefly."}


def test_judge_writes_streams_the_answer_and_keeps_the_analysis(fake, client):
    text = json.dumps(analysis_for(["A", "B", "C"])) + f"\n{ANSWER_MARKER}\nBlue light scatters most."
    script_panel(fake, judge=Script(text=text))
    with client.responses.stream(
        model="panelfuse/fusion", input="q", extra_body={"plugins": [{"id": "fusion", "mode": "judge-writes"}]}
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas).strip() == "Blue light scatters most."
    assert [o.type for o in final.output] == ["openrouter:fusion", "message"]
    # the judge's analysis is read after the answer streamed: the final response still carries it
    assert final.output[0].model_dump()["analysis"]["consensus"] == ["the sky scatters blue light"]


def test_function_tools_on_a_fusion_alias_are_a_400(fake, client):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="panelfuse/fusion", input="q", tools=[LOOKUP])
    assert info.value.body["param"] == "tools"
    assert info.value.body["metadata"]["error_code"] == "unsupported_parameter"


def test_a_failed_fusion(fake, client, gateway):
    script_panel(fake, **{m: Script(failure=Failure.HTTP, status_code=400) for m in ("m1", "m2", "m3")})
    with pytest.raises(openai.APIStatusError) as info:
        client.responses.create(model="panelfuse/fusion", input="q")
    assert info.value.status_code == 502
    err = info.value.body
    assert err["metadata"]["error_code"] == "fusion_failed"
    assert {f["model"] for f in err["metadata"]["failed_models"]} == {"fake/m1", "fake/m2", "fake/m3"}
    assert httpx.get(f"{gateway.url}/v1/fusion/runs/{err['metadata']['run_id']}").json()["status"] == "failed"
    # streamed: the failure is a response.failed event, the fusion item failed with its reason
    events = list(client.responses.create(model="panelfuse/fusion", input="q", stream=True))
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed" and "fusion failed" in failed.error.message
    item = failed.output[0].model_dump()
    assert item["type"] == "openrouter:fusion" and item["status"] == "failed"
    assert item["failure_reason"] == "all_panels_failed" and len(item["failed_models"]) == 3
    panel_failed = [e for e in events if e.type == "response.fusion_call.panel.failed"]
    assert {e.model_extra["model"] for e in panel_failed} == {"fake/m1", "fake/m2", "fake/m3"}
    assert all("400" in e.model_extra["message"] for e in panel_failed)


async def test_a_client_that_leaves_cancels_the_run(fake, gateway):
    script_panel(
        fake,
        m1=Script(text="slow " * 100, token_rate=5),
        m2=Script(text="slow", latency=30),
        m3=Script(text="slow", latency=30),
    )
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream(
            "POST", f"{gateway.url}/v1/responses", json={"model": "panelfuse/fusion", "stream": True, "input": "q"}
        ) as r:
            run_id = r.headers["x-panelfuse-run-id"]
            async for line in r.aiter_lines():
                if "response.fusion_call.panel.delta" in line:
                    break  # the client goes away mid-panel
    assert await fake.wait_idle_async(10)
    assert fake.disconnects == 3
    async with httpx.AsyncClient() as http:
        for _ in range(100):
            run = (await http.get(f"{gateway.url}/v1/fusion/runs/{run_id}")).json()
            if run["status"] != "running":
                break
            await asyncio.sleep(0.05)
    assert run["status"] == "cancelled"


def test_a_request_made_for_a_fusion_starts_none(fake, gateway):
    """As on chat completions: at fusion depth a fusion alias is its answer model called directly."""
    script_panel(fake)
    r = post(gateway, {"model": "panelfuse/fusion", "input": "q"}, headers={"X-Panelfuse-Fusion-Depth": "1"})
    assert r.status_code == 200
    assert [item["type"] for item in r.json()["output"]] == ["message"]
    assert fake.requests_for("synth") and not fake.requests_for("m1")


# --- previous_response_id ----------------------------------------------------------------------------


def test_previous_response_id_continues_the_conversation(fake, client):
    script_panel(fake)
    whole = {"plugins": [{"id": "fusion", "panel_sees": "conversation"}]}  # the panel sees every turn
    first = client.responses.create(model="panelfuse/fusion", input="Why is the sky blue?")
    # streamed this time: the response is stored before response.completed goes out
    events = list(
        client.responses.create(
            model="panelfuse/fusion",
            input="And at sunset?",
            previous_response_id=first.id,
            stream=True,
            extra_body=whole,
        )
    )
    second = events[-1].response
    assert second.previous_response_id == first.id
    seen = fake.requests_for("m1")[1].body["messages"]
    assert [m["role"] for m in seen] == ["user", "assistant", "user"]
    assert seen[0]["content"] == "Why is the sky blue?" and seen[1]["content"] == ANSWER
    assert seen[2]["content"] == "And at sunset?"
    # a third turn sees both earlier ones
    client.responses.create(model="panelfuse/fusion", input="Thanks", previous_response_id=second.id, extra_body=whole)
    assert user_turns(fake.requests_for("m1")[2].body) == ["Why is the sky blue?", "And at sunset?", "Thanks"]


def test_an_unknown_previous_response_id_is_a_404(fake, client):
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="panelfuse/fusion", input="q", previous_response_id="resp_nope")
    assert info.value.body["param"] == "previous_response_id"
    assert info.value.body["metadata"]["error_code"] == "response_not_found"


def test_store_false_keeps_nothing_to_continue_from(fake, client):
    fake.script("plain", Script(text="hi"))
    r = client.responses.create(model="fake/plain", input="q", store=False)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="fake/plain", input="again", previous_response_id=r.id)


def test_another_keys_response_is_a_404(fake, tmp_path):
    db = f"sqlite+aiosqlite:///{tmp_path}/runs.db"

    async def keys():
        store = await RunStore.open(db)
        try:
            return [(await store.keys.create(name)).secret for name in ("a", "b")]
        finally:
            await store.close()

    a, b = asyncio.run(keys())
    fake.script("plain", Script(text="hi"))
    gw = Gateway(fake, db).start()
    try:
        first = post(gw, {"model": "fake/plain", "input": "q"}, headers={"Authorization": f"Bearer {a}"}).json()
        again = {"model": "fake/plain", "input": "q2", "previous_response_id": first["id"]}
        assert post(gw, again, headers={"Authorization": f"Bearer {b}"}).status_code == 404
        assert post(gw, again, headers={"Authorization": f"Bearer {a}"}).status_code == 200
    finally:
        gw.stop()


# --- a plain model, proxied --------------------------------------------------------------------------


def test_plain_model_is_proxied(fake, client):
    fake.script("plain", Script(text="just one model", cost=0.01, prompt_tokens=12, completion_tokens=3))
    r = client.responses.create(model="fake/plain", input="hi", instructions="Be kind.", temperature=0.5)
    assert r.output_text == "just one model" and r.model == "fake/plain" and r.status == "completed"
    assert [o.type for o in r.output] == ["message"]
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (12, 3, 15)
    assert r.usage.model_extra["cost"] == 0.01
    sent = fake.requests_for("plain")[0].body
    assert sent["messages"] == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}]
    assert sent["temperature"] == 0.5
    events = list(client.responses.create(model="fake/plain", input="hi", stream=True))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "just one model"
    assert events[-1].type == "response.completed" and events[-1].response.output_text == "just one model"


def test_proxied_function_call_and_its_output(fake, client):
    fake.script(
        "plain",
        Script(tool_calls=[{"name": "lookup", "arguments": {"q": "x"}}]),
        Script(text="x means y"),
    )
    r = client.responses.create(model="fake/plain", input="what is x?", tools=[LOOKUP], tool_choice="auto")
    call = r.output[0]
    assert call.type == "function_call" and call.name == "lookup" and json.loads(call.arguments) == {"q": "x"}
    sent = fake.requests_for("plain")[0].body
    assert sent["tools"][0]["function"]["name"] == "lookup" and sent["tools"][0]["type"] == "function"
    # the caller runs the tool and continues from the response
    r2 = client.responses.create(
        model="fake/plain",
        previous_response_id=r.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "y"}],
        tools=[LOOKUP],
    )
    assert r2.output_text == "x means y"
    msgs = fake.requests_for("plain")[1].body["messages"]
    assert msgs[1]["role"] == "assistant" and msgs[1]["tool_calls"][0]["id"] == call.call_id
    assert msgs[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "y"}


def test_proxied_function_call_streams(fake, client):
    fake.script("plain", Script(tool_calls=[{"name": "lookup", "arguments": {"q": "x"}}]))
    with client.responses.stream(model="fake/plain", input="what is x?", tools=[LOOKUP]) as stream:
        types = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.done" in types
    assert final.output[0].type == "function_call" and json.loads(final.output[0].arguments) == {"q": "x"}


def test_a_conversation_given_as_items(fake, client):
    fake.script("plain", Script(text="ok"))
    client.responses.create(
        model="fake/plain",
        input=[
            {"type": "message", "role": "developer", "content": "be terse"},
            {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "c"}]},
            {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "d"},
            {"role": "user", "content": "e"},
        ],
    )
    msgs = fake.requests_for("plain")[0].body["messages"]
    assert [m["role"] for m in msgs] == ["developer", "user", "assistant", "tool", "user"]
    assert msgs[2]["content"] == "c" and msgs[2]["tool_calls"][0]["function"]["name"] == "lookup"


def test_text_format_is_the_chat_response_format(fake, client):
    fake.script("plain", Script(text='{"colour": "blue"}'))
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}}
    r = client.responses.create(
        model="fake/plain",
        input="sky colour?",
        text={"format": {"type": "json_schema", "name": "sky", "schema": schema, "strict": True}},
        extra_body={"reasoning": {"effort": "low"}},
    )
    assert json.loads(r.output_text) == {"colour": "blue"}
    assert r.text.format.type == "json_schema"
    sent = fake.requests_for("plain")[0].body
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "sky", "schema": schema, "strict": True},
    }
    assert sent["reasoning"] == {"effort": "low"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0]"),
        ({"input": "q", "background": True}, "background"),
    ],
)
def test_unreadable_requests_are_400s_naming_the_field(fake, gateway, body, param):
    r = post(gateway, {"model": "fake/plain", **body})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


def test_a_conversation_without_a_user_turn_goes_to_a_plain_model_but_not_to_a_fusion(fake, gateway):
    # As on chat completions: a plain model takes any conversation; a fusion's panel needs a question.
    fake.script("plain", Script(text="continued"))
    only_assistant = {"input": [{"role": "assistant", "content": "only an answer"}]}
    assert post(gateway, {"model": "fake/plain", **only_assistant}).status_code == 200
    r = post(gateway, {"model": "panelfuse/fusion", **only_assistant})
    assert r.status_code == 400 and "user message" in r.json()["error"]["message"]


def test_upstream_failure_keeps_its_status(fake, client):
    fake.script("gone", Script(failure=Failure.HTTP, status_code=404))
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="fake/gone", input="q")
    with pytest.raises(openai.NotFoundError):
        list(client.responses.create(model="fake/gone", input="q", stream=True))


# --- the fusion server tool on a plain model ----------------------------------------------------------


def test_server_tool_on_a_plain_model(fake, client):
    script_panel(fake)
    fake.script("outer", CALL_FUSION, Script(text="The panel agrees: scattering.", cost=0.001))
    r = client.responses.create(model="fake/outer", input="Why blue?", tools=[FUSION_TOOL])
    assert r.output_text == "The panel agrees: scattering."
    fusion, message = r.output
    item = fusion.model_dump()
    assert item["type"] == "openrouter:fusion" and item["status"] == "completed"
    assert item["analysis"]["consensus"] == ["the sky scatters blue light"]
    assert {x["model"] for x in item["responses"]} == {"fake/m1", "fake/m2"}
    assert message.type == "message"
    assert r.usage.model_extra["server_tool_use_details"]["tool_calls_executed"] == 1
    assert r.usage.model_extra["cost"] > 0.001
    offered = [t["function"]["name"] for t in fake.requests_for("outer")[0].body["tools"]]
    assert offered == ["panelfuse_fusion"]
    assert not fake.requests_for("synth")  # panel + analysis only


def test_server_tool_streams_the_fusion_call(fake, client):
    script_panel(fake)
    fake.script("outer", CALL_FUSION, Script(text="Streamed final answer."))
    tool = {"type": "panelfuse:fusion", "parameters": {"model": "fake/judge"}}
    with client.responses.stream(model="fake/outer", input="q", tools=[tool]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert "response.fusion_call.panel.completed" in types and "response.fusion_call.analysis.completed" in types
    assert types.index("response.fusion_call.completed") < types.index("response.output_text.delta")
    assert final.output_text == "Streamed final answer."
    assert [o.type for o in final.output] == ["openrouter:fusion", "message"]


def test_server_tool_returns_the_callers_function_calls(fake, client):
    script_panel(fake)
    fake.script("outer", CALL_FUSION, Script(tool_calls=[{"name": "lookup", "arguments": {"q": "sky"}}]))
    r = client.responses.create(model="fake/outer", input="q", tools=[FUSION_TOOL, LOOKUP])
    assert [o.type for o in r.output] == ["openrouter:fusion", "function_call"]
    assert r.output[1].name == "lookup" and json.loads(r.output[1].arguments) == {"q": "sky"}
    offered = {t["function"]["name"] for t in fake.requests_for("outer")[0].body["tools"]}
    assert offered == {"lookup", "panelfuse_fusion"}


def test_langchain_routes_builtin_tools_to_responses(fake, gateway):
    from langchain_openai import ChatOpenAI

    script_panel(fake)
    # without parameters the judge is the outer model itself: its second call writes the analysis
    fake.script("outer", CALL_FUSION, judge_script, Script(text="LangChain got the panel's view."))
    llm = ChatOpenAI(base_url=f"{gateway.url}/v1", api_key="x", model="fake/outer", max_retries=0)
    message = llm.bind(tools=[{"type": "openrouter:fusion"}]).invoke("Why is the sky blue?")
    assert message.text == "LangChain got the panel's view."
    assert message.id.startswith("resp_")
    assert message.usage_metadata["total_tokens"] > 0
    assert len(fake.requests_for("outer")) == 3
    assert "panelfuse_fusion" in fake.requests_for("outer")[2].body["messages"][1]["tool_calls"][0]["function"]["name"]
