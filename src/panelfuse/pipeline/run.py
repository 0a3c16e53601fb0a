"""The orchestrator: `Fusion(spec).plan(messages)`, `.stream(...)` and `.run(...)`.

A Fusion holds what runs share (spec, providers, prices, toolbox); each stream() is one run with its
own event log and result, so one Fusion can run several at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from panelfuse.config import Config
from panelfuse.pipeline.calls import CallContext, CostGuard
from panelfuse.pipeline.context import RunContext, RunFailure
from panelfuse.pipeline.estimate import worst_case_of
from panelfuse.pipeline.events import (
    TERMINAL,
    Event,
    EventLog,
    FinalCompleted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
)
from panelfuse.pipeline.modes import mode_for
from panelfuse.pipeline.panel import QuorumError, run_panel
from panelfuse.pipeline.plan import PlanError, Planner, RunPlan, normalize_messages
from panelfuse.pipeline.prompts import PROMPT_VERSION
from panelfuse.pipeline.result import FusionResult, MemberResult
from panelfuse.pricing import Estimate, PriceTable
from panelfuse.providers.registry import Providers
from panelfuse.spec import FusionSpec
from panelfuse.tools.toolbox import Toolbox

__all__ = ["Fusion", "FusionError", "FusionStream", "normalize_messages"]

# The run's outer bound comes this long after deadline_ms: the calls' own deadlines end them at
# deadline_ms, and what follows a last failed call (a member's answer given verbatim) takes no time.
DEADLINE_SLACK_S = 0.25


class FusionError(Exception):
    """The run failed; `result` holds every member's outcome and the reason."""

    def __init__(self, result: FusionResult) -> None:
        super().__init__(result.error or "fusion failed")
        self.result = result


class Fusion:
    """A spec with the providers, prices and tools its runs use."""

    def __init__(
        self,
        spec: FusionSpec,
        *,
        providers: Providers | None = None,
        prices: PriceTable | None = None,
        config: Config | None = None,
        toolbox: Toolbox | None = None,
    ) -> None:
        self.spec = spec
        self.providers = providers or Providers(config)
        self.prices = prices or PriceTable.load(self.providers.config.prices)
        # web_search / web_fetch as the config's [tools] describes them (see panelfuse.tools.toolbox)
        self.toolbox = (
            toolbox if toolbox is not None else Toolbox.from_config(self.providers.config.tools, self.providers.env)
        )

    def plan(
        self, messages: str | Sequence[dict[str, Any]], reuse_panel: Sequence[MemberResult] | None = None
    ) -> RunPlan:
        """Resolve every call the run may make, its worst case and the max_cost verdict. Raises
        PlanError (a model names no configured provider) or ValueError (no user turn)."""
        return Planner(self.providers, self.prices, self.toolbox).plan(self.spec, messages, reuse_panel)

    def estimate(self, messages: str | Sequence[dict[str, Any]]) -> Estimate:
        return self.plan(messages).estimate

    async def run(
        self,
        messages: str | Sequence[dict[str, Any]] | RunPlan,
        run_id: str | None = None,
        reuse_panel: Sequence[MemberResult] | None = None,
    ) -> FusionResult:
        stream = self.stream(messages, run_id=run_id, reuse_panel=reuse_panel)
        async for _ in stream:
            pass
        result = stream.result
        if result.status == "failed":
            raise FusionError(result)
        return result

    def stream(
        self,
        messages: str | Sequence[dict[str, Any]] | RunPlan,
        run_id: str | None = None,
        reuse_panel: Sequence[MemberResult] | None = None,
        *,
        hold_deltas: bool = False,
    ) -> FusionStream:
        """One run: iterate the returned stream for its events as they happen; its `result` is the
        outcome. Closing the stream (`await stream.aclose()`, or leaving `async with stream:`) cancels
        the run and every in-flight upstream call; a loop left early without closing it cancels the
        run when the iterator is garbage-collected.

        `messages` may be a plan already made (by an entry point that checked it); `reuse_panel`:
        answers from an earlier run, not called again (nor billed again): a re-synthesis.
        `hold_deltas`: nobody reads the text as it comes (see EventLog)."""
        run_id = run_id or f"run_{uuid.uuid4().hex[:20]}"
        return FusionStream(self, messages, run_id, reuse_panel, hold_deltas=hold_deltas)


class FusionStream:
    """The events of one run (`async for`, once), then its `result`. `log` holds every event emitted.
    Usable as an async context manager that closes it (and so cancels an unfinished run) on exit."""

    def __init__(
        self,
        fusion: Fusion,
        messages: str | Sequence[dict[str, Any]] | RunPlan,
        run_id: str,
        reuse_panel: Sequence[MemberResult] | None,
        *,
        hold_deltas: bool = False,
    ) -> None:
        self.fusion = fusion
        self._request = messages
        self._reuse_panel = reuse_panel
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self.log = EventLog(run_id, listener=self._queue.put_nowait, hold_deltas=hold_deltas)
        self.spec = messages.spec if isinstance(messages, RunPlan) else fusion.spec
        self.result = FusionResult(
            run_id=run_id,
            preset=self.spec.preset,
            mode=self.spec.mode,
            prompt_version=PROMPT_VERSION,
            expects_analysis=mode_for(self.spec.mode).expects_analysis,
        )
        self._events: AsyncGenerator[Event, None] | None = None

    @property
    def run_id(self) -> str:
        return self.log.run_id

    def __aiter__(self) -> AsyncGenerator[Event, None]:
        if self._events is not None:
            raise RuntimeError("a FusionStream is iterated once (it is one run)")
        self._events = self._run()
        return self._events

    async def aclose(self) -> None:
        if self._events is not None:
            await self._events.aclose()

    async def __aenter__(self) -> FusionStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self) -> AsyncGenerator[Event, None]:
        task = asyncio.create_task(self._execute(), name=f"fusion-{self.run_id}")
        try:
            while True:
                ev = await self._queue.get()
                yield ev
                if ev.type in TERMINAL:
                    break
            await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _plan(self) -> RunPlan:
        if isinstance(self._request, RunPlan):
            return self._request
        try:
            return self.fusion.plan(self._request, self._reuse_panel)
        except (PlanError, ValueError) as exc:  # the caller's error, reported as the run's failure
            raise RunFailure(f"cannot plan the run: {exc}") from exc

    async def _execute(self) -> None:
        result, log = self.result, self.log
        started = time.monotonic()
        log.emit(RunStarted(spec=self.spec.model_dump(mode="json"), prompt_version=PROMPT_VERSION))
        try:
            await self._stages()
        except (RunFailure, Exception) as exc:
            # RunFailure is a reasoned failure; anything else is a bug of ours, still reported as a value.
            result.status = "failed"
            result.error = str(exc) if isinstance(exc, RunFailure) else f"internal error: {exc!r}"
            result.latency_ms = int((time.monotonic() - started) * 1000)
            log.emit(RunFailed(error=result.error, failed_models=[f.to_dict() for f in result.failed_models]))
            return
        except asyncio.CancelledError:
            result.status, result.error = "cancelled", "cancelled by the caller"
            log.emit(RunCancelled(reason=result.error))
            raise
        result.status = "completed"
        result.latency_ms = int((time.monotonic() - started) * 1000)
        log.emit(FinalCompleted(content=result.content, annotations=result.annotations))
        log.emit(RunCompleted(usage=result.usage_dict(), cost=result.cost, degraded=result.degraded))

    def _toolbox(self, plan: RunPlan) -> Toolbox | None:
        """The Fusion's toolbox, with this run's search_max_results when the spec sets one (a copy:
        runs of one Fusion share the toolbox)."""
        toolbox = self.fusion.toolbox
        if toolbox is None or plan.spec.search_max_results is None:
            return toolbox
        own = copy.copy(toolbox)
        own.max_results = plan.spec.search_max_results
        return own

    async def _stages(self) -> None:
        plan = self._plan()
        result = self.result
        result.estimate = plan.estimate.total
        if plan.refusal is not None:
            raise RunFailure(plan.refusal)
        # The stages after the (first stage of the) panel: analysis and synthesis, and a staged panel's rest.
        first = {m.label for m in plan.first_stage()} | {"retrieval"}
        later = worst_case_of(plan.estimate, lambda c: c.stage != "panel" or c.who not in first)
        guard = CostGuard(plan.spec.max_cost, later_stages=later)
        # deadline_ms bounds the whole run: each stage's calls end by the stage's share of it (see
        # CallContext); this outer bound, a little later, also ends what no call deadline covers.
        calls = CallContext(
            self.fusion.prices, guard, timeout=plan.spec.deadline_ms / 1000, toolbox=self._toolbox(plan)
        )
        run = RunContext(plan, calls, self.log, result)
        bound = asyncio.timeout(plan.spec.deadline_ms / 1000 + DEADLINE_SLACK_S)
        try:
            async with bound:
                await self._answer(plan, run)
        except TimeoutError as exc:
            if not bound.expired():
                raise  # not ours: reported as the bug it is
            raise RunFailure(
                f"the run's deadline passed (deadline_ms={plan.spec.deadline_ms}): calls still running were cancelled"
            ) from exc

    async def _answer(self, plan: RunPlan, run: RunContext) -> None:
        result = run.result
        run.calls.stage_share = plan.mode.panel_share
        if plan.reuse_panel is not None:
            result.panel = list(plan.reuse_panel)
            if not any(m.status == "ok" for m in result.panel):
                raise RunFailure("the earlier run has no successful panel answer to re-synthesize")
        else:
            first = plan.first_stage()
            # A first stage that is not the whole panel must not fail the run: the mode decides what follows.
            quorum = None if len(first) == len(plan.members) else 0
            try:
                await run_panel(run, into=result.panel, members=first, quorum=quorum)
            except QuorumError as exc:
                raise RunFailure(str(exc)) from exc
        await plan.mode.answer(run, [m for m in result.panel if m.status == "ok"])
