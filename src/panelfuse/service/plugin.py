"""The fusion plugin (and the alias's preset) → a FusionSpec. Pure (docs/architecture.md, "The plugin").

Decisions recorded here, where they are made:

- `tools` / `judge_tools` take plain names (`"web_search"`) and OpenRouter's entries
  (`{"type": "openrouter:web_search", "parameters": {...}}`, also `openrouter:web_fetch` and the
  `panelfuse:` prefix). Of the parameters, the toolbox uses `web_search`'s `max_results` (clamped to
  1–20); the others (`engine`, `search_context_size`, domain filters, `user_location`, `max_uses`, web
  fetch's `max_content_tokens`, …) are accepted and ignored: the backends are the gateway's
  configuration. An unknown tool type is ignored, as an unknown name always was.
- The plugin's `max_completion_tokens` is the limit of every inner call (members, judge), as on
  OpenRouter. The request's own `max_tokens` / `max_completion_tokens`, `temperature`, `stop`, `seed`
  and `reasoning` are the answer's (`FusionSpec.answer`): OpenRouter applies them to the model that
  writes the final answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from panelfuse.service.requests import ChatCompletionRequest, FusionPlugin, MemberObject, ServerToolEntry
from panelfuse.spec import FusionSpec, spec_from_preset

TOOL_PREFIXES = ("openrouter:", "panelfuse:")
SEARCH_MAX_RESULTS = (1, 20)  # the range the toolbox accepts ([tools] max_results)


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


def tool_names(entries: Sequence[str | ServerToolEntry]) -> tuple[list[str], int | None]:
    """(the toolbox's names for `entries`, web_search's `max_results` if one was given)."""
    names: list[str] = []
    max_results: int | None = None
    for entry in entries:
        kind, params = (entry, {}) if isinstance(entry, str) else (entry.type, entry.parameters or {})
        for prefix in TOOL_PREFIXES:
            kind = kind.removeprefix(prefix)
        names.append(kind)
        wanted = params.get("max_results")
        if kind == "web_search" and isinstance(wanted, int | float) and not isinstance(wanted, bool):
            low, high = SEARCH_MAX_RESULTS
            max_results = max(low, min(high, int(wanted)))
    return list(dict.fromkeys(names)), max_results


def answer_settings(req: ChatCompletionRequest) -> dict[str, Any]:
    """The request's own settings for the answer (FusionSpec.answer), the ones it set."""
    extra = req.model_extra or {}
    reasoning = extra.get("reasoning")
    settings = {
        "max_tokens": req.max_completion_tokens or req.max_tokens,
        "temperature": req.temperature,
        "stop": req.stop_list(),
        "seed": req.seed,
        "reasoning": reasoning if isinstance(reasoning, dict) else None,
    }
    return {k: v for k, v in settings.items() if v is not None}


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
    panel_tools, judge_tools, max_results = None, None, None
    if p.tools is not None:
        panel_tools, max_results = tool_names(p.tools)
    if p.judge_tools is not None:
        judge_tools, judge_max = tool_names(p.judge_tools)
        max_results = max_results or judge_max
    simple = {
        "mode": p.mode,
        "max_tool_calls": p.max_tool_calls,
        "panel_tools": panel_tools,
        "judge_tools": judge_tools,
        "search_max_results": max_results,
        "reasoning": p.reasoning,
        "quorum": p.quorum,
        "grace_ms": p.grace_ms,
        "hedge_ms": p.hedge_ms,
        "deadline_ms": p.deadline_ms,
        "max_cost": p.max_cost,
        "panel_sees": p.panel_sees,
        "max_tokens": p.max_completion_tokens,
        "cache_ttl_s": p.cache_ttl_s,
    }
    data.update({k: v for k, v in simple.items() if v is not None})
    if p.escalation is not None:  # the fields the caller set, over the preset's
        given = p.escalation.model_dump(exclude_none=True)
        if "rule" in given:
            data["escalation"]["threshold"] = None  # a threshold belongs to the rule it was set for
        data["escalation"].update(given)
    if p.vote is not None:
        data["vote"] = {**data["vote"], **p.vote.model_dump(exclude_unset=True)}
    data["answer"] = {**data.get("answer", {}), **answer_settings(req)}
    if req.response_format is not None:
        data["response_format"] = req.response_format
    return FusionSpec.model_validate(data)
