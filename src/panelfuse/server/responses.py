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
    annotations: list[dict[str, Any]] | None = None  # url_citation, as OpenAI and OpenRouter send them
    tool_calls: list[dict[str, Any]] | None = None


class Choice(_Open):
    index: int
    message: Message
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


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


class ModelArchitecture(_Open):
    modality: str | None
    input_modalities: list[str]
    output_modalities: list[str]
    tokenizer: str
    instruct_type: str | None = None


class ModelPricing(_Open):
    """USD per token as decimal strings, as OpenRouter sends them; "-1" where the price varies (a
    fusion) or is unknown."""

    prompt: str
    completion: str
    request: str | None = None


class TopProvider(_Open):
    is_moderated: bool
    context_length: int | None
    max_completion_tokens: int | None


class ModelLinks(_Open):
    details: str


class Model(_Open):
    """OpenAI's model object (id, object, created, owned_by) with OpenRouter's fields beside it (the
    `openrouter` SDK's `Model`)."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    canonical_slug: str
    name: str
    description: str
    context_length: int | None
    architecture: ModelArchitecture
    pricing: ModelPricing
    top_provider: TopProvider
    per_request_limits: dict[str, float] | None
    supported_parameters: list[str]
    default_parameters: dict[str, Any] | None
    supported_voices: list[str] | None
    links: ModelLinks


class PageLinks(_Open):
    next: str | None


class ModelList(_Open):
    """OpenAI's list, with OpenRouter's paging fields (`links.next`, `total_count`)."""

    object: Literal["list"]
    data: list[Model]
    links: PageLinks
    total_count: int


class ModelData(_Open):
    data: Model


class Count(_Open):
    count: int


class ModelCount(_Open):
    data: Count


class GenerationData(_Open):
    """OpenRouter's generation stats (the `openrouter` SDK's `GenerationResponseData`); every field it
    requires is present, null where panelfuse has no such figure. `run_id` and `kind` are ours."""

    id: str
    model: str
    created_at: str
    total_cost: float
    usage: float
    upstream_inference_cost: float | None
    cache_discount: float | None
    tokens_prompt: int | None
    tokens_completion: int | None
    native_tokens_prompt: int | None
    native_tokens_completion: int | None
    native_tokens_cached: int | None
    native_tokens_reasoning: int | None
    native_tokens_completion_images: int | None
    latency: float | None
    generation_time: float | None
    moderation_latency: float | None
    finish_reason: str | None
    native_finish_reason: str | None
    streamed: bool | None
    cancelled: bool | None
    api_type: str | None
    is_byok: bool
    provider_name: str | None
    provider_responses: list[dict[str, Any]] | None
    router: str | None
    origin: str
    data_region: str
    app_id: int | None
    external_user: str | None
    http_referer: str | None
    user_agent: str | None
    num_fetches: int | None
    num_input_audio_prompt: int | None
    num_media_completion: int | None
    num_media_prompt: int | None
    num_search_results: int | None
    preset_id: str | None
    service_tier: str | None
    upstream_id: str | None
    web_search_engine: str | None
    workspace_id: str | None
    kind: Literal["chat", "responses"]
    run_id: str | None


class Generation(_Open):
    data: GenerationData


class KeyBudget(_Open):
    budget_id: str | None
    guardrail_id: str | None
    include_byok: bool
    limit_usd: float
    remaining_usd: float
    reset_interval: str | None
    resets_at: str | None
    scope: str
    spend_usd: float


class KeyRateLimit(_Open):
    requests: int
    interval: str
    note: str


class FreeModelRequests(_Open):
    limit: int
    remaining: int
    used: int


class KeyData(_Open):
    """OpenRouter's current-key object (the `openrouter` SDK's `GetCurrentKeyData`) for the caller's
    panelfuse key: usage is what the key has been charged, limit its budget."""

    label: str
    usage: float
    usage_daily: float
    usage_weekly: float
    usage_monthly: float
    byok_usage: float
    byok_usage_daily: float
    byok_usage_weekly: float
    byok_usage_monthly: float
    include_byok_in_limit: bool
    limit: float | None
    limit_remaining: float | None
    limit_reset: str | None
    is_free_tier: bool
    is_management_key: bool
    is_provisioning_key: bool
    rate_limit: KeyRateLimit
    budgets: list[KeyBudget]
    effective_budget: KeyBudget | None
    allowed_data_regions: list[str]
    free_model_daily_requests: FreeModelRequests
    creator_user_id: str | None
    organization_id: str | None
    workspace_id: str | None
    expires_at: str | None


class Key(_Open):
    data: KeyData


SSE_OR_JSON: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "JSON, or SSE when stream"}
}
