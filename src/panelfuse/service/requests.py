"""Request models at the HTTP edge (pydantic): chat completions and the fusion plugin."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from panelfuse.providers.base import ChatRequest
from panelfuse.spec import MAX_MEMBERS, ModeSynonym, PublicMode


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class MemberObject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    weight: float | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    fallbacks: list[str] = Field(default_factory=list, max_length=4)


class ServerToolEntry(BaseModel):
    """A panel tool in OpenRouter's shape: `{"type": "openrouter:web_search", "parameters": {...}}`
    (service/plugin.py maps it onto the toolbox's tools)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(min_length=1)
    parameters: dict[str, Any] | None = None


class FusionPlugin(BaseModel):
    """`plugins: [{"id": "fusion", ...}]`: each field sets a FusionSpec field (service/plugin.py).
    Unknown fields are a 400."""

    model_config = ConfigDict(extra="forbid")

    id: Literal["fusion"]
    preset: str | None = None
    analysis_models: list[str | MemberObject] | None = Field(default=None, min_length=1, max_length=MAX_MEMBERS)
    model: str | None = None
    synthesizer: str | None = None
    mode: PublicMode | ModeSynonym | None = None
    max_tool_calls: int | None = Field(default=None, ge=0, le=16)
    # Plain names (`web_search`) or OpenRouter's `{type, parameters}` entries, mixed freely.
    tools: list[str | ServerToolEntry] | None = None
    judge_tools: list[str | ServerToolEntry] | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    reasoning: dict[str, Any] | None = None
    weights: dict[str, float] | None = None
    fallbacks: dict[str, list[str]] | None = None
    judge_fallbacks: list[str] | None = None
    quorum: int | None = Field(default=None, ge=1, le=MAX_MEMBERS)
    grace_ms: int | None = Field(default=None, ge=0)
    deadline_ms: int | None = Field(default=None, ge=100)
    max_cost: float | None = Field(default=None, ge=0)
    criteria: str | None = None
    dimensions: list[str] | None = None
    panel_sees: Literal["conversation", "last_turn"] | None = None
    include_panel: bool = True
    background: bool = False
    enabled: bool = True
    cache_control: dict[str, Any] | None = None


class ChatCompletionRequest(BaseModel):
    """OpenAI's request body; fields we do not use are kept and passed to proxied providers."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=128)  # OpenAI's ceiling
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    plugins: list[dict[str, Any]] | None = None
    user: str | None = None

    def plain_messages(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]

    def stop_list(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop

    def fusion_plugin(self) -> FusionPlugin | None:
        """The fusion plugin, validated; None when absent. Raises pydantic's ValidationError."""
        for i, p in enumerate(self.plugins or []):
            if isinstance(p, dict) and p.get("id") == "fusion":
                try:
                    return FusionPlugin.model_validate(p)
                except Exception as exc:
                    exc.plugin_index = i  # type: ignore[attr-defined]
                    raise
        return None

    def other_plugins(self) -> list[dict[str, Any]]:
        return [p for p in self.plugins or [] if not (isinstance(p, dict) and p.get("id") == "fusion")]

    def extra_body(self) -> dict[str, Any]:
        """Fields beyond OpenAI's core that go through to a proxied provider unchanged."""
        extra = dict(self.model_extra or {})
        if self.other_plugins():
            extra["plugins"] = self.other_plugins()
        if self.n is not None:
            extra["n"] = self.n
        if self.user is not None:
            extra["user"] = self.user
        return extra


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    score: float = Field(ge=-1, le=1, description="-1 (bad) … 1 (good)")
    comment: str | None = Field(default=None, max_length=4000)


class ResynthesizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="the judge's model")
    synthesizer: str | None = None
    mode: PublicMode | ModeSynonym | None = Field(default=None, description="a mode with a judge (not `single`)")
    criteria: str | None = None
    dimensions: list[str] | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)


class EstimateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "panelfuse/fusion"
    messages: list[ChatMessage] = Field(min_length=1)
    plugins: list[dict[str, Any]] | None = None
    max_completion_tokens: int | None = Field(default=None, ge=1)


def upstream_request(body: ChatCompletionRequest, model: str) -> ChatRequest:
    """The request as the plain model's provider reads it (`model`: its provider-local id)."""
    extra = body.extra_body()
    extra.pop("n", None)  # a field of its own: only adapters that support several choices send it
    return ChatRequest(
        model=model,
        messages=body.plain_messages(),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stop_list(),
        tools=body.tools,
        tool_choice=body.tool_choice,
        response_format=body.response_format,
        extra_body=extra,
        n=body.n,
    )
