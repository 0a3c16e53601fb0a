"""FusionSpec: what one fusion run does. Presets are data (data/presets.toml, overridable in config)."""

from __future__ import annotations

import string
import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from panelfuse.providers.resolve import canonical_preset

# The one list of modes (each is a strategy in panelfuse.pipeline.modes). "analyze": panel + analysis
# only, no answer (what the fusion server tool hands to the outer model), not offered to callers.
PublicMode = Literal["synthesize", "judge-writes", "best-of", "single", "escalate", "vote"]
Mode = Literal[PublicMode, "analyze"]
ModeSynonym = Literal["full", "fast"]  # OpenRouter's names
MODE_SYNONYMS: dict[str, PublicMode] = {"full": "synthesize", "fast": "single"}
PUBLIC_MODES: tuple[str, ...] = get_args(PublicMode)
MAX_MEMBERS = 8
LABELS = string.ascii_uppercase[:MAX_MEMBERS]
# Field limits (the request edge uses them too): generous, but finite, so every figure stays a float
# and fits the store.
MAX_INNER_TOKENS = 200_000  # per call
MAX_DEADLINE_MS = 3_600_000  # an hour per upstream call
MAX_GRACE_MS = 3_600_000
MAX_HEDGE_MS = 3_600_000
MAX_USD = 1_000_000.0
MAX_WEIGHT = 1_000.0
SEED_RANGE = (-(2**63), 2**63 - 1)  # OpenAI's seed is a 64-bit integer
MAX_CACHE_TTL_S = 30 * 86_400  # a cached answer is served for a month at most (docs/cache.md)


class MemberSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(min_length=1)
    weight: float | None = Field(default=None, gt=0, le=MAX_WEIGHT)
    temperature: float | None = Field(default=None, ge=0, le=2)
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    fallbacks: list[str] = Field(default_factory=list, max_length=4)
    # This member's own hedge delay (FusionSpec.hedge_ms); None: the spec's.
    hedge_ms: int | None = Field(default=None, ge=0, le=MAX_HEDGE_MS)


# The analysis's own keys (pipeline/analysis.py): an extra dimension may not reuse one.
ANALYSIS_KEYS = ("consensus", "contradictions", "partial_coverage", "unique_insights", "blind_spots", "anomalies")


class JudgeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    fallbacks: list[str] = Field(default_factory=list, max_length=4)
    criteria: str | None = Field(default=None, max_length=4000)
    # Extra analysis dimensions beyond the six of pipeline/analysis.py, e.g. ["risks", "open_questions"].
    dimensions: list[str] = Field(default_factory=list, max_length=8)

    @field_validator("dimensions")
    @classmethod
    def _identifiers(cls, v: list[str]) -> list[str]:
        for d in v:
            if not d.isidentifier():
                raise ValueError(f"dimension '{d}' must be a plain identifier (letters, digits, _)")
            if d in ANALYSIS_KEYS:
                raise ValueError(f"dimension '{d}' is one of the analysis's own keys")
        return v


class SynthesizerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # default: the judge's model
    fallbacks: list[str] = Field(default_factory=list, max_length=4)


class AnswerSpec(BaseModel):
    """The caller's own settings for the answer: the request's `max_tokens`/`max_completion_tokens`,
    `temperature`, `stop`, `seed` and `reasoning`, as OpenRouter applies them to the model that writes
    the final answer. They go to the call that writes the answer (the synthesizer; the member in
    `single`), never to the other members nor to the judge's analysis. In `judge-writes` only
    `max_tokens` applies (the answer's part of the judge's one call); `best-of` and `vote` return a member's answer
    verbatim, so none applies; in `escalate` they apply to the synthesizer when the run escalates, and
    none applies to the first member's answer returned verbatim when it does not."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_tokens: int | None = Field(default=None, ge=1, le=MAX_INNER_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stop: list[str] | None = Field(default=None, max_length=4)
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    reasoning: dict[str, Any] | None = None


# `escalate` (pipeline/modes/escalate.py): how the first stage's answers decide whether the rest of the
# panel, the judge's analysis and the synthesizer run. "judge": a judge call on the first stage (two
# answers: its analysis reports contradictions; one answer: a strict sure/unsure verdict); "overlap":
# the token-set Jaccard similarity of two answers is below `threshold` (pipeline/agreement.py);
# "final-answer": the two answers' final answers (pipeline/final_answer.py) differ. No model call for
# the last two.
EscalationRule = Literal["judge", "overlap", "final-answer"]
DEFAULT_OVERLAP_THRESHOLD = 0.5


class EscalationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    first_stage: int = Field(default=2, ge=1, le=2, description="the first members asked (1 or 2)")
    rule: EscalationRule = "judge"
    # "overlap" only: escalate when the similarity is below it (default DEFAULT_OVERLAP_THRESHOLD).
    threshold: float | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> EscalationSpec:
        if self.rule != "judge" and self.first_stage != 2:
            raise ValueError(f"rule '{self.rule}' compares two answers: it needs first_stage 2")
        if self.threshold is not None and self.rule != "overlap":
            raise ValueError(f"threshold applies to rule 'overlap' only (rule is '{self.rule}')")
        return self

    @property
    def overlap_threshold(self) -> float:
        return DEFAULT_OVERLAP_THRESHOLD if self.threshold is None else self.threshold


class VoteSpec(BaseModel):
    """`vote` (pipeline/modes/vote.py): who reads the samples' answers into groups of equal answers.
    "normalise": the final-answer normaliser (pipeline/final_answer.py), no model call; "judge": one
    judge call that groups equivalent answers (strict JSON)."""

    model_config = ConfigDict(extra="forbid")

    reading: Literal["normalise", "judge"] = "normalise"


class FusionSpec(BaseModel):
    """A whole fusion run. Validated with messages that name the field."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    preset: str | None = None
    members: list[MemberSpec] = Field(min_length=1, max_length=MAX_MEMBERS)
    judge: JudgeSpec
    synthesizer: SynthesizerSpec = Field(default_factory=SynthesizerSpec)
    mode: Mode = "synthesize"
    quorum: int | None = Field(default=None, ge=1, le=MAX_MEMBERS)
    grace_ms: int | None = Field(default=None, ge=0, le=MAX_GRACE_MS)
    # Hedged member calls (pipeline/hedge.py): a member's first call not answered this long after it
    # started gets a duplicate to its first fallback (or its own model), and the first answer wins.
    # None: off.
    hedge_ms: int | None = Field(default=None, ge=0, le=MAX_HEDGE_MS)
    deadline_ms: int = Field(default=120_000, ge=100, le=MAX_DEADLINE_MS, description="deadline of the whole run")
    max_tokens: int = Field(default=1024, ge=1, le=MAX_INNER_TOKENS, description="per inner call")
    max_tool_calls: int = Field(default=8, ge=0, le=16)
    panel_tools: list[str] = Field(default_factory=lambda: ["web_search", "web_fetch"])
    judge_tools: list[str] = Field(default_factory=list)
    # web_search results per search (OpenRouter's `openrouter:web_search` parameter `max_results`);
    # None: the toolbox's own setting ([tools] max_results).
    search_max_results: int | None = Field(default=None, ge=1, le=20)
    max_cost: float | None = Field(default=None, ge=0, le=MAX_USD, description="USD")
    # OpenRouter's default: the members get the system prompts and the last user turn; "conversation"
    # (opt-in) gives them the whole conversation.
    panel_sees: Literal["conversation", "last_turn"] = "last_turn"
    temperature: float | None = Field(default=None, ge=0, le=2, description="member default")
    reasoning: dict[str, Any] | None = None
    # The caller's response_format: applies to the synthesizer (the answer), never to the judge.
    response_format: dict[str, Any] | None = None
    answer: AnswerSpec = Field(default_factory=AnswerSpec)
    escalation: EscalationSpec = Field(default_factory=EscalationSpec)  # mode "escalate" only
    vote: VoteSpec = Field(default_factory=VoteSpec)  # mode "vote" only
    # The response cache (docs/cache.md): seconds a completed answer is served again to the same caller
    # for the same request. 0: off; None: the gateway's default (off unless the operator set one).
    cache_ttl_s: int | None = Field(default=None, ge=0, le=MAX_CACHE_TTL_S)

    @field_validator("mode", mode="before")
    @classmethod
    def _mode_synonyms(cls, v: Any) -> Any:
        return MODE_SYNONYMS.get(v, v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _consistent(self) -> FusionSpec:
        if self.quorum is not None and self.quorum > len(self.members):
            raise ValueError(f"quorum {self.quorum} is larger than the panel ({len(self.members)} members)")
        if self.mode == "escalate" and self.escalation.first_stage > len(self.members):
            raise ValueError(
                f"escalation.first_stage {self.escalation.first_stage} is larger than the panel "
                f"({len(self.members)} members)"
            )
        return self

    @property
    def answer_max_tokens(self) -> int:
        """The limit of the call that writes the answer: the caller's, else the per-call limit."""
        return self.answer.max_tokens or self.max_tokens

    @property
    def synthesizer_model(self) -> str:
        return self.synthesizer.model or self.judge.model

    @property
    def synthesizer_fallbacks(self) -> list[str]:
        return self.synthesizer.fallbacks if self.synthesizer.model else self.judge.fallbacks

    def hedge_ms_for(self, member: MemberSpec) -> int | None:
        """The delay after which `member`'s first call is hedged: its own, else the spec's; None: never."""
        return member.hedge_ms if member.hedge_ms is not None else self.hedge_ms

    def labelled_members(self) -> list[tuple[str, MemberSpec]]:
        return list(zip(LABELS, self.members, strict=False))


def builtin_presets() -> dict[str, dict[str, Any]]:
    text = resources.files("panelfuse").joinpath("data/presets.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def all_presets(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Built-in presets with the config's [presets.*] tables laid over them, field by field."""
    out = builtin_presets()
    for name, table in (overrides or {}).items():
        out[name] = {**out.get(name, {}), **table}
    return out


def spec_from_preset(name: str, presets: Mapping[str, Mapping[str, Any]], **overrides: Any) -> FusionSpec:
    """Build a spec from a preset, then apply overrides (already in FusionSpec's field names)."""
    canonical = canonical_preset(name)
    if canonical not in presets:
        raise KeyError(f"unknown preset '{name}' (known: {', '.join(sorted(presets))})")
    raw = {k: v for k, v in presets[canonical].items() if k != "description"}
    members = [m if isinstance(m, Mapping) else {"model": m} for m in raw.pop("members")]
    judge = raw.pop("judge")
    judge = dict(judge) if isinstance(judge, Mapping) else {"model": judge}
    data: dict[str, Any] = {"preset": canonical, "members": members, "judge": judge, **raw}
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "judge" and isinstance(value, str):
            data["judge"] = {**data["judge"], "model": value}
        elif key == "members":
            data["members"] = [m if isinstance(m, Mapping | MemberSpec) else {"model": m} for m in value]
        else:
            data[key] = value
    return FusionSpec.model_validate(data)


def preset_model_ids(preset: Mapping[str, Any]) -> list[str]:
    """Every model id a preset may call: members, their fallbacks, judge, synthesizer and fallbacks."""
    ids: list[str] = []
    for m in preset.get("members", []):
        if isinstance(m, Mapping):
            ids += [m["model"], *m.get("fallbacks", [])]
        else:
            ids.append(m)
    for role in ("judge", "synthesizer"):
        r = preset.get(role)
        if isinstance(r, Mapping):
            ids += [r["model"], *r.get("fallbacks", [])] if r.get("model") else list(r.get("fallbacks", []))
        elif isinstance(r, str):
            ids.append(r)
    return list(dict.fromkeys(ids))


def verify_model_ids(
    ids: list[tuple[str, str, str]], available: Mapping[str, set[str] | None]
) -> list[tuple[str, str, str]]:
    """(qualified id, provider, provider-local id) → (qualified id, provider, status) where status is
    `verified`, `missing`, or `unverified` when the provider's list could not be had. Pure."""
    out = []
    for qualified, provider, local in ids:
        listed = available.get(provider)
        status = "unverified" if listed is None else ("verified" if local in listed else "missing")
        out.append((qualified, provider, status))
    return out
