"""The fusion plugin (and the alias's preset) → a FusionSpec. Pure (docs/architecture.md, "The plugin")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from panelfuse.service.requests import ChatCompletionRequest, FusionPlugin, MemberObject
from panelfuse.spec import FusionSpec, spec_from_preset


def _members(plugin: FusionPlugin) -> list[dict[str, Any]] | None:
    if plugin.analysis_models is None:
        return None
    members: list[dict[str, Any]] = []
    for m in plugin.analysis_models:
        members.append(m.model_dump(exclude_none=True) if isinstance(m, MemberObject) else {"model": m})
    return members


def _apply_by_model_or_label(members: list[dict[str, Any]], table: Mapping[str, Any], field: str) -> None:
    """`weights`/`fallbacks` are keyed by model id (every member with it) or by label (A, B, …)."""
    for i, m in enumerate(members):
        label = chr(ord("A") + i)
        for key in (label, m["model"]):
            if key in table:
                m[field] = table[key]


def spec_from_request(
    req: ChatCompletionRequest,
    plugin: FusionPlugin | None,
    alias_preset: str | None,
    default_preset: str,
    presets: Mapping[str, Mapping[str, Any]],
) -> FusionSpec:
    """Raises KeyError (unknown preset) or pydantic's ValidationError (bad values): the caller maps them."""
    p = plugin or FusionPlugin(id="fusion")
    preset = p.preset or alias_preset or default_preset
    base = spec_from_preset(preset, presets)
    data = base.model_dump()
    members = _members(p)
    if members is not None:
        data["members"] = members
    if p.weights:
        _apply_by_model_or_label(data["members"], p.weights, "weight")
    if p.fallbacks:
        _apply_by_model_or_label(data["members"], p.fallbacks, "fallbacks")
    if p.temperature is not None:
        data["temperature"] = p.temperature  # a default: a member's own temperature wins
    if p.model:
        data["judge"]["model"] = p.model
    if p.judge_fallbacks is not None:
        data["judge"]["fallbacks"] = p.judge_fallbacks
    if p.criteria is not None:
        data["judge"]["criteria"] = p.criteria
    if p.dimensions is not None:
        data["judge"]["dimensions"] = p.dimensions
    if p.synthesizer:
        data["synthesizer"] = {"model": p.synthesizer, "fallbacks": []}
    simple = {
        "mode": p.mode,
        "max_tool_calls": p.max_tool_calls,
        "panel_tools": p.tools,
        "judge_tools": p.judge_tools,
        "reasoning": p.reasoning,
        "quorum": p.quorum,
        "grace_ms": p.grace_ms,
        "deadline_ms": p.deadline_ms,
        "max_cost": p.max_cost,
        "panel_sees": p.panel_sees,
        "max_tokens": p.max_completion_tokens or req.max_completion_tokens or req.max_tokens,
    }
    data.update({k: v for k, v in simple.items() if v is not None})
    if req.response_format is not None:
        data["response_format"] = req.response_format
    return FusionSpec.model_validate(data)
