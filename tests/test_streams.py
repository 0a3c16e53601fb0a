"""Streams that any client can read: every chunk has `choices[0]` (the naive loop
`chunk.choices[0].delta.content` never fails), progress rides in the `fusion` field of chunks with an
empty delta, deltas that piled up behind a slow reader go out merged, the last chunk carries the
finish_reason with `usage`, and a failure mid-stream is OpenRouter's error chunk. Over real HTTP on
loopback against the fake upstream, driven by the `openai`, `openrouter` and `langchain-openai` clients."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from panelfuse.pipeline.events import Event, FinalDelta, PanelCompleted, PanelDelta, RunCompleted
from panelfuse.pipeline.result import FusionResult
from panelfuse.server import shapes
from panelfuse.server.sse import ready_batches, sse_response
from panelfuse.service.errors import ServiceError
from panelfuse.testing import Failure, Script, tokenize
from pipeline_helpers import script_panel

ANSWER = "The sky is blue because air scatters short wavelengths."
Q = [{"role": "user", "content": "Why is the sky blue?"}]
FUSION_TOOL = {
    "type": "panelfuse:fusion",
    "parameters": {"analysis_models": ["fake/m1", "fake/m2"], "model": "fake/judge"},
}
CALL_FUSION = Script(tool_calls=[{"name": "panelfuse_fusion", "arguments": {"question": "Why is the sky blue?"}}])
OUTER_ANSWER = "The panel agrees: scattering."
FUSION_BODY: dict[str, Any] = {"model": "panelfuse/fusion", "messages": Q, "stream": True}
TOOL_BODY: dict[str, Any] = {"model": "fake/outer", "messages": Q, "tools": [FUSION_TOOL], "stream": True}


def wire(gateway, body: dict[str, Any]) -> list[Any]:
    """Every `data:` payload of a streamed request, parsed ("[DONE]" kept as the string)."""
    out: list[Any] = []
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def progress(chunks: list[Any]) -> list[dict[str, Any]]:
    """The progress events carried by raw chunks, in order."""
    return [c["fusion"] for c in chunks if isinstance(c, dict) and "event" in (c.get("fusion") or {})]


def script_outer(fake) -> None:
    script_panel(fake)
    fake.script("outer", CALL_FUSION, Script(text=OUTER_ANSWER, prompt_tokens=50, completion_tokens=10))


# --- the naive loop -----------------------------------------------------------------------------------


def test_the_naive_loop_reads_a_fusion_stream(fake, client):
    script_panel(fake)
    text = ""
    for chunk in client.chat.completions.create(model="panelfuse/fusion", messages=Q, stream=True):
        text += chunk.choices[0].delta.content or ""
    assert text == ANSWER


def test_the_naive_loop_reads_a_server_tool_stream(fake, client):
    script_outer(fake)
    text = ""
    for chunk in client.chat.completions.create(model="fake/outer", messages=Q, tools=[FUSION_TOOL], stream=True):
        text += chunk.choices[0].delta.content or ""
    assert text == OUTER_ANSWER


@pytest.mark.parametrize("path", ["alias", "server_tool"])
def test_every_chunk_has_choice_zero_on_the_wire(fake, gateway, path):
    script_outer(fake)
    chunks = wire(gateway, FUSION_BODY if path == "alias" else TOOL_BODY)
    assert chunks[-1] == "[DONE]" and "[DONE]" not in chunks[:-1]
    chunks = chunks[:-1]
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert len(c["choices"]) == 1 and c["choices"][0]["index"] == 0
        assert isinstance(c["choices"][0]["delta"], dict)
    # the role first, as OpenAI and OpenRouter send it
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    # progress: an empty delta, the event in the `fusion` field
    carriers = [c for c in chunks if "event" in (c.get("fusion") or {})]
    assert {"panel.started", "panel.completed", "analysis.completed"} <= {c["fusion"]["event"] for c in carriers}
    assert all(c["choices"][0]["delta"] == {} for c in carriers)
    # finish_reason null until the last chunk, which carries it with usage and the final fusion object
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert last["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}
    assert last["usage"]["cost"] > 0 and last["usage"]["total_tokens"] > 0
    assert "event" not in last["fusion"] and last["fusion"]["status"] == "completed"
    assert all("usage" not in c for c in chunks[:-1])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == (ANSWER if path == "alias" else OUTER_ANSWER)


# --- coalescing ---------------------------------------------------------------------------------------


def event(seq: int, payload: Any) -> Event:
    return Event("run_x", seq, payload, "panel")


def test_coalesce_merges_runs_of_one_streams_deltas():
    log = [
        event(1, PanelDelta("A", "a1 ")),
        event(2, PanelDelta("A", "a2 ")),
        event(3, PanelDelta("B", "b1 ")),
        event(4, PanelDelta("B", "b2")),
        event(5, PanelDelta("A", "a3")),
        event(6, PanelCompleted("A", "fake/m1", "a1 a2 a3", {}, 0.0, 1)),
        event(7, FinalDelta("x")),
        event(8, FinalDelta("y")),
        event(9, RunCompleted({}, 0.0, False)),
    ]
    before = [(e.seq, e.data) for e in log]
    out = shapes.coalesce(log)
    assert [(e.type, e.seq, e.data.get("member"), e.data.get("text")) for e in out] == [
        ("panel.delta", 2, "A", "a1 a2 "),  # the last merged event's seq: a resume after it is exact
        ("panel.delta", 4, "B", "b1 b2"),
        ("panel.delta", 5, "A", "a3"),  # another member came between: not merged across it
        ("panel.completed", 6, "A", None),
        ("final.delta", 8, None, "xy"),
        ("run.completed", 9, None, None),
    ]
    assert [(e.seq, e.data) for e in log] == before  # the events themselves are untouched


async def test_ready_batches_takes_what_is_waiting_and_never_waits_for_more():
    async def burst():
        for i in range(50):
            yield i  # all ready at once: a producer faster than its reader

    assert [b async for b in ready_batches(burst())] == [list(range(50))]

    read = asyncio.Event()

    async def paced():
        for i in range(5):
            yield i
            await read.wait()  # the next item exists only once the reader took this one
            read.clear()

    batches = []
    async for batch in ready_batches(paced()):
        batches.append(batch)
        read.set()
    assert batches == [[0], [1], [2], [3], [4]]  # a reader as fast as the producer: nothing is held back


async def test_ready_batches_passes_errors_on_and_closes_its_source():
    closed = asyncio.Event()

    async def failing():
        yield 1
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        async for _ in ready_batches(failing()):
            pass

    async def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
                await asyncio.sleep(0)
        finally:
            closed.set()

    batches = ready_batches(endless())
    await anext(batches)
    await batches.aclose()
    assert closed.is_set()


def test_deltas_behind_a_slower_reader_go_out_merged(fake, gateway):
    # m1 sends its whole answer in one burst: its deltas are all waiting before the stream writer gets
    # a turn (the reader is slower than the producer), so they go out in fewer chunks than tokens.
    member_text = " ".join(f"word{i}" for i in range(60))
    answer = " ".join(f"part{i}" for i in range(40))
    script_panel(fake, m1=Script(text=member_text), synth=Script(text=answer))
    chunks = wire(gateway, FUSION_BODY)
    deltas_a = [e for e in progress(chunks) if e["event"] == "panel.delta" and e["member"] == "A"]
    assert len(deltas_a) < len(tokenize(member_text))
    assert "".join(e["text"] for e in deltas_a) == member_text  # exact, in order
    answer_chunks = [c for c in chunks[:-1] if c["choices"][0]["delta"].get("content")]
    assert len(answer_chunks) < len(tokenize(answer))
    assert "".join(c["choices"][0]["delta"]["content"] for c in answer_chunks) == answer
    # the seq of a merged chunk is its last event's, so the stream's seqs still rise
    seqs = [e["seq"] for e in progress(chunks)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    # the run's stored event log is complete: its deltas join to the answers exactly, in order (one
    # event per network read from the upstream, so fewer events than tokens for a burst)
    run_id = progress(chunks)[0]["run_id"]
    stored = [
        json.loads(line[len("data: ") :])
        for line in httpx.get(f"{gateway.url}/v1/fusion/runs/{run_id}/events", timeout=30).text.splitlines()
        if line.startswith("data: ")
    ]
    stored_a = [e for e in stored if e["type"] == "panel.delta" and e["member"] == "A"]
    assert "".join(e["text"] for e in stored_a) == member_text
    assert "".join(e["text"] for e in stored if e["type"] == "final.delta") == answer
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
    assert seqs[-1] == stored[-1]["seq"]


def test_the_answer_goes_out_before_the_run_is_stored(fake, gateway, monkeypatch):
    # The synthesizer's last text arrives with its end, so the run ends at once: that text must still
    # reach the response before the outcome is built and stored (bookkeeping that takes CPU the client
    # would otherwise wait for).
    from panelfuse.server import chat
    from panelfuse.store.runs import RunStore

    answer = " ".join(f"part{i}" for i in range(40))
    script_panel(fake, synth=Script(text=answer, burst=True))
    handed: list[str] = []  # frames as the response takes them from the route, to write them
    answer_out_when_stored: list[bool] = []

    def recording_response(source, **kwargs):
        async def frames():
            async for frame in source:
                handed.append(frame)
                yield frame

        return sse_response(frames(), **kwargs)

    finish_run = RunStore.finish_run

    async def noting_finish_run(self, run_id, **outcome):
        sent = [json.loads(line[6:]) for frame in handed for line in frame.split("\n") if line.startswith("data: {")]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in sent if c.get("choices"))
        answer_out_when_stored.append(text == answer)
        return await finish_run(self, run_id, **outcome)

    monkeypatch.setattr(chat, "sse_response", recording_response)
    monkeypatch.setattr(RunStore, "finish_run", noting_finish_run)
    chunks = wire(gateway, FUSION_BODY)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1]) == answer
    assert answer_out_when_stored == [True]


def stored_events(gateway, run_id: str) -> list[dict[str, Any]]:
    text = httpx.get(f"{gateway.url}/v1/fusion/runs/{run_id}/events", timeout=30).text
    return [json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: ")]


def test_a_fusion_nobody_reads_live_logs_each_text_joined(fake, gateway):
    # Paced tokens arrive one per read: streamed, each is an event; not streamed (and not followed),
    # each member's text and the answer are logged as one event each, whole and in order.
    member_text = " ".join(f"word{i}" for i in range(12))
    answer = " ".join(f"part{i}" for i in range(8))
    script_panel(fake, m1=Script(text=member_text, token_rate=200), synth=Script(text=answer, token_rate=200))
    resp = httpx.post(f"{gateway.url}/v1/chat/completions", json={**FUSION_BODY, "stream": False}, timeout=60)
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == answer
    stored = stored_events(gateway, resp.headers["X-Panelfuse-Run-Id"])
    assert [e["text"] for e in stored if e["type"] == "panel.delta" and e["member"] == "A"] == [member_text]
    assert [e["text"] for e in stored if e["type"] == "final.delta"] == [answer]
    assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))

    chunks = wire(gateway, FUSION_BODY)
    run_id = progress(chunks)[0]["run_id"]
    streamed = [e["text"] for e in stored_events(gateway, run_id) if e["type"] == "panel.delta" and e["member"] == "A"]
    assert len(streamed) > 1 and "".join(streamed) == member_text


# --- finish_reason --------------------------------------------------------------------------------


def result_with(finish_reason: str) -> FusionResult:
    return FusionResult(
        run_id="run_abc",
        preset=None,
        mode="synthesize",
        prompt_version="v",
        status="completed",
        content="cut sh",
        model="fake/synth",
        finish_reason=finish_reason,
    )


@pytest.mark.parametrize("finish_reason", ["stop", "length"])
def test_finish_reason_comes_from_the_result(finish_reason):
    result = result_with(finish_reason)
    assert shapes.chat_completion(result)["choices"][0]["finish_reason"] == finish_reason
    last = shapes.final_chunk("c", "m", 1, finish_reason=result.finish_reason, usage=result.usage_dict())
    assert last["choices"][0]["finish_reason"] == finish_reason and last["usage"]["total_tokens"] == 0


def test_an_answer_cut_by_max_tokens_finishes_with_length(fake, gateway, client):
    script_panel(fake, synth=Script(text=ANSWER, finish_reason="length"))
    r = client.chat.completions.create(model="panelfuse/fusion", messages=Q)
    assert r.choices[0].finish_reason == "length"
    chunks = wire(gateway, FUSION_BODY)
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


# --- errors mid-stream --------------------------------------------------------------------------------


def script_failing_panel(fake) -> None:
    # a 400 is not retried: each member fails at once, the quorum is missed, the run fails mid-stream
    script_panel(fake, **{m: Script(failure=Failure.HTTP, status_code=400) for m in ("m1", "m2", "m3")})


def assert_error_chunk(chunk: dict[str, Any], status: int, error_code: str) -> dict[str, Any]:
    """OpenRouter's unified mid-stream error: a chat.completion.chunk, the error at the top level."""
    assert chunk["object"] == "chat.completion.chunk" and chunk["id"].startswith("chatcmpl-")
    assert chunk["choices"] == [{"index": 0, "delta": {"content": ""}, "finish_reason": "error", "logprobs": None}]
    error = chunk["error"]
    assert set(error) == {"message", "code", "type", "param", "metadata"}  # ServiceError.error_object()
    assert error["code"] == status and error["metadata"]["error_code"] == error_code
    assert error["metadata"]["error_type"] == shapes.OPENROUTER_ERROR_TYPES[status]
    return error


def test_a_failed_fusion_ends_its_stream_with_openrouters_error_chunk(fake, gateway):
    script_failing_panel(fake)
    chunks = wire(gateway, FUSION_BODY)
    assert "[DONE]" not in chunks  # "the stream is terminated after this unified error event"
    error = assert_error_chunk(chunks[-1], 502, "fusion_failed")
    assert error["message"].startswith("fusion failed: ") and error["type"] == "upstream_error"
    assert error["metadata"]["run_id"] == progress(chunks)[0]["run_id"]
    assert {f["model"] for f in error["metadata"]["failed_models"]} == {"fake/m1", "fake/m2", "fake/m3"}
    assert "cost" in chunks[-1]["usage"]  # what the run cost before it failed
    assert progress(chunks)[-1]["event"] == "run.failed"  # the progress event still comes first
    # the same error object a non-streamed request gets (its `error_type` aside)
    r = httpx.post(f"{gateway.url}/v1/chat/completions", json={**FUSION_BODY, "stream": False}, timeout=30)
    body = r.json()["error"]
    assert r.status_code == 502 and {k: v for k, v in body.items() if k != "metadata"} == {
        k: v for k, v in error.items() if k != "metadata"
    }
    same = {k: v for k, v in error["metadata"].items() if k not in ("error_type", "run_id")}
    assert {k: v for k, v in body["metadata"].items() if k != "run_id"} == same
    assert same["failure_reason"] == "all_panels_failed"


def test_the_openai_sdk_raises_the_stream_error(fake, client):
    script_failing_panel(fake)
    seen = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="panelfuse/fusion", messages=Q, stream=True):
            seen.append(chunk.choices[0].delta)  # the naive loop runs up to the error
    assert info.value.message.startswith("fusion failed: ")
    assert info.value.body["code"] == 502 and info.value.body["metadata"]["error_code"] == "fusion_failed"
    assert seen  # the progress before the failure


def test_the_openrouter_sdk_reads_the_stream_and_its_error(fake, gateway):
    from openrouter import OpenRouter

    with OpenRouter(server_url=f"{gateway.url}/v1", api_key="unused") as client:
        script_panel(fake)
        chunks = list(client.chat.send(model="panelfuse/fusion", messages=Q, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
        assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage.total_tokens > 0
        assert all(c.error is None for c in chunks)

        script_failing_panel(fake)
        chunks = list(client.chat.send(model="panelfuse/fusion", messages=Q, stream=True))
    last = chunks[-1]
    assert last.error is not None and last.error.code == 502 and last.error.message.startswith("fusion failed: ")
    assert last.error.metadata.error_type == "provider_unavailable"
    assert last.choices[0].finish_reason == "error"
    assert all(c.error is None for c in chunks[:-1])


def test_a_proxied_stream_cut_upstream_ends_with_the_error_chunk(fake, gateway, client):
    fake.script("plain", Script(text="one two three four five six", failure=Failure.CUT, cut_after_tokens=3))
    chunks = wire(gateway, {"model": "fake/plain", "messages": Q, "stream": True})
    assert "[DONE]" not in chunks
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "one two three "
    assert_error_chunk(chunks[-1], 502, chunks[-1]["error"]["metadata"]["error_code"])
    fake.script("plain", Script(text="one two three four five six", failure=Failure.CUT, cut_after_tokens=3))
    with pytest.raises(openai.APIError) as info:
        for _ in client.chat.completions.create(model="fake/plain", messages=Q, stream=True):
            pass
    assert info.value.body["code"] == 502


def test_a_server_tool_stream_that_fails_ends_with_the_error_chunk(fake, gateway, client):
    script_panel(fake)
    # the outer model's second call (after the fusion) is refused by its upstream
    fake.script("outer", CALL_FUSION, Script(failure=Failure.HTTP, status_code=400))
    chunks = wire(gateway, TOOL_BODY)
    assert "[DONE]" not in chunks
    assert "panel.completed" in {e["event"] for e in progress(chunks)}  # the fusion's progress came first
    error = assert_error_chunk(chunks[-1], 400, "upstream_bad_request")
    assert error["type"] == "invalid_request_error"
    assert chunks[-1]["usage"]["cost"] > 0  # the fusion it ran is billed
    fake.script("outer", CALL_FUSION, Script(failure=Failure.HTTP, status_code=400))
    with pytest.raises(openai.APIError) as info:
        for _ in client.chat.completions.create(model="fake/outer", messages=Q, tools=[FUSION_TOOL], stream=True):
            pass
    assert info.value.body["metadata"]["error_code"] == "upstream_bad_request"


def test_error_chunk_keeps_the_service_errors_object():
    err = ServiceError(429, "slow down", code="rate_limited", param="model", extra={"run_id": "run_1"})
    chunk = shapes.error_chunk(err, "chatcmpl-1", "m", 1)
    assert chunk["error"] == {
        **err.error_object(),
        "metadata": {**err.error_object()["metadata"], "error_type": "rate_limit_exceeded"},
    }
    assert "usage" not in chunk


# --- LangChain --------------------------------------------------------------------------------------


def test_langchain_streams_the_answer(fake, gateway):
    from langchain_openai import ChatOpenAI

    script_panel(fake)
    llm = ChatOpenAI(base_url=f"{gateway.url}/v1", api_key="x", model="panelfuse/fusion", max_retries=0)
    chunks = list(llm.stream("Why is the sky blue?"))
    assert "".join(c.content for c in chunks) == ANSWER
    message = chunks[0]
    for c in chunks[1:]:
        message = message + c
    assert message.response_metadata["finish_reason"] == "stop"  # sent once, so merged once
    assert message.usage_metadata is not None and message.usage_metadata["total_tokens"] > 0
