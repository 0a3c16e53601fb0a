"""Experiments at request time: which experiment a chat request falls in, the arm that answers it, and
the record of how it ended.

Definitions and state live in the store (`ExperimentStore`): the config file's `[experiments.*]` are
declared there at start-up, the admin API creates, pauses and stops them. Each process reads them
again at most every `REFRESH_S`, so a pause or a stop reaches every replica within that time without a
query per request. The assignment is pure (`service/assignment.py`); the arm's request is the
caller's with the arm's model (and its fusion plugin, if it configures one), so it then takes the same
path as any request for that model (`service/routing.py`). Shadow arms run in `service/shadows.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from panelfuse.experiment_spec import ArmSpec, Experiment, ExperimentSpec
from panelfuse.pipeline.result import FusionResult
from panelfuse.service.assignment import assign, unit_hash
from panelfuse.service.caller import Principal
from panelfuse.service.carry import carry_through
from panelfuse.service.requests import ChatCompletionRequest
from panelfuse.service.runs import ActiveRun
from panelfuse.store.experiments import ExperimentRequest, ExperimentRow, ExperimentStore, RequestStatus

log = logging.getLogger("panelfuse.experiments")

REFRESH_S = 2.0  # how stale a process's view of the experiments' state may be
ANONYMOUS_UNIT = "anonymous"  # the unit of a request with no key (auth off) and no user or header


@dataclass(frozen=True)
class LiveExperiment:
    """An experiment as the store holds it, its definition validated."""

    name: str
    spec: ExperimentSpec
    status: Literal["running", "stopped"]
    chosen_arm: str | None
    paused: frozenset[str]

    @classmethod
    def of(cls, row: ExperimentRow) -> LiveExperiment:
        return cls(
            name=row.name,
            spec=ExperimentSpec.model_validate(row.definition),
            status=row.status,
            chosen_arm=row.chosen_arm,
            paused=frozenset(row.paused_arms),
        )

    def takes(self, model: str, caller: Principal) -> bool:
        if model not in self.spec.models:
            return False
        if self.spec.keys is None:
            return True
        names = {caller.key_id, caller.key.name if caller.key is not None else None} - {None}
        return bool(names & set(self.spec.keys))


@dataclass(frozen=True)
class Outcome:
    """How one request (or one shadow run) an experiment assigned ended."""

    status: RequestStatus
    latency_ms: int
    cost: float | None = None
    degraded: bool = False
    error: str | None = None
    calls: int | None = None
    cached: bool = False
    run_id: str | None = None
    response_id: str | None = None
    answer: str | None = None

    @classmethod
    def of_run(cls, result: FusionResult, *, response_id: str | None = None) -> Outcome:
        status: RequestStatus = (
            "completed" if result.status == "completed" else ("cancelled" if result.status == "cancelled" else "failed")
        )
        return cls(
            status=status,
            latency_ms=result.latency_ms,
            cost=result.cost,
            degraded=result.degraded,
            error=result.error,
            calls=result.calls,
            cached=result.cached,
            run_id=result.run_id,
            response_id=response_id,
            answer=result.content if status == "completed" else None,
        )


@dataclass(frozen=True)
class Assignment:
    """A request's place in an experiment: the arm that answers it and the shadow arms that run beside
    it. `recorded` is False once the experiment is stopped (its traffic goes to the chosen arm and is
    no longer part of the experiment)."""

    experiment: str
    arm: ArmSpec
    unit: str  # hashed
    key_id: str | None
    recorded: bool
    shadows: tuple[ArmSpec, ...] = ()
    question: str | None = None  # kept only when the experiment has a grader
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # The request as the caller sent it, and who sent it: what the shadow arms run.
    chat: ChatCompletionRequest | None = field(default=None, compare=False, repr=False)
    caller: Principal | None = field(default=None, compare=False, repr=False)

    def request_for(self, chat: ChatCompletionRequest, arm: ArmSpec | None = None) -> ChatCompletionRequest:
        """The caller's request as `arm` (default: the assigned arm) sends it: its model, and its fusion
        plugin in place of any the caller sent."""
        arm = arm or self.arm
        plugins = chat.plugins
        if arm.fusion is not None:
            plugins = [p for p in (chat.plugins or []) if p.get("id") != "fusion"] + [arm.plugin() or {}]
        return chat.model_copy(update={"model": arm.model, "plugins": plugins})

    def request_record(self, arm: ArmSpec, outcome: Outcome, *, shadow: bool) -> ExperimentRequest:
        return ExperimentRequest(
            id=f"xr_{uuid.uuid4().hex[:24]}",
            experiment=self.experiment,
            arm=arm.name,
            shadow=shadow,
            unit=self.unit,
            key_id=self.key_id,
            created_at=self.created_at,
            latency_ms=outcome.latency_ms,
            status=outcome.status,
            degraded=outcome.degraded,
            error=outcome.error,
            cost=outcome.cost,
            calls=outcome.calls,
            cached=outcome.cached,
            run_id=outcome.run_id,
            response_id=outcome.response_id,
            question=self.question,
            answer=outcome.answer if self.question is not None else None,
        )


def sticky_unit(
    spec: ExperimentSpec, caller: Principal, chat: ChatCompletionRequest, headers: Mapping[str, str]
) -> str:
    """The value that keeps a caller in one arm: the `user` field or the named header when the
    experiment says so and the request has it, else the caller's key (its id), else one shared unit."""
    key_unit = f"key:{caller.key_id}" if caller.key_id else ANONYMOUS_UNIT
    if spec.sticky == "user":
        return f"user:{chat.user}" if chat.user else key_unit
    if (header := spec.sticky_header) is not None:
        value = headers.get(header)
        return f"header:{value}" if value else key_unit
    return key_unit


def last_question(chat: ChatCompletionRequest) -> str:
    """The last user turn's text, which a grader judges the answer against."""
    for message in reversed(chat.plain_messages()):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


class ShadowLauncher(Protocol):
    def launch(self, assignment: Assignment) -> None: ...

    def cancel(self, experiment: str, arm: str | None = None) -> int: ...


class Experiments:
    """The gateway's experiments (one per process, built at start-up). `shadows` starts the shadow
    arms once a primary answer has ended (service/shadows.py sets itself here)."""

    def __init__(
        self,
        store: ExperimentStore,
        declared: Mapping[str, ExperimentSpec],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.declared = dict(declared)
        self._clock = clock
        self._live: list[LiveExperiment] = []
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()
        self._watchers: set[asyncio.Task[None]] = set()
        self.shadows: ShadowLauncher | None = None

    async def declare_configured(self) -> None:
        """Store the config file's experiments (new ones start running; a changed definition replaces
        the stored one, whose state is kept)."""
        for name, spec in self.declared.items():
            await self.store.declare(name, spec.model_dump(mode="json", exclude_none=True), "config")
        self.invalidate()

    def invalidate(self) -> None:
        self._loaded_at = None

    async def live(self) -> list[LiveExperiment]:
        now = self._clock()
        if self._loaded_at is not None and now - self._loaded_at < REFRESH_S:
            return self._live
        async with self._lock:
            if self._loaded_at is None or self._clock() - self._loaded_at >= REFRESH_S:
                rows = await self.store.all()
                live: list[LiveExperiment] = []
                for row in rows:
                    try:
                        live.append(LiveExperiment.of(row))
                    except ValidationError as exc:  # a hand-edited row: that experiment is off, not the gateway
                        log.error("experiment %s has an invalid definition and is ignored: %s", row.name, exc)
                self._live, self._loaded_at = live, self._clock()
        return self._live

    async def assign(
        self, chat: ChatCompletionRequest, caller: Principal, headers: Mapping[str, str]
    ) -> Assignment | None:
        """The request's assignment, or None when no experiment takes it (the first one created that
        takes its model and key applies)."""
        experiments = await self.live()
        if not experiments:
            return None
        found = next((e for e in experiments if e.takes(chat.model, caller)), None)
        if found is None:
            return None
        spec = found.spec
        base = Assignment(
            experiment=found.name,
            arm=spec.primary_arms[0],
            unit="",
            key_id=caller.key_id,
            recorded=False,
            created_at=datetime.now(UTC),
            chat=chat,
            caller=caller,
        )
        if found.status == "stopped":
            return replace(base, arm=spec.arm(found.chosen_arm or "") or spec.primary_arms[0])
        unit = sticky_unit(spec, caller, chat, headers)
        arm = assign(found.name, spec.arms, unit, found.paused)
        if arm is None:  # every primary arm paused: the control answers, outside the experiment
            return base
        return replace(
            base,
            arm=arm,
            unit=unit_hash(unit),
            recorded=True,
            shadows=tuple(a for a in spec.shadow_arms if a.name not in found.paused),
            question=last_question(chat) if spec.grader is not None else None,
        )

    async def record(self, assignment: Assignment, arm: ArmSpec, outcome: Outcome, *, shadow: bool = False) -> None:
        """Store how the request ended. Never raises: a lost record must not fail the answer."""
        if not assignment.recorded:
            return
        try:
            await carry_through(self.store.record(assignment.request_record(arm, outcome, shadow=shadow)))
        except Exception:
            log.exception("could not record experiment %s's request", assignment.experiment)

    async def ended(self, assignment: Assignment, outcome: Outcome) -> None:
        """The primary answer has ended: record it, then start the shadow arms on the same request
        (after, so they never take anything from the caller's answer)."""
        if not assignment.recorded:
            return
        await self.record(assignment, assignment.arm, outcome)
        if assignment.shadows and self.shadows is not None:
            self.shadows.launch(assignment)

    def teller(self, assignment: Assignment) -> Callable[[Outcome], None]:
        """A callback that records the primary answer's outcome without blocking its caller (a
        proxied stream reports from its clean-up, where nothing may be awaited)."""

        def tell(outcome: Outcome) -> None:
            self.spawn(self.ended(assignment, outcome))

        return tell

    def follow_run(self, assignment: Assignment, run: ActiveRun, *, response_id: str | None = None) -> None:
        """Record the fusion run that answers the assignment once it has ended, whoever reads it."""
        if not assignment.recorded:
            return

        async def watch() -> None:
            await run.done.wait()
            await self.ended(assignment, Outcome.of_run(run.result, response_id=response_id))

        self.spawn(watch())

    def spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def wait_idle(self, within: float) -> None:
        """Let the records and shadows still running finish (the server's shutdown)."""
        if self._watchers:
            await asyncio.wait(list(self._watchers), timeout=within)

    async def create(self, experiment: Experiment) -> bool:
        created = await self.store.create(experiment.name, experiment.definition(), "api")
        self.invalidate()
        return created

    async def set_state(self, name: str, **state: Any) -> ExperimentRow | None:
        row = await self.store.set_state(name, **state)
        self.invalidate()
        return row

    def cancel_shadows(self, name: str, arm: str | None = None) -> None:
        """Cancel this process's shadow runs of the experiment (of one arm, or all)."""
        if self.shadows is not None:
            self.shadows.cancel(name, arm)
