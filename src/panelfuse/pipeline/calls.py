"""One billed upstream call (plain or through the tool loop), the mid-run cost guard and shared
pre-retrieval: what the panel, analysis and synthesis stages call through."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from panelfuse.pipeline import prompts
from panelfuse.pipeline.events import Emitter, ToolCalled
from panelfuse.pipeline.result import CallRecord
from panelfuse.pipeline.routes import ResolvedModel
from panelfuse.pricing import PriceTable, call_cost, estimate_tokens, messages_tokens, token_cost
from panelfuse.providers.base import ChatRequest, Completion, StreamEvent, Usage, fold_stream
from panelfuse.providers.errors import DeadlineExceeded, ProviderError
from panelfuse.tools.loop import OnTool, run_tool_loop
from panelfuse.tools.records import Citation, ToolUsage
from panelfuse.tools.toolbox import WEB_SEARCH, Toolbox, ToolOutcome


class CostLimitReached(ProviderError):
    """Starting this call could take the run past its max_cost."""

    kind = "max_cost"


@dataclass
class CostGuard:
    """Enforces max_cost mid-run: a call starts only if spent + in-flight worst cases + its own worst
    case + the worst case of the stages still to come stays within the limit."""

    max_cost: float | None
    spent: float = 0.0
    in_flight: dict[int, float] = field(default_factory=dict)
    later_stages: float = 0.0  # worst case of analysis + synthesis not yet started

    def try_start(self, key: int, worst: float) -> bool:
        if self.max_cost is not None:
            committed = self.spent + sum(self.in_flight.values()) + self.later_stages
            if committed + worst > self.max_cost + 1e-12:
                return False
        self.in_flight[key] = worst
        return True

    def finish(self, key: int, actual: float | None) -> None:
        worst = self.in_flight.pop(key, 0.0)
        self.spent += worst if actual is None else actual


@dataclass
class CallContext:
    """What a run's calls share: prices, the cost guard, the toolbox and the run's deadline.

    `timeout` is the whole run's budget (the spec's deadline_ms, in seconds). Each stage may run
    until its share of it (`stage_share`, cumulative from the run's start, set by the mode: the panel
    by half, the judge by three quarters…), so a slow stage leaves the later ones their time; every
    call's own deadline is the least of its provider's and what is left of the stage's."""

    prices: PriceTable
    guard: CostGuard
    timeout: float
    toolbox: Toolbox | None = None
    started: float = field(default_factory=time.monotonic)
    stage_share: float = 1.0

    def time_left(self) -> float:
        """Seconds until the current stage's share of the run's deadline."""
        return self.started + self.timeout * self.stage_share - time.monotonic()

    def deadline_passed(self, model: str) -> DeadlineExceeded:
        ms = int(self.timeout * 1000)
        until = f" (this stage's share: {int(ms * self.stage_share)} ms)" if self.stage_share < 1 else ""
        return DeadlineExceeded(f"the run's deadline passed: deadline_ms={ms}{until}", model=model)

    def worst_case(self, model: str, req: ChatRequest) -> float:
        price = self.prices.lookup(model)
        if price is None:
            return 0.0
        return token_cost(messages_tokens(req.messages), req.max_tokens or 0, price)


async def call_model(
    ctx: CallContext,
    resolved: ResolvedModel,
    template: ChatRequest,
    records: list[CallRecord],
    on_text: Callable[[str], None] | None = None,
) -> Completion:
    """Run one call to a planned model and append its CallRecord to `records`, also when it fails or
    is cancelled (then its cost is reckoned from what streamed and marked estimated)."""
    provider, route, model = resolved.provider, resolved.route, resolved.model
    left = ctx.time_left()
    if left <= 0:
        raise ctx.deadline_passed(model)
    bound_by_run = left < provider.default_timeout
    req = replace(template, model=route.model, timeout=min(left, provider.default_timeout))
    if req.response_format and not provider.supports_json_schema:
        req.response_format = None  # the caller parses leniently
    if "reasoning" in req.extra_body and not provider.accepts_reasoning:
        # Only OpenAI-style APIs know this field; elsewhere it would be a 400, not a hint.
        req.extra_body = {k: v for k, v in req.extra_body.items() if k != "reasoning"}
    worst = ctx.worst_case(model, req)
    key = id(req)
    if not ctx.guard.try_start(key, worst):
        raise CostLimitReached(f"not started: it could take the run past max_cost ${ctx.guard.max_cost:g}", model=model)
    streamed: list[str] = []
    started = time.monotonic()

    async def tee() -> AsyncIterator[StreamEvent]:
        async for ev in provider.stream(req):
            if ev.text:
                streamed.append(ev.text)
                if on_text:
                    on_text(ev.text)
            yield ev

    record = CallRecord(model=model)
    try:
        try:
            completion = await fold_stream(route.model, tee())
        except DeadlineExceeded as exc:
            # The run's deadline (not the provider's own) cut the call: say so.
            raise (ctx.deadline_passed(model) if bound_by_run else exc) from exc
    except (asyncio.CancelledError, ProviderError):
        # A cut or failed call may still be billed: reckon it from what streamed, and say so.
        if streamed:
            record.usage = Usage(messages_tokens(req.messages), estimate_tokens("".join(streamed)))
            record.cost = call_cost(record.usage, ctx.prices.lookup(model))
            record.cost_estimated = True
        raise
    else:
        record.usage = completion.usage
        record.cost = call_cost(completion.usage, ctx.prices.lookup(model))
        completion.model = model
        return completion
    finally:
        record.latency_ms = int((time.monotonic() - started) * 1000)
        records.append(record)
        ctx.guard.finish(key, record.cost)


# ---- tools ----------------------------------------------------------------------------------------

PRE_RETRIEVAL_RESULTS = 3
TOOLS_SHARE = 0.6  # of a call's time left, what its tool rounds may use; the answer round gets the rest


def tool_event(log: Emitter, who: str) -> OnTool:
    def emit(tool: str, args: Any, refused: str | None) -> None:
        log.emit(ToolCalled(member=who, tool=tool, args=args, refused=refused or None))

    return emit


async def call_with_tools(
    ctx: CallContext,
    model: ResolvedModel,
    template: ChatRequest,
    records: list[CallRecord],
    *,
    max_tool_calls: int,
    usage: ToolUsage,
    citations: list[Citation],
    on_tool: OnTool | None = None,
    on_text: Callable[[str], None] | None = None,
) -> Completion:
    """`call_model` through the tool loop when the plan offers the model tools (each model call one
    CallRecord); a plain call otherwise. Tool usage and citations accumulate into `usage` and `citations`."""
    offered = model.tools
    if not offered or ctx.toolbox is None:
        return await call_model(ctx, model, template, records, on_text)
    req = replace(template, messages=prompts.with_tool_notice(template.messages))
    spent_before = usage.cost
    try:
        loop = await run_tool_loop(
            lambda r: call_model(ctx, model, r, records, on_text),
            req,
            ctx.toolbox,
            offered,
            max_tool_calls=max_tool_calls,
            # Tools stop early enough to leave the answer round the rest of the stage's time.
            deadline=time.monotonic() + ctx.time_left() * TOOLS_SHARE,
            on_tool=on_tool,
            usage=usage,
            citations=citations,
        )
    finally:
        ctx.guard.spent += usage.cost - spent_before  # searches count against max_cost too
    return loop.completion


class SharedRetrieval:
    """Pre-retrieval for members that cannot call tools: the question is searched once per run and the
    results shared; the member whose call made the search carries its request and cost."""

    def __init__(self, ctx: CallContext, question: str) -> None:
        self.ctx, self.question = ctx, question
        self._lock = asyncio.Lock()
        self._outcome: ToolOutcome | None = None

    @staticmethod
    def wanted(toolbox: Toolbox | None, panel_tools: Sequence[str]) -> bool:
        return WEB_SEARCH in panel_tools and toolbox is not None and toolbox.can_search()

    async def messages_for(
        self, messages: list[dict[str, Any]], usage: ToolUsage, citations: list[Citation]
    ) -> list[dict[str, Any]]:
        """`messages` with the results in a system note (unchanged when nothing was found)."""
        assert self.ctx.toolbox is not None
        async with self._lock:
            if self._outcome is None:
                outcome = await self.ctx.toolbox.run_search(
                    self.question, PRE_RETRIEVAL_RESULTS, time_left=max(0.0, self.ctx.time_left())
                )
                # Not a tool call the model made: only the search request is counted.
                usage.add(ToolUsage(search_requests=outcome.usage.search_requests, cost=outcome.usage.cost))
                self.ctx.guard.spent += outcome.usage.cost
                self._outcome = outcome
        if not self._outcome.citations:  # nothing found, or the search failed: the run goes on without
            return messages
        citations.extend(self._outcome.citations)
        return prompts.with_retrieved(messages, self._outcome.content)
