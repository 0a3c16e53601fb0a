"""OpenAI response shapes: chat.completion and chat.completion.chunk, with our `fusion` extension. Pure.

Streams are safe for the naive loop (`chunk.choices[0].delta.content`): every chunk has `choices[0]`.
Progress rides in the `fusion` field of chunks whose delta is empty; the last chunk carries the
finish_reason, `usage` and the final `fusion` object; a failure mid-stream is OpenRouter's error chunk
(a top-level `error`, finish_reason "error"), and nothing follows it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import Any, TypeVar

from panelfuse import __version__
from panelfuse.pipeline.events import Event, FinalDelta, PanelDelta
from panelfuse.pipeline.prompts import PROMPT_VERSION
from panelfuse.pipeline.result import FusionResult
from panelfuse.providers.base import Completion, StreamEvent
from panelfuse.service.errors import ServiceError
from panelfuse.service.fusion import shutting_down
from panelfuse.service.runs import SHUTDOWN_REASON
from panelfuse.service.server_tool import failure_reason

T = TypeVar("T")

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
                "finish_reason": result.finish_reason,
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
    """One chat.completion.chunk. Without a delta or finish it has empty `choices` (OpenAI's usage chunk)."""
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
    """A progress event in the `fusion` extension of a chunk with an empty delta (so `choices[0]`
    exists for clients that only read text); `data` is the event's wire form (possibly trimmed by the
    caller)."""
    fields = {"event": ev.type, "run_id": ev.run_id, "seq": ev.seq, "type": ev.type, "stage": ev.stage}
    return chunk(cid, model, created, delta={}, fusion={**fields, **data})


def final_chunk(
    cid: str,
    model: str,
    created: int,
    *,
    finish_reason: str,
    usage: dict[str, Any],
    fusion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The stream's last chunk before [DONE]: the finish_reason, `usage` and the final `fusion` object
    in one chunk. Its `choices[0]` is there as in OpenRouter's usage chunk (naive loops never meet an
    empty `choices`), and the finish_reason is sent once (clients that concatenate chunk metadata,
    LangChain's, would read a repeated one as "stopstop")."""
    return chunk(cid, model, created, delta={}, finish_reason=finish_reason, usage=usage, fusion=fusion)


# OpenRouter's canonical error types (its SDK's `APIErrorType`), required in a stream chunk's
# `error.metadata.error_type` by the `openrouter` SDK.
OPENROUTER_ERROR_TYPES = {
    400: "invalid_request",
    401: "authentication",
    402: "payment_required",
    403: "permission_denied",
    404: "not_found",
    408: "timeout",
    413: "payload_too_large",
    422: "unprocessable",
    429: "rate_limit_exceeded",
    500: "server",
    502: "provider_unavailable",
    503: "provider_overloaded",
    504: "timeout",
}


def error_chunk(
    err: ServiceError, cid: str, model: str, created: int, *, usage: dict[str, Any] | None = None
) -> dict[str, Any]:
    """OpenRouter's mid-stream error: a chat.completion.chunk with a top-level `error` (the object a
    non-stream error carries) and `choices[0]` finishing with "error". The stream ends with it: no
    [DONE] follows ("the stream is terminated after this unified error event", OpenRouter's streaming
    docs). `usage`, when given, is what the request cost up to the failure."""
    error = err.error_object()
    metadata = dict(error.get("metadata") or {})
    metadata.setdefault("error_type", OPENROUTER_ERROR_TYPES.get(err.status, "unmapped"))
    out = chunk(cid, model, created, delta={"content": ""}, finish_reason="error", usage=usage)
    out["error"] = {**error, "metadata": metadata}
    return out


def fusion_error(result: FusionResult, *, cancelled: bool | None = None) -> ServiceError:
    """A fusion that did not complete, as its caller is told: the error of a non-stream response
    (server/chat.py builds the same one) and of a stream's error chunk."""
    if cancelled is None:
        cancelled = result.status == "cancelled"
    if cancelled and result.error == SHUTDOWN_REASON:
        return shutting_down(result.run_id)
    return ServiceError(
        499 if cancelled else 502,
        f"fusion failed: {result.error}",
        code="fusion_failed",
        extra={
            "run_id": result.run_id,
            "failed_models": [f.to_dict() for f in result.failed_models],
            "failure_reason": failure_reason(result),
        },
    )


def _merge_key(item: object) -> tuple[str, ...] | None:
    """Which deltas may merge: one member's panel text, the answer's text, an outer model's plain text."""
    if isinstance(item, Event):
        if isinstance(item.payload, PanelDelta):
            return ("panel.delta", item.payload.member)
        if isinstance(item.payload, FinalDelta):
            return ("final.delta",)
        return None
    if isinstance(item, StreamEvent) and item.text and item == StreamEvent(text=item.text):
        return ("text",)
    return None


def _merged(run: list[T]) -> T:
    last = run[-1]
    if len(run) > 1 and isinstance(last, Event):
        text = "".join(e.data["text"] for e in run if isinstance(e, Event))
        payload = last.payload
        merged = PanelDelta(payload.member, text) if isinstance(payload, PanelDelta) else FinalDelta(text)
        return dataclasses.replace(last, payload=merged)  # the last event's seq: a resume after it is exact
    if len(run) > 1 and isinstance(last, StreamEvent):
        return dataclasses.replace(last, text="".join(e.text for e in run if isinstance(e, StreamEvent)))
    return last


def coalesce(items: Iterable[T]) -> list[T]:
    """`items` with each run of consecutive deltas of one stream merged into one (text joined, the
    last event's seq). For a batch that was already waiting: merging what is ready adds no latency.
    The run's own event log is never touched."""
    out: list[T] = []
    run: list[T] = []
    key: tuple[str, ...] | None = None
    for item in items:
        k = _merge_key(item)
        if run and (k is None or k != key):
            out.append(_merged(run))
            run = []
        if k is None:
            out.append(item)
        else:
            run.append(item)
            key = k
    if run:
        out.append(_merged(run))
    return out
