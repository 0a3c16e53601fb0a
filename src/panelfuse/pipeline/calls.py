"""One billed upstream call, and a chain of fallbacks: shared by panel, analysis and synthesis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from panelfuse.pipeline.result import CallRecord
from panelfuse.pricing import PriceTable, call_cost, estimate_tokens, messages_tokens, token_cost
from panelfuse.providers.base import ChatRequest, Completion, StreamEvent, Usage, fold_stream
from panelfuse.providers.errors import ProviderError
from panelfuse.providers.registry import Providers


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
    providers: Providers
    prices: PriceTable
    guard: CostGuard
    timeout: float  # seconds, each call

    def worst_case(self, model: str, req: ChatRequest) -> float:
        price = self.prices.lookup(model)
        if price is None:
            return 0.0
        return token_cost(messages_tokens(req.messages), req.max_tokens or 0, price)


async def call_model(
    ctx: CallContext,
    model: str,
    template: ChatRequest,
    records: list[CallRecord],
    on_text: Callable[[str], None] | None = None,
) -> Completion:
    """Run one call to `model` (a qualified id) and append its CallRecord to `records`, also when it
    fails or is cancelled (then its cost is reckoned from what streamed and marked estimated)."""
    provider, route = ctx.providers.for_model(model)
    req = replace(template, model=route.model, timeout=ctx.timeout)
    if req.response_format and not provider.supports_json_schema:
        req.response_format = None  # the caller parses leniently
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
        completion = await fold_stream(route.model, tee())
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
