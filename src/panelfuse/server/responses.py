"""Response models for the routes (`response_model=`): they document the bodies in /docs and the
OpenAPI schema, and the schemathesis run checks real responses against them. Extra fields are
allowed (OpenAI clients ignore unknown ones; our `fusion` extension rides along)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Usage(_Open):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float | None = None


class Message(_Open):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None = None


class Choice(_Open):
    index: int
    message: Message
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(_Open):
    """OpenAI's chat.completion; a fusion adds `fusion` (run id, panel, analysis, costs)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage
    fusion: dict[str, Any] | None = None


class Run(_Open):
    id: str
    status: Literal["running", "completed", "failed", "cancelled", "interrupted"]
    created_at: str
    updated_at: str
    preset: str | None
    mode: str
    request_model: str
    result: dict[str, Any] | None
    content: str
    cost: float | None
    degraded: bool
    error: str | None
    latency_ms: int
    prompt_version: str
    parent_run_id: str | None
    feedback_score: float | None
    feedback_comment: str | None


class RunList(_Open):
    object: Literal["list"]
    data: list[Run]
    next_cursor: str | None
    has_more: bool


class Deleted(_Open):
    id: str
    object: Literal["fusion.run"]
    deleted: bool


class Feedback(_Open):
    id: str
    object: Literal["fusion.feedback"]
    score: float
    comment: str | None


class PlannedCall(_Open):
    stage: str
    who: str
    model: str
    prompt_tokens: int
    max_tokens: int
    cost: float


class Estimate(_Open):
    object: Literal["fusion.estimate"]
    total: float
    by_stage: dict[str, float]
    unpriced: list[str]
    prices_as_of: str
    calls: list[PlannedCall]
    formula: str


class Model(_Open):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Open):
    object: Literal["list"]
    data: list[Model]


SSE_OR_JSON: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "JSON, or SSE when stream"}
}
