"""Hedged member calls (`FusionSpec.hedge_ms`): a member's first call that has not answered `hedge_ms`
after it started gets a duplicate call to the member's first fallback (its own model again when it
has none). The first of the two to answer is the member's answer; the other is cancelled at once
(cancelling its task closes its upstream request, as cutting a member does). Both are billed.

Stream readers see one call's text at a time: the first call's text goes on live while the
duplicate's is held back on its `Lane`. When the duplicate wins, `panel.hedge_won` says so and its
held text follows in one piece (readers replace the member's text). When the first call fails, the
duplicate takes over as a fallback would (`panel.fallback`, then its held text, then live). A failed
duplicate leaves the first call going; when both fail, the chain runner goes on with the fallbacks
left.

In `single` (the member's text is the answer, streamed to the caller as it comes) the duplicate may
win only while no text has reached the caller: the first call's first text cancels it, as it rules
out a fallback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from panelfuse.pipeline.chain import Step
from panelfuse.pipeline.events import Emitter, PanelFallback, PanelHedged, PanelHedgeWon, Payload
from panelfuse.pipeline.result import HedgeRecord, MemberResult
from panelfuse.pipeline.routes import ResolvedModel
from panelfuse.providers.errors import ProviderError

T = TypeVar("T")


class Lane:
    """Where one call's progress goes (its text and its tool events): on at once when the call has the
    lead, else held back until it takes it."""

    def __init__(self, on_text: Callable[[str], None], log: Emitter, *, live: bool) -> None:
        self._on_text, self._log, self.live = on_text, log, live
        self.sent = False  # some of its text went on
        self.on_first_text: Callable[[], None] | None = None
        self._held: list[str | Payload] = []

    def text(self, text: str) -> None:
        if not self.live:
            self._held.append(text)
            return
        first, self.sent = not self.sent, True
        self._on_text(text)
        if first and self.on_first_text is not None:
            self.on_first_text()

    def emit(self, payload: Payload) -> None:
        if self.live:
            self._log.emit(payload)
        else:
            self._held.append(payload)

    def lead(self) -> None:
        """Take the lead: what was held goes on, in order (consecutive text as one piece), then the rest."""
        self.live = True
        held, self._held = self._held, []
        pieces: list[str] = []
        for item in held:
            if isinstance(item, str):
                pieces.append(item)
                continue
            if pieces:
                self.text("".join(pieces))
                pieces = []
            self._log.emit(item)
        if pieces:
            self.text("".join(pieces))


@dataclass
class Hedge(Generic[T]):
    """A member's hedged first call: the chain runner's `first` step (pipeline/chain.py)."""

    after_s: float
    attempt: Callable[[ResolvedModel, Lane], Coroutine[Any, Any, T]]  # one call whose progress goes to the lane
    lane: Callable[[bool], Lane]  # a new lane, live or held back
    log: Emitter
    result: MemberResult  # gets the hedge's record and the model in the lead
    exclusive: bool = False  # `single`: the first call's text reaching the caller rules the duplicate out
    errors: tuple[type[Exception], ...] = (ProviderError,)

    async def __call__(self, chain: Sequence[ResolvedModel]) -> Step[T]:
        first_model = chain[0]
        lead = self.lane(True)
        started = time.monotonic()
        first = asyncio.create_task(self.attempt(first_model, lead), name=f"member-{self.result.member}-call")
        tasks = [first]
        try:
            done, _ = await asyncio.wait({first}, timeout=self.after_s)
            if done or (self.exclusive and lead.sent):
                return await self._alone(first, first_model)
            dup_model = chain[1] if len(chain) > 1 else first_model
            record = HedgeRecord(dup_model.model, int((time.monotonic() - started) * 1000))
            self.result.hedge = record
            self.log.emit(
                PanelHedged(
                    member=self.result.member,
                    from_model=first_model.model,
                    to_model=dup_model.model,
                    after_ms=record.after_ms,
                )
            )
            held = self.lane(False)
            dup = asyncio.create_task(self.attempt(dup_model, held), name=f"member-{self.result.member}-hedge")
            tasks.append(dup)
            if self.exclusive:

                def rule_out() -> None:
                    dup.cancel()

                lead.on_first_text = rule_out
            return await self._race(first, first_model, lead, dup, dup_model, held, record, used=min(2, len(chain)))
        finally:
            # The loser (or both, when the run stops) is cancelled here: that closes its upstream request.
            pending = [t for t in tasks if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            for task in tasks:  # a loser that failed in the winner's batch: its error is not news
                if task.done() and not task.cancelled():
                    task.exception()

    async def _alone(self, task: asyncio.Task[T], model: ResolvedModel) -> Step[T]:
        try:
            return Step(model, value=await task)
        except self.errors as exc:
            return Step(model, error=exc)

    async def _race(
        self,
        first: asyncio.Task[T],
        first_model: ResolvedModel,
        lead: Lane,
        dup: asyncio.Task[T],
        dup_model: ResolvedModel,
        held: Lane,
        record: HedgeRecord,
        used: int,
    ) -> Step[T]:
        member = self.result.member
        pending: set[asyncio.Task[T]] = {first, dup}
        last = Step[T](first_model, error=ProviderError("no call answered", model=first_model.model), used=used)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: t is dup):  # the first call first, when both ended
                if task.cancelled():  # the duplicate, ruled out by the first call's text (`single`)
                    continue
                model = first_model if task is first else dup_model
                exc = task.exception()
                if exc is None:
                    if task is dup:
                        if self.exclusive and lead.sent:
                            continue  # too late: the first call's text is the caller's already
                        record.won = True
                        if not held.live:
                            won = PanelHedgeWon(member=member, from_model=first_model.model, to_model=model.model)
                            self.log.emit(won)
                            self._take_lead(held, dup_model)
                    return Step(model, value=task.result(), used=used)
                if not isinstance(exc, self.errors):
                    raise exc  # a bug, not a failed call
                last = Step(model, error=exc, used=used)
                if task is first and dup in pending and not (self.exclusive and lead.sent):
                    # The duplicate is already the fallback: it takes over, as the chain runner's would.
                    self.log.emit(
                        PanelFallback(from_model=model.model, to_model=dup_model.model, reason=str(exc), member=member)
                    )
                    self._take_lead(held, dup_model)
        return last

    def _take_lead(self, lane: Lane, model: ResolvedModel) -> None:
        self.result.model = model.model
        lane.lead()
