"""The worst-case cost of a run before it starts (formula: see panelfuse.pricing).

With tools: a model that will get tools through function calling is counted with max_tool_calls extra
rounds (pricing.member_call_tokens), plus max_tool_calls search requests at the search backend's
price when web_search is among its tools. A member without function calling that gets pre-retrieval
has TOOL_RESULT_TOKENS more prompt, and the run one search request more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from panelfuse.pipeline.panel import panel_messages
from panelfuse.pricing import (
    PROMPT_OVERHEAD_TOKENS,
    TOOL_RESULT_TOKENS,
    Estimate,
    PlannedCall,
    PriceTable,
    member_call_tokens,
    messages_tokens,
)
from panelfuse.spec import FusionSpec

BEST_OF_MAX_TOKENS = 200
WEB_SEARCH = "web_search"
# (role "panel" | "judge", qualified model id) -> the tools that model will be offered
ToolsFor = Callable[[str, str], Sequence[str]]


def judge_max_tokens(spec: FusionSpec) -> int:
    if spec.mode == "best-of":
        return min(BEST_OF_MAX_TOKENS, spec.max_tokens)
    if spec.mode == "judge-writes":
        return 2 * spec.max_tokens  # the analysis, then the answer, in one call
    return spec.max_tokens


def add_searches(est: Estimate, stage: str, who: str, count: int, price: float) -> None:
    """Search requests as a planned item (no tokens): `count` × the backend's price per request."""
    if count and price:
        est.calls.append(PlannedCall(stage, who, "tools/web_search", 0, 0, count * price))
        est.total += count * price


def estimate_run(
    spec: FusionSpec,
    messages: Sequence[dict[str, Any]],
    prices: PriceTable,
    enforces_schema: Callable[[str], bool],
    tools_active: bool = False,
    *,
    tools_for: ToolsFor | None = None,
    search_price: float = 0.0,
    pre_retrieval: bool = False,
) -> Estimate:
    """`tools_for` says which tools each model gets (the Fusion asks its toolbox and providers);
    without it, `tools_active=True` means every model gets the spec's tools."""

    def tools(role: str, model: str) -> Sequence[str]:
        if tools_for is not None:
            return tools_for(role, model)
        return (spec.panel_tools if role == "panel" else spec.judge_tools) if tools_active else ()

    est = Estimate()
    panel_prompt = messages_tokens(panel_messages(messages, spec.panel_sees))
    members = spec.labelled_members()[:1] if spec.mode == "single" else spec.labelled_members()
    retrieval_used = False
    for label, member in members:
        for model in (member.model, *member.fallbacks):
            offered = tools("panel", model)
            rounds = spec.max_tool_calls if offered else 0
            prompt = panel_prompt
            if not offered and pre_retrieval:
                prompt, retrieval_used = prompt + TOOL_RESULT_TOKENS, True
            for tokens in member_call_tokens(prompt, spec.max_tokens, rounds):
                est.add(prices, "panel", label, model, tokens, spec.max_tokens)
            if WEB_SEARCH in offered:
                add_searches(est, "panel", label, rounds, search_price)
    if retrieval_used:
        add_searches(est, "panel", "retrieval", 1, search_price)
    if spec.mode == "single":
        return est
    judge_prompt = messages_tokens(messages) + len(members) * spec.max_tokens + PROMPT_OVERHEAD_TOKENS
    out = judge_max_tokens(spec)
    for model in (spec.judge.model, *spec.judge.fallbacks):
        offered = tools("judge", model) if spec.mode in ("synthesize", "judge-writes", "analyze") else ()
        rounds = spec.max_tool_calls if offered else 0
        for tokens in member_call_tokens(judge_prompt, out, rounds):
            est.add(prices, "analysis", "judge", model, tokens, out)
        if WEB_SEARCH in offered:
            add_searches(est, "analysis", "judge", rounds, search_price)
        if spec.mode in ("synthesize", "analyze") and not enforces_schema(model):
            # one repair retry: the same prompt plus the rejected output
            est.add(prices, "analysis", "judge", model, judge_prompt + out, out)
    if spec.mode == "synthesize":
        synth_prompt = judge_prompt + spec.max_tokens
        for model in (spec.synthesizer_model, *spec.synthesizer_fallbacks):
            est.add(prices, "synthesis", "synthesizer", model, synth_prompt, spec.max_tokens)
    return est
