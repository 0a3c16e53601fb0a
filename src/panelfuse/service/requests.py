"""Request models at the HTTP edge (pydantic): chat completions and the fusion plugin.

Bad input is a 400 here, before anything runs or is stored (the limits are the constants below): a body
nested deeper than MAX_JSON_DEPTH, a non-finite number anywhere (1e400, NaN), a lone surrogate in any
string, a number out of its field's range, a NUL in an identifier the store keeps as text."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from panelfuse.providers.base import ChatRequest
from panelfuse.spec import (
    MAX_CACHE_TTL_S,
    MAX_DEADLINE_MS,
    MAX_GRACE_MS,
    MAX_HEDGE_MS,
    MAX_INNER_TOKENS,
    MAX_MEMBERS,
    MAX_USD,
    MAX_WEIGHT,
    SEED_RANGE,
    EscalationRule,
    ModeSynonym,
    PublicMode,
    VoteSpec,
)

# Nesting levels of objects and arrays a body may have (the body itself is level 1). Real requests
# need a handful (a JSON schema in response_format a few more); deep nesting only exhausts recursion
# in the JSON encoders and pydantic's serializer further down.
MAX_JSON_DEPTH = 64
MAX_MESSAGES = 4096
MAX_ID_LENGTH = 512  # model ids, user ids, response ids
MAX_OUTPUT_TOKENS = 1_000_000  # above any model's output limit; also keeps the cost arithmetic in floats
MAX_TOOLS = 128  # OpenAI's limit
MAX_STOP = 64
# OpenAI's chat content part types (`refusal` in an assistant's content).
PART_TYPES = ("text", "image_url", "input_audio", "file", "refusal")


def body_problem(value: Any, limit: int = MAX_JSON_DEPTH) -> str | None:
    """Why a parsed JSON body cannot be taken (too deep, a non-finite number), naming where; None if it
    can. Iterative, so a body deep enough to break a recursive walk cannot break this one."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"{_path(path)}: numbers must be finite (got {item})"
        if isinstance(item, str) and not _valid_unicode(item):
            return f"{_path(path)}: strings must be valid Unicode (a lone surrogate escape such as \\ud800 is not)"
        if isinstance(item, dict):
            bad_key = next((k for k in item if isinstance(k, str) and not _valid_unicode(k)), None)
            if bad_key is not None:
                return f"{_path(path)}: keys must be valid Unicode (a lone surrogate escape such as \\ud800 is not)"
            children: list[tuple[Any, str | int]] = [(v, _printable(k)) for k, v in item.items()]
        elif isinstance(item, list):
            children = [(v, i) for i, v in enumerate(item)]
        else:
            continue
        if len(path) >= limit:
            return f"{_path(path[:1])}: nested more than {limit} levels deep (the limit)"
        stack.extend((v, (*path, key)) for v, key in children)
    return None


def _valid_unicode(text: str) -> bool:
    # JSON's \\ud800 escapes decode to lone surrogates, which no UTF-8 writer (responses, the store,
    # an upstream) can encode.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(key: Any) -> str:
    # A key is echoed in the error: a lone surrogate could not be encoded, and a long one is cut.
    text = str(key).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= 40 else text[:40] + "…"


def _path(path: tuple[str | int, ...]) -> str:
    out = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).removeprefix(".")
    return out or "body"


# pydantic names union branches in an error's location (`str`, `list[ContentPart]`, `MemberObject`,
# `function-after[...]`); they are not fields the caller wrote.
_BRANCH = re.compile(r"^(str|int|float|bool|none|[A-Z][a-z]+(?:[A-Z][a-z]*)+|[\w-]+\[.*\])$")


def first_problem(errors: Sequence[Mapping[str, Any]]) -> tuple[tuple[str | int, ...], str]:
    """(location, message) of the most telling of pydantic's errors: the deepest one (for a union, the
    branch that got furthest, not the first branch tried), its location without branch names."""
    if not errors:
        return (), "invalid request"
    best = max(errors, key=lambda e: len(e.get("loc", ())))
    loc = tuple(p for p in best.get("loc", ()) if not (isinstance(p, str) and _BRANCH.match(p)))
    return loc, str(best.get("msg", "invalid value")).removeprefix("Value error, ")


def no_nul(value: str) -> str:
    # PostgreSQL's text columns cannot hold NUL: an id with one could only fail in the store.
    if "\x00" in value:
        raise ValueError("must not contain a NUL character (\\u0000)")
    return value


def no_nul_or_none(value: str | None) -> str | None:
    return None if value is None else no_nul(value)


# A string the store may keep or look up as text: no NUL.
Text = Annotated[str, AfterValidator(no_nul)]
Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH), AfterValidator(no_nul)]
Seed = Annotated[int, Field(ge=SEED_RANGE[0], le=SEED_RANGE[1])]
OutputTokens = Annotated[int, Field(ge=1, le=MAX_OUTPUT_TOKENS)]


class EdgeModel(BaseModel):
    """A whole request body: checked for depth and non-finite numbers before its fields are read."""

    model_config = ConfigDict(allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _sane_json(cls, data: Any) -> Any:
        problem = body_problem(data)
        if problem is not None:
            raise PydanticCustomError("unreadable_body", problem)
        return data


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    type: Literal[PART_TYPES]  # type: ignore[valid-type]
    text: str | None = None

    @model_validator(mode="after")
    def _text_part_has_text(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs `text` (a string)")
        return self


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class MemberObject(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: Identifier
    weight: float | None = Field(default=None, gt=0, le=MAX_WEIGHT)
    temperature: float | None = Field(default=None, ge=0, le=2)
    fallbacks: list[Identifier] = Field(default_factory=list, max_length=4)
    hedge_ms: int | None = Field(default=None, ge=0, le=MAX_HEDGE_MS)


class ServerToolEntry(BaseModel):
    """A panel tool in OpenRouter's shape: `{"type": "openrouter:web_search", "parameters": {...}}`
    (service/plugin.py maps it onto the toolbox's tools)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    parameters: dict[str, Any] | None = None


class EscalationFields(BaseModel):
    """The plugin's `escalation`: spec.EscalationSpec's fields, each optional (laid over the preset's,
    then checked together as the spec)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    first_stage: int | None = Field(default=None, ge=1, le=2)
    rule: EscalationRule | None = None
    threshold: float | None = Field(default=None, ge=0, le=1)


class FusionPlugin(BaseModel):
    """`plugins: [{"id": "fusion", ...}]`: each field sets a FusionSpec field (service/plugin.py).
    Unknown fields are a 400."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    id: Literal["fusion"]
    preset: Identifier | None = None
    analysis_models: list[Identifier | MemberObject] | None = Field(default=None, min_length=1, max_length=MAX_MEMBERS)
    model: Identifier | None = None
    synthesizer: Identifier | None = None
    mode: PublicMode | ModeSynonym | None = None
    max_tool_calls: int | None = Field(default=None, ge=0, le=16)
    # Plain names (`web_search`) or OpenRouter's `{type, parameters}` entries, mixed freely.
    tools: list[Identifier | ServerToolEntry] | None = Field(default=None, max_length=MAX_TOOLS)
    judge_tools: list[Identifier | ServerToolEntry] | None = Field(default=None, max_length=MAX_TOOLS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_INNER_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    reasoning: dict[str, Any] | None = None
    weights: dict[str, Annotated[float, Field(gt=0, le=MAX_WEIGHT)]] | None = None
    fallbacks: dict[str, list[Identifier]] | None = None
    judge_fallbacks: list[Identifier] | None = Field(default=None, max_length=4)
    quorum: int | None = Field(default=None, ge=1, le=MAX_MEMBERS)
    grace_ms: int | None = Field(default=None, ge=0, le=MAX_GRACE_MS)
    hedge_ms: int | None = Field(default=None, ge=0, le=MAX_HEDGE_MS)
    deadline_ms: int | None = Field(default=None, ge=100, le=MAX_DEADLINE_MS)
    max_cost: float | None = Field(default=None, ge=0, le=MAX_USD)
    criteria: str | None = Field(default=None, max_length=4000)
    dimensions: list[str] | None = Field(default=None, max_length=8)
    panel_sees: Literal["conversation", "last_turn"] | None = None
    include_panel: bool = True
    background: bool = False
    enabled: bool = True
    cache_control: dict[str, Any] | None = None
    # Mode `escalate`'s and `vote`'s settings (spec.EscalationSpec, spec.VoteSpec): the fields given are
    # laid over the preset's.
    escalation: EscalationFields | None = None
    vote: VoteSpec | None = None
    cache_ttl_s: int | None = Field(default=None, ge=0, le=MAX_CACHE_TTL_S)  # the response cache: docs/cache.md


class ChatCompletionRequest(EdgeModel):
    """OpenAI's request body; fields we do not use are kept and passed to proxied providers."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: Identifier
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: OutputTokens | None = None
    max_completion_tokens: OutputTokens | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: Seed | None = None
    stop: str | list[str] | None = Field(default=None, max_length=MAX_STOP)
    n: int | None = Field(default=None, ge=1, le=128)  # OpenAI's ceiling
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    plugins: list[dict[str, Any]] | None = Field(default=None, max_length=16)
    user: Text | None = Field(default=None, max_length=MAX_ID_LENGTH)

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, str) and len(v) > 4096:
            raise ValueError("a stop sequence is at most 4096 characters")
        return v

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


class FeedbackRequest(EdgeModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    score: float = Field(ge=-1, le=1, description="-1 (bad) … 1 (good)")
    comment: Text | None = Field(default=None, max_length=4000)


class ResynthesizeRequest(EdgeModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: Identifier | None = Field(default=None, description="the judge's model")
    synthesizer: Identifier | None = None
    mode: PublicMode | ModeSynonym | None = Field(default=None, description="a mode with a judge (not `single`)")
    criteria: str | None = Field(default=None, max_length=4000)
    dimensions: list[str] | None = Field(default=None, max_length=8)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_INNER_TOKENS)


class EstimateRequest(EdgeModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: Identifier = "panelfuse/fusion"
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    plugins: list[dict[str, Any]] | None = Field(default=None, max_length=16)
    max_completion_tokens: OutputTokens | None = None


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
