"""The gateway's live runs: each fusion runs in its own task (so it can outlive its request when
`background` is set), its events are kept in memory for live subscribers and written to the store in
batches, and its row is kept fresh by a heartbeat so a restarted gateway can tell abandoned runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from panelfuse.pipeline.events import Event
from panelfuse.pipeline.prompts import PROMPT_VERSION
from panelfuse.pipeline.result import FusionResult, MemberResult
from panelfuse.pipeline.run import Fusion
from panelfuse.server import metrics
from panelfuse.store import RunStore

log = logging.getLogger("panelfuse.server")

FLUSH_INTERVAL = 0.25  # seconds between event batches written to the store
HEARTBEAT_INTERVAL = 10.0  # a running run's updated_at is refreshed this often
TERMINAL = ("run.completed", "run.failed", "run.cancelled")


@dataclass
class ActiveRun:
    run_id: str
    fusion: Fusion
    background: bool
    events: list[Event] = field(default_factory=list)
    subscribers: set[asyncio.Queue[Event | None]] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    # Settles the budget and frees the rate-limit slot, whatever way the run ends.
    on_finish: Callable[[FusionResult | None], Awaitable[None]] | None = None

    @property
    def result(self) -> FusionResult | None:
        return self.fusion.result

    def publish(self, ev: Event) -> None:
        self.events.append(ev)
        for q in self.subscribers:
            q.put_nowait(ev)

    async def follow(self, after: int = 0) -> AsyncIterator[Event]:
        """Every event after `after`, then the live ones, until the run ends."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.subscribers.add(queue)
        try:
            for ev in list(self.events):
                if ev.seq > after:
                    yield ev
                    after = ev.seq
            if self.done.is_set():
                return
            while True:
                ev = await queue.get()
                if ev is None:
                    return
                if ev.seq > after:
                    yield ev
                    after = ev.seq
        finally:
            self.subscribers.discard(queue)

    def cancel(self, reason: str) -> None:
        if self.task is not None and not self.task.done():
            self.cancel_reason = reason
            self.task.cancel()


class RunManager:
    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.active: dict[str, ActiveRun] = {}
        self._heartbeat: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        """Refresh every live run's row, events or not: a member may be silent for minutes, and another
        replica starting meanwhile must not take the run for abandoned."""
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            for run_id in list(self.active):
                try:
                    await self.store.update_run(run_id)
                except Exception:  # gone meanwhile, or the store is briefly down: the next beat retries
                    log.debug("heartbeat of run %s failed", run_id, exc_info=True)

    async def start(
        self,
        fusion: Fusion,
        messages: list[dict[str, Any]],
        *,
        run_id: str,
        request: dict[str, Any],
        request_model: str,
        background: bool,
        key_id: str | None = None,
        parent_run_id: str | None = None,
        reuse_panel: list[MemberResult] | None = None,
        on_finish: Callable[[FusionResult | None], Awaitable[None]] | None = None,
    ) -> ActiveRun:
        spec = fusion.spec
        # The row exists before any upstream call: a crash from here on leaves a findable run.
        await self.store.create_run(
            run_id,
            spec=spec.model_dump(mode="json"),
            request=request,
            request_model=request_model,
            preset=spec.preset,
            mode=spec.mode,
            prompt_version=PROMPT_VERSION,
            key_id=key_id,
            background=background,
            parent_run_id=parent_run_id,
        )
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._beat(), name="run-heartbeat")
        run = ActiveRun(run_id, fusion, background, on_finish=on_finish)
        self.active[run_id] = run
        run.task = asyncio.create_task(self._drive(run, messages, reuse_panel), name=f"run-{run_id}")
        metrics.RUNS_ACTIVE.inc()
        return run

    async def _drive(
        self, run: ActiveRun, messages: list[dict[str, Any]], reuse_panel: list[MemberResult] | None
    ) -> None:
        flushed = 0
        last_flush = time.monotonic()
        started = time.monotonic()
        try:
            async for ev in run.fusion.stream(messages, run_id=run.run_id, reuse_panel=reuse_panel):
                metrics.observe_event(ev)
                if ev.type in TERMINAL:
                    continue  # published by _record once the outcome is stored: readers never race it
                run.publish(ev)
                now = time.monotonic()
                is_delta = ev.type in ("panel.delta", "final.delta")
                if not is_delta or now - last_flush > FLUSH_INTERVAL:
                    await self.store.append_events(run.run_id, run.events[flushed:])
                    flushed, last_flush = len(run.events), now
        except asyncio.CancelledError:
            # The fusion already emitted run.cancelled into its log; record it, shielded from a second cancel.
            pass
        finally:
            await asyncio.shield(self._record(run, flushed, started))
            run.done.set()
            for q in run.subscribers:
                q.put_nowait(None)
            self.active.pop(run.run_id, None)
            metrics.RUNS_ACTIVE.dec()

    async def _record(self, run: ActiveRun, flushed: int, started: float) -> None:
        """Store the outcome, then publish the events not yet seen (the terminal one, or run.cancelled
        emitted after the consumer stopped reading): a client told "completed" finds the run stored."""
        log_events = run.fusion.log.events if run.fusion.log else []
        unpublished = log_events[len(run.events) :]
        result = run.fusion.result
        try:
            await self.store.append_events(run.run_id, run.events[flushed:] + unpublished)
            if result is None:
                await self.store.finish_run(
                    run.run_id,
                    status="cancelled",
                    result=None,
                    content="",
                    usage=None,
                    cost=None,
                    degraded=True,
                    error=run.cancel_reason or "cancelled",
                    latency_ms=int((time.monotonic() - started) * 1000),
                )
                return
            status = result.status if result.status != "running" else "cancelled"
            if status == "cancelled" and run.cancel_reason:
                result.error = run.cancel_reason
            await self.store.finish_run(
                run.run_id,
                status=status,
                result=result.to_dict(),
                content=result.content,
                usage=result.usage_dict(),
                cost=result.cost,
                degraded=result.degraded,
                error=result.error,
                latency_ms=result.latency_ms or int((time.monotonic() - started) * 1000),
            )
            metrics.observe_result(result, status)
        except Exception:  # the store is down: the run's outcome is still in memory and in the logs
            log.exception("could not record run %s", run.run_id)
        finally:
            if run.on_finish is not None:
                try:
                    await run.on_finish(result)
                except Exception:
                    log.exception("could not settle run %s", run.run_id)
            for ev in unpublished:
                run.publish(ev)

    async def shutdown(self, grace: float) -> None:
        """Let runs finish for `grace` seconds, then cancel the rest and record them."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        pending = [r.task for r in self.active.values() if r.task is not None]
        if not pending:
            return
        _, still = await asyncio.wait(pending, timeout=grace)
        for run in list(self.active.values()):
            run.cancel("the gateway shut down before the run finished")
        if still:
            with contextlib.suppress(Exception):
                await asyncio.wait(still, timeout=10)
