"""Anthropic Messages wire format for the fake upstream."""

from __future__ import annotations

import json
from typing import Any

from panelfuse.testing.scripts import Frame, Plan, anthropic_stop, dumps

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    err_type = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": err_type, "message": message}}


def _content(plan: Plan) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if plan.text:
        blocks.append({"type": "text", "text": plan.text})
    for tc in plan.tool_calls:
        blocks.append({"type": "tool_use", "id": tc.id, "name": tc.name, "input": tc.input()})
    return blocks


def message_body(plan: Plan) -> dict[str, Any]:
    return {
        "id": f"msg_{plan.request_id}",
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": _content(plan),
        "stop_reason": anthropic_stop(plan.finish),
        "stop_sequence": None,
        "usage": {
            "input_tokens": plan.prompt_tokens,
            "output_tokens": plan.completion_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": plan.script.cached_tokens or 0,
        },
    }


def _sse(event: str, obj: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {dumps(obj)}\n\n".encode()


def malformed_chunk(raw: str) -> bytes:
    """`raw` as the data of the event its `type` names (content_block_delta when it names none)."""
    try:
        kind = json.loads(raw).get("type")
    except (ValueError, AttributeError):
        kind = None
    event = kind if isinstance(kind, str) else "content_block_delta"
    return f"event: {event}\ndata: {raw}\n\n".encode()


def malformed_frame() -> bytes:
    return b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {"text": "oops\n\n'


def stream_frames(plan: Plan) -> list[Frame]:
    start = message_body(plan)
    start["content"] = []
    start["stop_reason"] = None
    start["usage"] = dict(start["usage"], output_tokens=1)  # Anthropic reports a placeholder here
    frames = [Frame(_sse("message_start", {"type": "message_start", "message": start}))]
    index = 0
    if plan.text:
        block: dict[str, Any] = {"type": "text", "text": ""}
        frames.append(
            Frame(_sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}))
        )
        frames.append(Frame(_sse("ping", {"type": "ping"})))
        for tok in plan.tokens:
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": tok}}
            frames.append(Frame(_sse("content_block_delta", delta), token=True))
        frames.append(Frame(_sse("content_block_stop", {"type": "content_block_stop", "index": 0})))
        index = 1
    else:
        frames.append(Frame(_sse("ping", {"type": "ping"})))
    for tc in plan.tool_calls:
        block = {"type": "tool_use", "id": tc.id, "name": tc.name, "input": {}}
        frames.append(
            Frame(
                _sse(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": block},
                )
            )
        )
        for piece in tc.argument_pieces():
            delta = {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": piece},
            }
            frames.append(Frame(_sse("content_block_delta", delta), token=True))
        frames.append(Frame(_sse("content_block_stop", {"type": "content_block_stop", "index": index})))
        index += 1
    message_delta = {
        "type": "message_delta",
        "delta": {"stop_reason": anthropic_stop(plan.finish), "stop_sequence": None},
        "usage": {"output_tokens": plan.completion_tokens},
    }
    frames.append(Frame(_sse("message_delta", message_delta), tail=True))
    frames.append(Frame(_sse("message_stop", {"type": "message_stop"}), tail=True))
    return frames


def models_body(models: list[str]) -> dict[str, Any]:
    data = [{"type": "model", "id": m, "display_name": m, "created_at": "2024-01-01T00:00:00Z"} for m in models]
    return {
        "data": data,
        "has_more": False,
        "first_id": models[0] if models else None,
        "last_id": models[-1] if models else None,
    }
