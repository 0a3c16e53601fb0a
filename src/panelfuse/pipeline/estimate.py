"""The worst-case cost of a run before it starts (formula: see panelfuse.pricing)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from panelfuse.pipeline.panel import panel_messages
from panelfuse.pricing import (
    PROMPT_OVERHEAD_TOKENS,
    Estimate,
    PriceTable,
    member_call_tokens,
    messages_tokens,
)
from panelfuse.spec import FusionSpec

BEST_OF_MAX_TOKENS = 200


def judge_max_tokens(spec: FusionSpec) -> int:
    if spec.mode == "best-of":
        return min(BEST_OF_MAX_TOKENS, spec.max_tokens)
    if spec.mode == "judge-writes":
        return 2 * spec.max_tokens  # the analysis, then the answer, in one call
    return spec.max_tokens


def estimate_run(
    spec: FusionSpec,
    messages: Sequence[dict[str, Any]],
    prices: PriceTable,
    enforces_schema: Callable[[str], bool],
    tools_active: bool = False,
) -> Estimate:
    est = Estimate()
    panel_prompt = messages_tokens(panel_messages(messages, spec.panel_sees))
    rounds = spec.max_tool_calls if tools_active and spec.panel_tools else 0
    members = spec.labelled_members()[:1] if spec.mode == "single" else spec.labelled_members()
    for label, member in members:
        for model in (member.model, *member.fallbacks):
            for prompt in member_call_tokens(panel_prompt, spec.max_tokens, rounds):
                est.add(prices, "panel", label, model, prompt, spec.max_tokens)
    if spec.mode == "single":
        return est
    judge_prompt = messages_tokens(messages) + len(members) * spec.max_tokens + PROMPT_OVERHEAD_TOKENS
    out = judge_max_tokens(spec)
    for model in (spec.judge.model, *spec.judge.fallbacks):
        est.add(prices, "analysis", "judge", model, judge_prompt, out)
        if spec.mode == "synthesize" and not enforces_schema(model):
            # one repair retry: the same prompt plus the rejected output
            est.add(prices, "analysis", "judge", model, judge_prompt + out, out)
    if spec.mode == "synthesize":
        synth_prompt = judge_prompt + spec.max_tokens
        for model in (spec.synthesizer_model, *spec.synthesizer_fallbacks):
            est.add(prices, "synthesis", "synthesizer", model, synth_prompt, spec.max_tokens)
    return est
