"""The gateway's live runs: each fusion runs in its own task (so it can outlive its request when
`background` is set), its events are kept in memory for live subscribers and written to the store in
batches, and its row is kept fresh by a heartbeat so a restarted gateway can tell abandoned runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from panelfuse.pipeline.events import TERMINAL, Event, RunCancelled
from panelfuse.pipeline.plan import RunPlan
from panelfuse.pipeline.prompts import PROMPT_VERSION
from panelfuse.pipeline.replay import ReplayStream
from panelfuse.pipeline.result import FusionResult
from panelfuse.pipeline.run import Fusion, FusionStream
from panelfuse.service import metrics
from panelfuse.service.carry import carry_through
from panelfuse.store import RunStore
from panelfuse.store.errors import RunNotFoundError
from panelfuse.store.recovery import (
    RunningRun,
    held_reservations,
    interrupt_runs,
    running_runs,
    settle_reservations,
)

log = logging.getLogger("panelfuse.server")

# Seconds between event batches written to the store: every live run's new events go in one
# transaction per interval, not one per event or per run (followers in this process read them from
# memory at once; followers on other replicas read the store, this much later at most, plus their
# poll). Each interval wakes the process, and a wake after idling is dear on a shared VM: at 0.25 s a
# fusion at C=1 paid ~3 ms of CPU for the flusher's wakes and writes (A/B: 19.6 -> 16.8 ms at 1 s).
FLUSH_INTERVAL = 1.0
READER_TURNS = 4  # loop turns given to a run's readers before its outcome is built (_record)
# When this process began (near enough: when it imported this module). A row with our pid written
# before it is a former process's (a container restarts with the same pid).
PROCESS_STARTED = datetime.now(UTC)
SHUTDOWN_REASON = "the gateway shut down before the run finished"
RUN_ID_PREFIX = "run_"  # a fusion run's id (its budget reservation has the same id)
HEARTBEAT_INTERVAL = 10.0  # a running run's updated_at is refreshed this often
FINISH_ATTEMPTS = 3  # storing a run's outcome: tries before it is left to the crash sweep
FINISH_RETRY_S = 0.2  # seconds before the second try (then twice that)
SWEEP_INTERVAL = 15.0  # how often each process looks for runs a dead process left `running`
# A reservation with no running run behind it, this old, belongs to a request of a dead process
# (no proxied or server-tool request lives this long: each upstream call has its deadline).
ORPHAN_RESERVATION_AGE = timedelta(hours=1)


@dataclass
class ActiveRun:
    """A run this process drives. Its events are the pipeline's own log; `visible` of them are
    published (the terminal event only once the outcome is stored, so readers never race it)."""

    run_id: str
    stream: FusionStream
    background: bool
    visible: int = 0
    flushed: int = 0  # events up to this seq are in the store
    subscribers: set[asyncio.Queue[Event | None]] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    started: bool = False  # _drive has had its first turn
    ending: bool = False  # the pipeline is done; its outcome is being stored: too late to cancel
    # Settles the budget and frees the rate-limit slot, whatever way the run ends.
    on_finish: Callable[[FusionResult | None], Awaitable[None]] | None = None
    cache: Literal["hit", "miss"] | None = None  # the response cache's verdict; None: off (docs/cache.md)

    @property
    def result(self) -> FusionResult:
        return self.stream.result

    @property
    def events(self) -> list[Event]:
        return self.stream.log.events[: self.visible]

    def publish_through(self, seq: int) -> None:
        """Publish every event up to `seq` (events are numbered from 1, in log order)."""
        log = self.stream.log.events
        for ev in log[self.visible : seq]:
            for q in self.subscribers:
                q.put_nowait(ev)
        self.visible = max(self.visible, seq)

    async def follow(self, after: int = 0) -> AsyncIterator[Event]:
        """Every event after `after`, then the live ones, until the run ends."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.subscribers.add(queue)
        # Read before the catch-up below: a run that ends while this reader is still catching up
        # publishes its last events (and the end) into `queue`, which must then be read to its end.
        ended = self.done.is_set()
        self.stream.log.release()  # someone reads live now: deltas go out as they come
        try:
            for ev in list(self.events):
                if ev.seq > after:
                    yield ev
                    after = ev.seq
            if ended:
                return
            while True:
                live = await queue.get()
                if live is None:
                    return
                if live.seq > after:
                    yield live
                    after = live.seq
        finally:
            self.subscribers.discard(queue)

    def cancel(self, reason: str) -> None:
        """Stop the run; a no-op once it has ended (a reader that got the terminal event and leaves
        before the run's clean-up finished must not cut that clean-up short)."""
        if self.ending:
            return
        if self.task is not None and not self.task.done():
            self.cancel_reason = reason
            if self.started:
                self.task.cancel()
            # else: a task cancelled before its first turn never runs its clean-up; _drive sees the
            # reason when it starts and ends the run at once instead.


class RunManager:
    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.active: dict[str, ActiveRun] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def sweep_abandoned(self, stale_after: float) -> list[str]:
        """Interrupt the runs nobody drives any more (their reservations settled, a last event stored):
        those a process of this host that no longer exists left, found at once (a restart after
        kill -9), and any run whose heartbeat stopped `stale_after` seconds ago (a dead replica). Then
        settle the reservations such processes left without a running run."""
        now = datetime.now(UTC)
        stale = now - timedelta(seconds=stale_after)
        db = self.store.database

        def abandoned(run: RunningRun) -> bool:
            return run.id not in self.active and (
                run.updated_at < stale or self._owner_gone(run.host, run.owner_pid, run.updated_at)
            )

        found = await interrupt_runs(db, [r.id for r in await running_runs(db) if abandoned(r)])
        if found:
            log.warning("marked %d abandoned run(s) interrupted", len(found))
        charges = {}
        for held in await held_reservations(db):
            gone = self._owner_gone(held.host, held.owner_pid, held.created_at)
            if held.run_status is not None:  # the run's outcome is stored; its settling never came
                if gone or (held.run_ended_at is not None and held.run_ended_at < stale):
                    charges[held.run_id] = held.run_cost
            elif gone or held.created_at < now - ORPHAN_RESERVATION_AGE:  # another host's: known dead by age only
                charges[held.run_id] = _unknown_cost(held.run_id)
        if charges:
            log.warning("settled %d reservation(s) a stopped process left", await settle_reservations(db, charges))
        return found

    def _owner_gone(self, host: str | None, pid: int | None, since: datetime) -> bool:
        """The process of this host that wrote a row is gone: its pid is ours but the row predates us
        (a former process with our pid, as in a container), or no process has that pid now."""
        if host != socket.gethostname() or pid is None:
            return False
        if pid == os.getpid():
            return since < PROCESS_STARTED
        return not _process_exists(pid)

    async def sweep_forever(self, stale_after: float) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.sweep_abandoned(stale_after)
            except Exception:  # the store is briefly down: the next sweep retries
                log.debug("sweep failed", exc_info=True)

    async def _flush_and_beat(self) -> None:
        """Write every live run's new events in one transaction each FLUSH_INTERVAL; refresh every
        live run's row each HEARTBEAT_INTERVAL, events or not (a member may be silent for minutes, and
        another replica starting meanwhile must not take the run for abandoned). Both cost one
        statement, however many runs are in flight."""
        last_beat = time.monotonic()
        while self.active:  # ends with the last live run (an idle gateway does not tick); start() restarts it
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self._flush()
            except Exception:  # never let one bad flush end the loop: each run's end writes the rest
                log.exception("event flush failed")
            if time.monotonic() - last_beat >= HEARTBEAT_INTERVAL:
                last_beat = time.monotonic()
                try:
                    await self.store.touch_runs(list(self.active))
                except Exception:  # the store is briefly down: the next beat retries
                    log.debug("heartbeat failed", exc_info=True)

    async def _flush(self) -> None:
        pending = [(run, run.visible) for run in self.active.values() if run.visible > run.flushed]
        if not pending:
            return
        batches = {run.run_id: run.stream.log.events[run.flushed : upto] for run, upto in pending}
        try:
            await self.store.append_events_of(batches)
        except Exception:  # the store is briefly down, or a run was deleted: each run's end writes the rest
            log.debug("event flush failed", exc_info=True)
            return
        for run, upto in pending:
            run.flushed = max(run.flushed, upto)

    async def start(
        self,
        fusion: Fusion,
        plan: RunPlan,
        *,
        run_id: str,
        request: dict[str, Any],
        request_model: str,
        background: bool,
        key_id: str | None = None,
        parent_run_id: str | None = None,
        live: bool = True,
        on_finish: Callable[[FusionResult | None], Awaitable[None]] | None = None,
        replay: FusionResult | None = None,
    ) -> ActiveRun:
        """`replay`: a cached answer (pipeline/replay.py) served as this run instead of running the plan."""
        spec = plan.spec
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
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_and_beat(), name="run-flush-and-heartbeat")
        if replay is not None:
            stream: FusionStream = ReplayStream(fusion, plan, replay, hold_deltas=not live)
        else:
            stream = fusion.stream(plan, run_id=run_id, hold_deltas=not live)
        run = ActiveRun(run_id, stream, background, on_finish=on_finish)
        self.active[run_id] = run
        run.task = asyncio.create_task(self._drive(run), name=f"run-{run_id}")
        metrics.RUNS_ACTIVE.inc()
        return run

    async def _drive(self, run: ActiveRun) -> None:
        started = time.monotonic()
        run.started = True
        try:
            if run.cancel_reason is not None:
                return  # cancelled before its first turn: recorded as cancelled below
            # Closed on the way out whatever happens: a cancel landing outside the stream still cancels
            # the pipeline's task and records its run.cancelled event.
            async with run.stream:
                async for ev in run.stream:
                    metrics.observe_event(ev)
                    if ev.type in TERMINAL:
                        continue  # published by _record once the outcome is stored: readers never race it
                    run.publish_through(ev.seq)
        except asyncio.CancelledError:
            # The fusion already emitted run.cancelled into its log; record it, shielded from a second cancel.
            pass
        finally:
            run.ending = True
            # Carried in its own task: a second cancel (shutdown) must not skip the outcome, the
            # settling or the bookkeeping below, or the run stays "active" for good.
            await carry_through(self._end(run, started))

    async def _end(self, run: ActiveRun, started: float) -> None:
        try:
            await self._record(run, started)
        finally:
            run.done.set()
            for q in run.subscribers:
                q.put_nowait(None)
            self.active.pop(run.run_id, None)
            metrics.RUNS_ACTIVE.dec()

    async def _record(self, run: ActiveRun, started: float) -> None:
        """Store the outcome, then publish the events not yet seen (the terminal one, or run.cancelled
        emitted after the consumer stopped reading): a client told "completed" finds the run stored."""
        # Readers first: the answer's last text was just published, and a streaming client is a few
        # loop turns from it (its queue, the batcher, the keep-alive wrapper, the socket), while the
        # outcome below takes a millisecond or two of CPU to build before its first real wait.
        for _ in range(READER_TURNS):
            await asyncio.sleep(0)
        result = run.stream.result
        status = result.status if result.status != "running" else "cancelled"
        if status == "cancelled":
            if run.cancel_reason:
                result.error = run.cancel_reason
            events = run.stream.log.events
            if not events or events[-1].type not in TERMINAL:
                # Cancelled before the pipeline began (or past its last event): the run still ends
                # with its terminal event, so a follower on another replica sees why it ended.
                run.stream.log.emit(RunCancelled(reason=result.error or "cancelled"))
        log_events = run.stream.log.events
        try:
            stored = result.to_dict()  # its usage figures serve twice: built once
            await self._finish_run(
                run.run_id,
                status=status,
                result=stored,
                content=result.content,
                usage=stored["usage"],
                cost=stored["usage"]["cost"],
                degraded=result.degraded,
                error=result.error,
                latency_ms=result.latency_ms or int((time.monotonic() - started) * 1000),
                events=log_events[run.flushed :],  # with the outcome, in one transaction
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
            run.publish_through(len(log_events))

    async def _finish_run(self, run_id: str, **outcome: Any) -> None:
        """`RunStore.finish_run`, tried again on a store error (a busy or failing-over database): the
        stored run must say what the client was told. A run deleted meanwhile is not retried."""
        for attempt in range(1, FINISH_ATTEMPTS + 1):
            try:
                await self.store.finish_run(run_id, **outcome)
                return
            except RunNotFoundError:
                raise
            except Exception:
                if attempt == FINISH_ATTEMPTS:
                    raise
                log.warning("storing run %s failed (attempt %d); trying again", run_id, attempt, exc_info=True)
                await asyncio.sleep(FINISH_RETRY_S * attempt)

    async def drain(self, grace: float) -> None:
        """Let the runs in flight finish for `grace` seconds, then cancel the rest with the shutdown
        reason (their readers are told) and wait for them to be recorded."""
        pending = [r.task for r in self.active.values() if r.task is not None]
        if not pending:
            return
        _, still = await asyncio.wait(pending, timeout=grace)
        for run in list(self.active.values()):
            run.cancel(SHUTDOWN_REASON)
        if still:
            with contextlib.suppress(Exception):
                await asyncio.wait(still, timeout=10)

    async def shutdown(self, grace: float) -> None:
        """The last of the process: drain what is left, stop the flusher."""
        await self.drain(grace)
        if self._flusher is not None:
            self._flusher.cancel()


def _unknown_cost(reservation_id: str) -> float | None:
    """What a reservation a dead process left is charged: nothing for a fusion whose run's row was
    never written (it died between admitting the run and starting it: no call went out), else the
    reservation (a proxied or server-tool request: what it spent upstream is unknown)."""
    return 0.0 if reservation_id.startswith(RUN_ID_PREFIX) else None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True
