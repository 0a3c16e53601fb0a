"""Shadow arms: the same request run in the background by another arm, so a team compares it with what
its users get without showing it to them.

A shadow starts after the primary answer has started, in a task of its own, and nothing it does reaches
the caller: not its latency, not its answer, not its failures, not its cost (the operator's providers
pay it, no key's budget). It is bounded by the experiment's shadow limits: `max_concurrent` shadow runs
in flight per process (past it, the shadow is not started and is recorded `skipped`), and `budget_usd`
in all: a shadow starts only when its worst case fits in what is left of the budget (the experiment's
stored shadow spending and the worst cases of this process's shadows in flight taken off), as a key's
budget admits a run, and runs with `max_cost` set to what is left, so the pipeline's cost guard would
stop it before it passed the budget. A plain-model arm runs as a
one-member `single` fusion without tools (its answer is that model's answer) so that every shadow is a
stored run with its cost and latency. Pausing a shadow arm or stopping the experiment cancels this
process's shadows of it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

from panelfuse.experiment_spec import ArmSpec, ExperimentSpec
from panelfuse.service.cache import CacheDirective
from panelfuse.service.caller import Principal
from panelfuse.service.errors import ServiceError
from panelfuse.service.experiments import Assignment, Experiments, Outcome
from panelfuse.service.fusion import FusionService, PlannedFusion
from panelfuse.service.plugin import answer_settings
from panelfuse.service.requests import ChatCompletionRequest
from panelfuse.service.routing import route_chat
from panelfuse.service.runs import ActiveRun
from panelfuse.service.specs import fusion_spec
from panelfuse.spec import AnswerSpec, FusionSpec, JudgeSpec, MemberSpec

log = logging.getLogger("panelfuse.experiments")

CANCEL_REASON = "the shadow arm was paused or its experiment stopped"


@dataclass
class _InFlight:
    runs: dict[str, dict[str, ActiveRun]] = field(default_factory=lambda: defaultdict(dict))  # arm → id → run
    reserved: float = 0.0  # the worst cases of the shadows in flight
    count: int = 0


def single_model_spec(chat: ChatCompletionRequest) -> FusionSpec:
    """A plain model's answer as a run: one member, no tools, the caller's own answer settings."""
    answer = AnswerSpec.model_validate(answer_settings(chat))
    member = MemberSpec(model=chat.model, temperature=chat.temperature, seed=chat.seed)
    return FusionSpec(
        members=[member],
        judge=JudgeSpec(model=chat.model),
        mode="single",
        panel_tools=[],
        answer=answer,
        max_tokens=answer.max_tokens or FusionSpec.model_fields["max_tokens"].default,
    )


class Shadows:
    """Starts and bounds the shadow runs of every experiment (one per process)."""

    def __init__(self, experiments: Experiments, service: FusionService) -> None:
        self.experiments = experiments
        self.service = service
        self._in_flight: dict[str, _InFlight] = defaultdict(_InFlight)
        experiments.shadows = self

    def launch(self, assignment: Assignment) -> None:
        """Start the assignment's shadow arms on the caller's request as it came."""
        if not assignment.recorded or assignment.chat is None or assignment.caller is None:
            return
        for arm in assignment.shadows:
            self.experiments.spawn(self._shadow(assignment, arm, assignment.chat, assignment.caller))

    def in_flight(self, experiment: str) -> int:
        return self._in_flight[experiment].count

    def cancel(self, experiment: str, arm: str | None = None) -> int:
        """Cancel this process's shadow runs of `experiment` (of one arm, or all); how many."""
        flight = self._in_flight[experiment]
        runs = [r for name, rs in flight.runs.items() if arm is None or name == arm for r in rs.values()]
        for run in runs:
            run.cancel(CANCEL_REASON)
        return len(runs)

    async def _shadow(
        self, assignment: Assignment, arm: ArmSpec, chat: ChatCompletionRequest, caller: Principal
    ) -> None:
        started = time.monotonic()
        spec = await self._spec_of(assignment.experiment)
        flight = self._in_flight[assignment.experiment]
        if spec is None:
            return
        if flight.count >= spec.shadow.max_concurrent:
            await self._skipped(assignment, arm, started, f"the shadow concurrency cap ({spec.shadow.max_concurrent})")
            return
        flight.count += 1  # held from here, before any await, so a burst cannot pass the cap
        worst = 0.0
        try:
            left = spec.shadow.budget_usd - await self.experiments.store.shadow_spent(assignment.experiment)
            left -= flight.reserved
            try:
                planned = self._plan(assignment.request_for(chat, arm), caller, max(left, 0.0))
            except ServiceError as exc:
                await self.experiments.record(
                    assignment,
                    arm,
                    Outcome(status="failed", latency_ms=_ms(started), error=exc.message),
                    shadow=True,
                )
                return
            if planned.plan.estimate.total > left:
                await self._skipped(assignment, arm, started, f"the shadow budget (${spec.shadow.budget_usd:g})")
                return
            worst = planned.plan.estimate.total
            flight.reserved += worst
            run = await self.service.start(
                self._operator(caller),
                planned,
                request=chat.model_copy(update={"model": arm.model, "stream": False}).model_dump(mode="json"),
                request_model=arm.model,
                background=True,
                settle=False,  # no key pays for a shadow: the experiment's shadow budget bounds it
                live=False,
                # A shadow measures its arm running: it neither answers from the response cache (whose
                # operator scope would be every caller's) nor fills it.
                cache=CacheDirective(read=False, write=False),
            )
            flight.runs[arm.name][run.run_id] = run
            try:
                await run.done.wait()
            finally:
                flight.runs[arm.name].pop(run.run_id, None)
            await self.experiments.record(assignment, arm, Outcome.of_run(run.result), shadow=True)
        except Exception as exc:  # a shadow never fails anything but itself
            log.exception("shadow %s/%s failed to run", assignment.experiment, arm.name)
            await self.experiments.record(
                assignment, arm, Outcome(status="failed", latency_ms=_ms(started), error=str(exc)), shadow=True
            )
        finally:
            flight.count -= 1
            flight.reserved -= worst

    def _plan(self, chat: ChatCompletionRequest, caller: Principal, budget_left: float) -> PlannedFusion:
        gateway = self.service.gateway
        route = route_chat(chat, gateway.providers, gateway.presets, gateway.default_preset(), at_fusion_depth=False)
        if route.path == "fusion":
            spec = fusion_spec(route.chat, route.plugin, route.alias_preset, gateway.default_preset(), gateway.presets)
        elif route.path == "proxy":
            spec = single_model_spec(route.chat)
        else:
            raise ServiceError(400, "a shadow arm cannot run the fusion server tool", code="unsupported_parameter")
        cap = budget_left if spec.max_cost is None else min(spec.max_cost, budget_left)
        spec = spec.model_copy(update={"max_cost": cap})
        # The plan is not refused on its worst case: the cost guard stops the run where the budget ends.
        return self.service.plan(self._operator(caller), spec, route.chat.plain_messages(), enforce_max_cost=False)

    @staticmethod
    def _operator(caller: Principal) -> Principal:
        """Shadows run on the gateway's own providers (never a passthrough caller's key), under the
        same local-model policy as the caller."""
        return Principal(is_admin=True, policy=caller.policy)

    async def _spec_of(self, name: str) -> ExperimentSpec | None:
        found = next((e for e in await self.experiments.live() if e.name == name), None)
        return found.spec if found is not None else None

    async def _skipped(self, assignment: Assignment, arm: ArmSpec, started: float, limit: str) -> None:
        outcome = Outcome(status="skipped", latency_ms=_ms(started), error=f"not started: {limit} was reached")
        await self.experiments.record(assignment, arm, outcome, shadow=True)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


__all__ = ["CANCEL_REASON", "Shadows", "single_model_spec"]
