"""OpenAI chat-completions wire format (what OpenAI, OpenRouter, vLLM... send) for the fake upstream."""

from __future__ import annotations

import time
from typing import Any

from panelfuse.testing.scripts import Frame, Plan, dumps

FINGERPRINT = "fp_fakeupstream"

_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def error_body(status: int, message: str) -> dict[str, Any]:
    err_type, code = _ERROR_KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": err_type, "param": None, "code": code}}


def _usage(plan: Plan) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.completion_tokens,
        "total_tokens": plan.prompt_tokens + plan.completion_tokens,
    }
    if plan.script.cost is not None:
        usage["cost"] = plan.script.cost
    return usage


def completion_body(plan: Plan) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": plan.text, "refusal": None}
    if plan.refusal:
        message["content"] = None
        message["refusal"] = plan.text
    if plan.tool_calls:
        message["content"] = plan.text or None
        message["tool_calls"] = [
            {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": tc.arguments}}
            for tc in plan.tool_calls
        ]
    return {
        "id": f"chatcmpl-{plan.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": plan.model,
        "system_fingerprint": FINGERPRINT,
        "choices": [{"index": 0, "message": message, "finish_reason": plan.finish, "logprobs": None}],
        "usage": _usage(plan),
    }


def _sse(obj: Any) -> bytes:
    return f"data: {dumps(obj)}\n\n".encode()


def malformed_frame() -> bytes:
    return b'data: {"id": "chatcmpl-broken", "choices": [{"delta": {"content": "oops\n\n'


def stream_frames(plan: Plan) -> list[Frame]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{plan.request_id}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": plan.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    text_key = "refusal" if plan.refusal else "content"
    # OpenAI's first chunk carries the role and an empty content string.
    first: dict[str, Any] = {"role": "assistant", "content": None if plan.refusal else "", "refusal": None}
    if plan.refusal:
        first["refusal"] = ""
    frames = [Frame(_sse(chunk(first)))]
    frames += [Frame(_sse(chunk({text_key: tok})), token=True) for tok in plan.tokens]
    for i, tc in enumerate(plan.tool_calls):
        head = {"index": i, "id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": ""}}
        frames.append(Frame(_sse(chunk({"tool_calls": [head]}))))
        for piece in tc.argument_pieces():
            delta = {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}
            frames.append(Frame(_sse(chunk(delta)), token=True))
    frames.append(Frame(_sse(chunk({}, plan.finish)), tail=True))
    if plan.include_usage:
        usage_chunk = chunk({})
        usage_chunk["choices"] = []
        usage_chunk["usage"] = _usage(plan)
        frames.append(Frame(_sse(usage_chunk), tail=True))
    frames.append(Frame(b"data: [DONE]\n\n", tail=True))
    return frames


def models_body(models: list[str]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 1700000000, "owned_by": "fake-upstream"} for m in models],
    }
