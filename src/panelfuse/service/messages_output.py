"""Answers in the Anthropic Messages API's shapes: the `message` object, and the stream's event
sequence (`message_start`, `content_block_start` / `_delta` / `_stop`, `message_delta`,
`message_stop`), built from what the rest of panelfuse produces (a fusion's events and result, a
provider's StreamEvents). Pure: no I/O."""

from __future__ import annotations

import json
import uuid
from typing import Any

from panelfuse.providers.base import ToolCall, Usage
from panelfuse.service.errors import ServiceError

# OpenAI-style finish reasons (what providers and the pipeline report) as Anthropic's stop reasons.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# Our statuses as Anthropic's error types (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def stop_reason(finish_reason: str | None) -> str:
    return STOP_REASONS.get(finish_reason or "stop", "end_turn")


def usage_object(usage: Usage | None) -> dict[str, int]:
    usage = usage or Usage()
    return {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}


def error_body(exc: ServiceError) -> dict[str, Any]:
    """Anthropic's error shape; our own reason and details (run id, failed models) ride beside it."""
    error: dict[str, Any] = {"type": ERROR_TYPES.get(exc.status, "api_error"), "message": exc.message}
    if exc.code:
        error["code"] = exc.code
    if exc.extra:
        error["details"] = exc.extra
    return {"type": "error", "error": error}


def tool_use_block(call: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(call.arguments)}


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as the object Anthropic's `input` is; text that is not an object (a
    model's malformed JSON) is kept under `_raw` rather than lost."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"_raw": arguments}


def message(
    mid: str,
    model: str,
    *,
    text: str,
    tool_calls: list[ToolCall] | None = None,
    finish_reason: str | None,
    usage: Usage | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [tool_use_block(c) for c in tool_calls or []]
    return {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(finish_reason),
        "stop_sequence": None,
        "usage": usage_object(usage),
        **(extra or {}),
    }


class MessageEvents:
    """The stream's events, in Anthropic's order: one content block open at a time, text blocks
    extended by deltas, each tool call a block of its own (its input as one `input_json_delta`)."""

    def __init__(self, mid: str, model: str, input_tokens: int = 0) -> None:
        self.mid, self.model, self.input_tokens = mid, model, input_tokens
        self._index = -1
        self._open: str | None = None  # the open block's type

    def start(self) -> list[dict[str, Any]]:
        msg = message(self.mid, self.model, text="", finish_reason=None, usage=None)
        msg["stop_reason"] = None
        msg["usage"]["input_tokens"] = self.input_tokens
        return [{"type": "message_start", "message": msg}]

    def text(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        out = []
        if self._open != "text":
            out += self._close()
            out.append(self._begin({"type": "text", "text": ""}, "text"))
        out.append({"type": "content_block_delta", "index": self._index, "delta": {"type": "text_delta", "text": text}})
        return out

    def tool_call(self, call: ToolCall) -> list[dict[str, Any]]:
        out = self._close()
        out.append(self._begin({"type": "tool_use", "id": call.id, "name": call.name, "input": {}}, "tool_use"))
        partial = json.dumps(tool_input(call.arguments))
        out.append(
            {
                "type": "content_block_delta",
                "index": self._index,
                "delta": {"type": "input_json_delta", "partial_json": partial},
            }
        )
        return out + self._close()

    def finish(self, finish_reason: str | None, usage: Usage | None) -> list[dict[str, Any]]:
        used = usage_object(usage)
        delta = {"stop_reason": stop_reason(finish_reason), "stop_sequence": None}
        return [
            *self._close(),
            {"type": "message_delta", "delta": delta, "usage": used},
            {"type": "message_stop"},
        ]

    def _begin(self, block: dict[str, Any], kind: str) -> dict[str, Any]:
        self._index += 1
        self._open = kind
        return {"type": "content_block_start", "index": self._index, "content_block": block}

    def _close(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        self._open = None
        return [{"type": "content_block_stop", "index": self._index}]
