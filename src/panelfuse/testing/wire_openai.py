"""OpenAI chat-completions wire format (what OpenAI, OpenRouter, vLLM... send) for the fake upstream."""

from __future__ import annotations

import itertools
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


MAX_N = 128  # OpenAI's limit on `n`


def request_problem(body: dict[str, Any]) -> str | None:
    """What OpenAI would refuse in `body` with a 400 (only what the fake acts on: `n`), or None."""
    n = body.get("n")
    if n is None:
        return None
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
        return f"Invalid 'n': expected an integer from 1 to {MAX_N}, but got {n!r} instead."
    return None


def error_body(status: int, message: str) -> dict[str, Any]:
    err_type, code = _ERROR_KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": err_type, "param": None, "code": code}}


def _usage(plan: Plan) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.completion_tokens,
        "total_tokens": plan.prompt_tokens + plan.completion_tokens,
    }
    script = plan.script
    if script.cost is not None:
        usage["cost"] = script.cost
    if script.cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": script.cached_tokens, "audio_tokens": 0}
    if script.reasoning_tokens is not None:
        usage["completion_tokens_details"] = {
            "reasoning_tokens": script.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    return usage


def _choice_logprobs(plan: Plan, entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if entries is None:
        return None
    return {"content": None, "refusal": entries} if plan.refusal else {"content": entries, "refusal": None}


def _message(plan: Plan) -> dict[str, Any]:
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
    if plan.script.annotations is not None:
        message["annotations"] = plan.script.annotations
    return message


def completion_body(plan: Plan) -> dict[str, Any]:
    choices = [
        {
            "index": i,
            "message": _message(choice),
            "finish_reason": plan.finish,
            "logprobs": _choice_logprobs(plan, choice.logprobs()),
        }
        for i, choice in enumerate(plan.choices())
    ]
    return {
        "id": f"chatcmpl-{plan.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": plan.model,
        "system_fingerprint": FINGERPRINT,
        "choices": choices,
        "usage": _usage(plan),
    }


def _sse(obj: Any) -> bytes:
    return f"data: {dumps(obj)}\n\n".encode()


def malformed_chunk(raw: str) -> bytes:
    return f"data: {raw}\n\n".encode()


def malformed_frame() -> bytes:
    return b'data: {"id": "chatcmpl-broken", "choices": [{"delta": {"content": "oops\n\n'


def stream_frames(plan: Plan) -> list[Frame]:
    """Each choice's frames; with `n` > 1 the choices' content frames interleave, as OpenAI's do."""
    created = int(time.time())

    def chunk(
        index: int, delta: dict[str, Any], finish: str | None = None, logprobs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{plan.request_id}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": plan.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        }

    text_key = "refusal" if plan.refusal else "content"
    heads: list[Frame] = []
    bodies: list[list[Frame]] = []
    tails: list[Frame] = []
    for index, choice in enumerate(plan.choices()):
        # OpenAI's first chunk carries the role and an empty content string.
        first: dict[str, Any] = {"role": "assistant", "content": None if plan.refusal else "", "refusal": None}
        if plan.refusal:
            first["refusal"] = ""
        heads.append(Frame(_sse(chunk(index, first))))
        entries = choice.logprobs()
        body = [
            Frame(
                _sse(chunk(index, {text_key: tok}, logprobs=_choice_logprobs(plan, [entries[i]] if entries else None))),
                token=True,
            )
            for i, tok in enumerate(choice.tokens)
        ]
        for i, tc in enumerate(choice.tool_calls):
            head = {"index": i, "id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": ""}}
            body.append(Frame(_sse(chunk(index, {"tool_calls": [head]}))))
            for piece in tc.argument_pieces():
                delta = {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}
                body.append(Frame(_sse(chunk(index, delta)), token=True))
        if plan.script.annotations is not None:
            body.append(Frame(_sse(chunk(index, {"annotations": plan.script.annotations}))))
        bodies.append(body)
        tails.append(Frame(_sse(chunk(index, {}, plan.finish)), tail=True))
    frames = heads + [f for step in itertools.zip_longest(*bodies) for f in step if f is not None] + tails
    if plan.include_usage:
        usage_chunk = chunk(0, {})
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
