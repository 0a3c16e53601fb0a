"""OpenAI response shapes: chat.completion and chat.completion.chunk, with our `fusion` extension. Pure."""

from __future__ import annotations

import time
from typing import Any

from panelfuse import __version__
from panelfuse.pipeline.events import Event
from panelfuse.pipeline.prompts import PROMPT_VERSION
from panelfuse.pipeline.result import FusionResult
from panelfuse.providers.base import Completion

SYSTEM_FINGERPRINT = f"panelfuse-{__version__}-{PROMPT_VERSION}"


def completion_id(run_id: str) -> str:
    return f"chatcmpl-{run_id.removeprefix('run_')}"


def fusion_object(result: FusionResult, include_panel: bool = True) -> dict[str, Any]:
    data = result.to_dict()
    data.pop("content", None)
    data.pop("usage", None)
    if not include_panel:
        for m in data["panel"]:
            m.pop("content", None)
    return data


def chat_completion(result: FusionResult, *, include_panel: bool = True, created: int | None = None) -> dict[str, Any]:
    return {
        "id": completion_id(result.run_id),
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": result.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": result.content,
                    "refusal": None,
                    "annotations": result.annotations,
                },
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": result.usage_dict(),
        "fusion": fusion_object(result, include_panel),
    }


def proxied_completion(c: Completion, *, model: str, cid: str, created: int | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": c.text or None, "refusal": c.refusal}
    if c.tool_calls:
        message["tool_calls"] = [t.to_openai() for t in c.tool_calls]
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "message": message, "finish_reason": c.finish_reason or "stop", "logprobs": None}],
        "usage": c.usage.to_dict(),
    }


def chunk(
    cid: str,
    model: str,
    created: int,
    *,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
    fusion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One chat.completion.chunk. Without a delta or finish it has empty `choices` (progress, usage)."""
    out: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [],
    }
    if delta is not None or finish_reason is not None:
        out["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason, "logprobs": None}]
    if usage is not None:
        out["usage"] = usage
    if fusion is not None:
        out["fusion"] = fusion
    return out


def event_chunk(ev: Event, data: dict[str, Any], cid: str, model: str, created: int) -> dict[str, Any]:
    """A progress event in the `fusion` extension of a chunk with empty `choices`; `data` is the
    event's wire form (possibly trimmed by the caller)."""
    fields = {"event": ev.type, "run_id": ev.run_id, "seq": ev.seq, "type": ev.type, "stage": ev.stage}
    return chunk(cid, model, created, fusion={**fields, **data})


def error_chunk(message: str, code: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    # OpenRouter's mid-stream error shape: an `error` object in a data line, then [DONE].
    return {"error": {"message": message, "code": code, **(extra or {})}}
