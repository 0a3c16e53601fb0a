"""The one fallback-chain runner: a model, then each fallback, with the same events at every stage.

Members, the judge (analysis, judge-writes, best-of) and the synthesizer all go through `run_chain`:
each failure moves to the next model (`<stage>.fallback`), the last one is reported
(`<stage>.failed`). Retries of one call stay inside the provider's retry helper.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from panelfuse.pipeline.events import (
    AnalysisFailed,
    AnalysisFallback,
    EventLog,
    Failed,
    Fallback,
    PanelFailed,
    PanelFallback,
    SynthesisFailed,
    SynthesisFallback,
)
from panelfuse.pipeline.result import MemberStatus
from panelfuse.pipeline.routes import ResolvedModel
from panelfuse.providers.errors import DeadlineExceeded, ProviderError, RefusedError

T = TypeVar("T")

EVENTS: dict[str, tuple[type[Fallback], type[Failed]]] = {
    "panel": (PanelFallback, PanelFailed),
    "analysis": (AnalysisFallback, AnalysisFailed),
    "synthesis": (SynthesisFallback, SynthesisFailed),
}


class EmptyAnswer(ProviderError):
    kind = "empty"


def status_of(error: Exception) -> MemberStatus:
    """A failed call's status, as members report it."""
    if isinstance(error, EmptyAnswer):
        return "empty"
    if isinstance(error, DeadlineExceeded):
        return "timeout"
    if isinstance(error, RefusedError):
        return "refused"
    return "failed"


@dataclass
class ChainOutcome(Generic[T]):
    value: T | None = None
    model: ResolvedModel | None = None  # the model that answered, or the last one tried
    error: Exception | None = None  # the last failure (None once a model answered)

    @property
    def ok(self) -> bool:
        return self.error is None and self.model is not None


@dataclass
class Step(Generic[T]):
    """One step of a chain: a call, or a hedged call racing its duplicate (pipeline/hedge.py). `model`
    answered (`value`) or failed last (`error`); `used`: how many of the chain's models it called."""

    model: ResolvedModel
    value: T | None = None
    error: Exception | None = None
    used: int = 1


# The chain's first step, run another way (a hedged call): it gets the whole chain.
FirstStep = Callable[[Sequence[ResolvedModel]], Awaitable[Step[T]]]


async def run_chain(
    stage: str,
    chain: Sequence[ResolvedModel],
    attempt: Callable[[ResolvedModel], Awaitable[T]],
    log: EventLog,
    *,
    member: str | None = None,
    errors: tuple[type[Exception], ...] = (ProviderError,),
    may_fall_back: Callable[[], bool] = lambda: True,
    on_try: Callable[[ResolvedModel], None] | None = None,
    first: FirstStep[T] | None = None,
) -> ChainOutcome[T]:
    """Try each model of `chain` with `attempt` until one returns. `may_fall_back` is asked after a
    failure (no fallback once text has reached the caller, say); `errors` are the failures that move
    on (anything else is a bug and propagates). `first`, when given, runs the first step instead of
    `attempt` (a member's hedged call, which may use the first fallback too)."""
    fallback_event, failed_event = EVENTS[stage]
    outcome: ChainOutcome[T] = ChainOutcome()
    i = 0
    while i < len(chain):
        outcome.model = chain[i]
        if on_try is not None:
            on_try(chain[i])
        if i == 0 and first is not None:
            step = await first(chain)
        else:
            try:
                step = Step(chain[i], value=await attempt(chain[i]))
            except errors as exc:
                step = Step(chain[i], error=exc)
        outcome.model = step.model
        if step.error is None:
            outcome.value, outcome.error = step.value, None
            return outcome
        outcome.error, i = step.error, i + step.used
        if i < len(chain) and may_fall_back():
            log.emit(
                fallback_event(
                    from_model=step.model.model, to_model=chain[i].model, reason=str(step.error), member=member
                )
            )
            continue
        log.emit(
            failed_event(error=str(step.error), model=step.model.model, status=status_of(step.error), member=member)
        )
        return outcome
    return outcome
