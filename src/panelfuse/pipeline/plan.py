"""The run plan: computed once from a spec and a request, before any call is made.

It holds every call the run may make (members and their fallbacks, judge, synthesizer), each with its
resolved provider and the tools it is offered, the worst-case estimate and the `max_cost` verdict.
Entry points build a plan (and check the allowlist against it); the pipeline executes it; nothing
resolves a model id again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from panelfuse.pipeline.calls import SharedRetrieval
from panelfuse.pipeline.estimate import estimate_run
from panelfuse.pipeline.modes import mode_for
from panelfuse.pipeline.modes.base import ModeStrategy
from panelfuse.pipeline.panel import panel_messages
from panelfuse.pipeline.result import MemberResult
from panelfuse.pipeline.routes import MemberChain, ResolvedModel
from panelfuse.pricing import Estimate, PriceTable
from panelfuse.providers.errors import ProviderError
from panelfuse.providers.registry import Providers
from panelfuse.spec import FusionSpec
from panelfuse.tools.records import ToolUsage
from panelfuse.tools.toolbox import Toolbox


class PlanError(ValueError):
    """The spec cannot be planned (a model names no configured provider, say): the caller's error."""


@dataclass(frozen=True)
class RunPlan:
    spec: FusionSpec
    mode: ModeStrategy
    messages: list[dict[str, Any]]
    panel_messages: list[dict[str, Any]]  # what the members see
    members: tuple[MemberChain, ...]  # empty when the panel is reused
    judge: tuple[ResolvedModel, ...]  # empty when the mode has no judge
    synthesizer: tuple[ResolvedModel, ...]
    quorum: int
    pre_retrieval: bool  # members without function calling get the question's search results
    estimate: Estimate
    refusal: str | None  # why max_cost refuses the run before it starts, or None
    prices: PriceTable
    search_price: float  # USD per search request of the toolbox's backend
    reuse_panel: tuple[MemberResult, ...] | None = None  # a re-synthesis: earlier answers, not re-run

    def with_messages(self, messages: str | Sequence[dict[str, Any]]) -> RunPlan:
        """The same calls for another conversation (the server tool's question): nothing is resolved
        again; the estimate and the max_cost verdict are those of the new conversation."""
        msgs = normalize_messages(messages)
        seen = panel_messages(msgs, self.spec.panel_sees)
        est = estimate_run(
            self.spec,
            self.mode,
            msgs,
            seen,
            self.members,
            len(self.members),
            self.judge,
            self.synthesizer,
            self.prices,
            search_price=self.search_price,
            pre_retrieval=self.pre_retrieval,
        )
        return replace(self, messages=msgs, panel_messages=seen, estimate=est, refusal=max_cost_refusal(self.spec, est))

    def first_stage(self) -> tuple[MemberChain, ...]:
        """The members asked first: the whole panel, or the mode's first stage (`escalate`)."""
        size = self.mode.first_stage(self.spec)
        return self.members if size is None else self.members[:size]

    def later_stage(self) -> tuple[MemberChain, ...]:
        """The members a staged mode may ask after its first stage (none in the other modes)."""
        return self.members[len(self.first_stage()) :]

    def models(self) -> list[ResolvedModel]:
        return [*(m for c in self.members for m in c.chain), *self.judge, *self.synthesizer]

    def qualified_ids(self) -> list[str]:
        """Every `provider/model` the run may call: what a key's allowlist is checked against."""
        return list(dict.fromkeys(m.qualified for m in self.models()))

    def refused_models(self, allows: Callable[[str], bool]) -> list[str]:
        return sorted(m for m in self.qualified_ids() if not allows(m))


def normalize_messages(messages: str | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    out = [dict(m) for m in messages]
    if not any(m.get("role") == "user" for m in out):
        raise ValueError("messages must contain at least one user turn")
    return out


def max_cost_refusal(spec: FusionSpec, est: Estimate) -> str | None:
    if spec.max_cost is None:
        return None
    if est.unpriced:
        return f"max_cost is set but these models have no known price: {', '.join(est.unpriced)}"
    if est.total > spec.max_cost:
        return f"refused: worst-case estimate ${est.total:.6f} exceeds max_cost ${spec.max_cost:g}"
    return None


class Planner:
    """Resolves models once per plan against one set of providers and one toolbox."""

    def __init__(self, providers: Providers, prices: PriceTable, toolbox: Toolbox | None) -> None:
        self.providers, self.prices, self.toolbox = providers, prices, toolbox

    def resolve(self, model: str, wanted_tools: Sequence[str], max_tool_calls: int) -> ResolvedModel:
        try:
            provider, route = self.providers.for_model(model)
        except ProviderError as exc:
            raise PlanError(str(exc)) from exc
        tools: tuple[str, ...] = ()
        if wanted_tools and max_tool_calls > 0 and self.toolbox is not None and provider.supports_tools:
            tools = tuple(self.toolbox.offer(wanted_tools))
        return ResolvedModel(model, provider, route, tools)

    def plan(
        self,
        spec: FusionSpec,
        messages: str | Sequence[dict[str, Any]],
        reuse_panel: Sequence[MemberResult] | None = None,
    ) -> RunPlan:
        mode = mode_for(spec.mode)
        msgs = normalize_messages(messages)
        seen = panel_messages(msgs, spec.panel_sees)
        chosen = spec.labelled_members()[:1] if mode.first_member_only else spec.labelled_members()
        # A re-synthesis reuses earlier answers: its members are neither called nor resolved.
        members = (
            tuple(
                MemberChain(
                    label,
                    m,
                    tuple(self.resolve(x, spec.panel_tools, spec.max_tool_calls) for x in (m.model, *m.fallbacks)),
                )
                for label, m in chosen
            )
            if reuse_panel is None
            else ()
        )
        judge_tools = spec.judge_tools if mode.judge_gets_tools else []
        judge = (
            tuple(self.resolve(x, judge_tools, spec.max_tool_calls) for x in (spec.judge.model, *spec.judge.fallbacks))
            if mode.judge_wanted(spec)
            else ()
        )
        synthesizer = (
            tuple(self.resolve(x, (), 0) for x in (spec.synthesizer_model, *spec.synthesizer_fallbacks))
            if mode.uses_synthesizer
            else ()
        )
        pre_retrieval = SharedRetrieval.wanted(self.toolbox, spec.panel_tools)
        search_price = self.toolbox.search_price if self.toolbox else 0.0
        answers = len(chosen) if reuse_panel is None else len(reuse_panel)
        est = estimate_run(
            spec,
            mode,
            msgs,
            seen,
            members,
            answers,
            judge,
            synthesizer,
            self.prices,
            search_price=search_price,
            pre_retrieval=pre_retrieval,
        )
        reused = None
        if reuse_panel is not None:
            # Earlier answers, unbilled here: their cost belongs to the run that made them.
            reused = tuple(replace(m, calls=[], tools=ToolUsage()) for m in reuse_panel)
        return RunPlan(
            spec=spec,
            mode=mode,
            messages=msgs,
            panel_messages=seen,
            members=members,
            judge=judge,
            synthesizer=synthesizer,
            quorum=mode.quorum(spec),
            pre_retrieval=pre_retrieval,
            estimate=est,
            refusal=max_cost_refusal(spec, est),
            prices=self.prices,
            search_price=search_price,
            reuse_panel=reused,
        )
