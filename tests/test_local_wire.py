"""What the local adapter sends to llama.cpp's engine and how it reads the engine's errors (no native code)."""

from __future__ import annotations

from panelfuse.providers.base import ChatRequest
from panelfuse.providers.errors import BadRequestError, UpstreamError
from panelfuse.providers.local import DEFAULT_MAX_TOKENS, engine_body, engine_error


def test_body_carries_each_members_own_sampling_and_grammar() -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    image = {"type": "image_url", "image_url": {"url": "x"}}
    parts = [{"type": "text", "text": "Why"}, image, {"type": "text", "text": "?"}]
    req = ChatRequest(
        model="smollm2",
        messages=[{"role": "user", "content": parts}, {"role": "tool", "content": "r"}],
        temperature=0.3,
        top_p=0.9,
        seed=11,
        stop=["\n\n"],
        max_tokens=160,
        response_format=rf,
    )
    body = engine_body(req)
    assert body["messages"] == [{"role": "user", "content": "Why\n?"}, {"role": "user", "content": "r"}]
    assert (body["temperature"], body["top_p"], body["seed"], body["max_tokens"]) == (0.3, 0.9, 11, 160)
    assert body["stop"] == ["\n\n"] and body["response_format"] == rf
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


def test_body_defaults() -> None:
    body = engine_body(ChatRequest(model="smollm2", messages=[{"role": "user", "content": "hi"}]))
    assert body["max_tokens"] == DEFAULT_MAX_TOKENS and "seed" not in body and "response_format" not in body
    text = engine_body(ChatRequest(model="m", messages=[], response_format={"type": "text"}))
    assert "response_format" not in text


def test_engine_errors_become_typed_provider_errors() -> None:
    too_long = {"error": {"code": 400, "message": "request exceeds the context", "type": "exceed_context_size_error"}}
    err = engine_error(too_long, provider="local", model="smollm2")
    assert isinstance(err, BadRequestError) and "exceeds" in err.message and err.status_code == 400
    crash = {"error": {"code": 500, "message": "Unexpected empty grammar stack", "type": "server_error"}}
    assert isinstance(engine_error(crash, provider="local", model="smollm2"), UpstreamError)
    unreadable = {"code": 500, "type": "server_error", "message": "bad JSON from the engine"}
    assert isinstance(engine_error(unreadable, provider="local", model="smollm2"), UpstreamError)
    chunk = {"choices": [{"delta": {"content": "hi"}, "finish_reason": None}], "object": "chat.completion.chunk"}
    assert engine_error(chunk, provider="local", model="smollm2") is None
