"""The worst-case cost of a run before it starts (formula: see panelfuse.pricing), over its plan.

With tools: a model offered tools through function calling is counted with max_tool_calls extra
rounds (pricing.member_call_tokens), plus max_tool_calls search requests at the search backend's
price when web_search is among its tools. A member without function calling that gets pre-retrieval
has TOOL_RESULT_TOKENS more prompt, and the run one search request more.

With hedging (`hedge_ms`), a member without fallbacks counts its model twice (the duplicate call);
a member with fallbacks hedges to its first one, which the chain counts already.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from panelfuse.pipeline.routes import MemberChain, ResolvedModel
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

if TYPE_CHECKING:  # the modes read this module's helpers (worst_case_of): typing only, no cycle
    from panelfuse.pipeline.modes.base import ModeStrategy

WEB_SEARCH = "web_search"


def add_searches(est: Estimate, stage: str, who: str, count: int, price: float) -> None:
    """Search requests as a planned item (no tokens): `count` × the backend's price per request."""
    if count and price:
        est.calls.append(PlannedCall(stage, who, "tools/web_search", 0, 0, count * price))
        est.total += count * price


def add_judge_calls(
    est: Estimate,
    who: str,
    spec: FusionSpec,
    judge: Sequence[ResolvedModel],
    prompt: int,
    out: int,
    repair_retry: bool,
    prices: PriceTable,
    search_price: float,
) -> None:
    """Every model of the judge's chain, each with its tool rounds and, where the provider does not
    enforce the schema, one repair retry (the same prompt plus the rejected output)."""
    for model in judge:
        rounds = spec.max_tool_calls if model.tools else 0
        for tokens in member_call_tokens(prompt, out, rounds):
            est.add(prices, "analysis", who, model.model, tokens, out)
        if WEB_SEARCH in model.tools:
            add_searches(est, "analysis", who, rounds, search_price)
        if repair_retry and not model.enforces_schema:
            est.add(prices, "analysis", who, model.model, prompt + out, out)


def hedged_chain(spec: FusionSpec, member: MemberChain) -> tuple[ResolvedModel, ...]:
    """The calls a member may make: its chain, and with hedging (pipeline/hedge.py) a duplicate of its
    model when it has no fallback (with one, the duplicate is that fallback, already in the chain)."""
    if spec.hedge_ms_for(member.spec) is not None and len(member.chain) == 1:
        return (*member.chain, member.chain[0])
    return member.chain


def worst_case_of(est: Estimate, keep: Callable[[PlannedCall], bool]) -> float:
    """The worst case of the planned items `keep` selects (the cost guard's later stages)."""
    return sum(c.cost for c in est.calls if keep(c))


def estimate_run(
    spec: FusionSpec,
    mode: ModeStrategy,
    messages: Sequence[dict[str, Any]],
    panel_prompt: Sequence[dict[str, Any]],
    members: Sequence[MemberChain],
    answers: int,
    judge: Sequence[ResolvedModel],
    synthesizer: Sequence[ResolvedModel],
    prices: PriceTable,
    *,
    search_price: float = 0.0,
    pre_retrieval: bool = False,
) -> Estimate:
    """`members`: the chains to call (none for a re-synthesis); `answers`: how many answers the judge
    will read."""
    est = Estimate()
    panel_tokens = messages_tokens(panel_prompt)
    member_out = mode.member_max_tokens(spec)
    retrieval_used = False
    for member in members:
        for model in hedged_chain(spec, member):
            rounds = spec.max_tool_calls if model.tools else 0
            prompt = panel_tokens
            if not model.tools and pre_retrieval:
                prompt, retrieval_used = prompt + TOOL_RESULT_TOKENS, True
            for tokens in member_call_tokens(prompt, member_out, rounds):
                est.add(prices, "panel", member.label, model.model, tokens, member_out)
            if WEB_SEARCH in model.tools:
                add_searches(est, "panel", member.label, rounds, search_price)
    if retrieval_used:
        add_searches(est, "panel", "retrieval", 1, search_price)
    if not judge:
        return est
    gate = mode.gate_call(spec)
    if gate is not None:  # a judge call before the main stages (escalate's decision): the full path counts it
        gate_prompt = messages_tokens(messages) + gate.answers * spec.max_tokens + PROMPT_OVERHEAD_TOKENS
        add_judge_calls(est, "gate", spec, judge, gate_prompt, gate.max_tokens, gate.repair_retry, prices, search_price)
    judge_prompt = messages_tokens(messages) + answers * spec.max_tokens + PROMPT_OVERHEAD_TOKENS
    out = mode.judge_max_tokens(spec)
    add_judge_calls(est, "judge", spec, judge, judge_prompt, out, mode.judge_repair_retry, prices, search_price)
    synth_prompt = judge_prompt + spec.max_tokens
    for model in synthesizer:  # the answer: the caller's limit (FusionSpec.answer), else the per-call one
        est.add(prices, "synthesis", "synthesizer", model.model, synth_prompt, spec.answer_max_tokens)
    return est
