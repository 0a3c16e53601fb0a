"""The fusion service: what every entry point calls to plan, admit, start and wait for a fusion.

Routes (chat completions with an alias, the plugin or the server tool; resynthesize; the estimate)
turn their request into a spec and messages, then call this object; it plans the run once (models
resolved, allowlist and max_cost checked), admits it (rate limits, budget), starts it under the run
manager and hands back the live run. Nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from panelfuse.pipeline.plan import PlanError, RunPlan
from panelfuse.pipeline.replay import replayed_result
from panelfuse.pipeline.result import FusionResult, MemberResult
from panelfuse.pipeline.run import Fusion
from panelfuse.providers.registry import Providers
from panelfuse.service.admission import Admission, admit
from panelfuse.service.cache import CacheDirective, CacheTicket, ResponseCache
from panelfuse.service.caller import Principal, providers_for
from panelfuse.service.errors import ServiceError
from panelfuse.service.gateway import FUSION_HEADERS, Gateway
from panelfuse.service.runs import RUN_ID_PREFIX, SHUTDOWN_REASON, ActiveRun
from panelfuse.spec import FusionSpec


def new_run_id() -> str:
    return f"{RUN_ID_PREFIX}{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class PlannedFusion:
    """A checked plan and the Fusion that will execute it (its providers are the caller's)."""

    fusion: Fusion
    plan: RunPlan


class FusionService:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.cache = ResponseCache(gateway.store.database, gateway.cache_defaults)

    def providers_for(self, caller: Principal) -> Providers:
        """The providers a fusion uses for this caller, each call carrying the depth header."""
        if not caller.upstream_keys:
            return self.gateway.fusion_providers
        return providers_for(caller, self.gateway.providers, extra_headers=FUSION_HEADERS)

    def plan(
        self,
        caller: Principal,
        spec: FusionSpec,
        messages: Sequence[dict[str, Any]],
        *,
        reuse_panel: Sequence[MemberResult] | None = None,
        enforce_max_cost: bool = True,
        max_cost_param: str = "plugins[0].max_cost",
    ) -> PlannedFusion:
        """Plan the run once; 400 when a model cannot be resolved or max_cost refuses it, 403 when the
        caller's key may not use one of its models."""
        providers = self.providers_for(caller)
        # The gateway's toolbox reads the operator's environment (a search backend's key): a caller
        # passing their own upstream key gets one built from their providers' empty environment.
        toolbox = self.gateway.toolbox if providers is self.gateway.fusion_providers else None
        fusion = Fusion(spec, providers=providers, prices=self.gateway.prices, toolbox=toolbox)
        try:
            plan = fusion.plan(messages, reuse_panel)
        except PlanError as exc:
            raise ServiceError(400, f"cannot plan the fusion: {exc}", code="invalid_model") from exc
        except ValueError as exc:
            raise ServiceError(400, str(exc), param="messages", code="invalid_value") from exc
        caller.check_models(plan.qualified_ids())
        if enforce_max_cost and plan.refusal is not None:
            raise ServiceError(
                400,
                plan.refusal,
                param=max_cost_param,
                code="max_cost_exceeded",
                extra={"estimate": plan.estimate.total},
            )
        return PlannedFusion(fusion, plan)

    async def admit(self, caller: Principal, admission_id: str, worst_case: float, unpriced: list[str]) -> Admission:
        """Admit a request that is not one fusion run (a proxied call, a server-tool request): the
        key's rate limits, then its worst case reserved against the budget (429 / 402)."""
        return await admit(self.gateway, caller, admission_id, worst_case, unpriced)

    async def start(
        self,
        caller: Principal,
        planned: PlannedFusion,
        *,
        request: dict[str, Any],
        request_model: str,
        background: bool = False,
        parent_run_id: str | None = None,
        settle: bool = True,
        live: bool = True,
        cache: CacheDirective | None = None,
    ) -> ActiveRun:
        """Admit the run (429/402 when the key's limits or budget refuse it) and start it. With
        `settle=False` the caller holds its own admission (the server tool's request admits once for
        the outer calls and the fusion together). `live=False`: the caller reads only the result, so
        text deltas are logged joined (until a follower arrives) rather than one per read. `cache`: what
        the request allows the response cache (default: read and write, when the spec turns it on); a
        hit is started as a replay of the stored answer, admitted for the rate limits only."""
        run_id = new_run_id()
        ticket = await self.cache.lookup(caller.key_id, planned.plan, cache or CacheDirective())
        hit = ticket.hit if ticket is not None else None
        admission = None
        if settle:
            est = planned.plan.estimate
            admission = await admit(self.gateway, caller, run_id, est.total, est.unpriced, budget=hit is None)
        replay = None
        if hit is not None:
            replay = replayed_result(
                hit.result,
                run_id=run_id,
                spec=planned.plan.spec,
                source_run_id=hit.run_id,
                finish_reason=hit.finish_reason,
            )
        try:
            run = await self.gateway.manager.start(
                planned.fusion,
                planned.plan,
                run_id=run_id,
                request=request,
                request_model=request_model,
                background=background,
                key_id=caller.key_id,
                parent_run_id=parent_run_id,
                live=live,
                on_finish=self._on_finish(admission, ticket),
                replay=replay,
            )
        except BaseException:
            if admission is not None:
                await admission.release(0.0)  # never started: nothing spent
            raise
        run.cache = ticket.status if ticket is not None else None
        return run

    def _on_finish(
        self, admission: Admission | None, ticket: CacheTicket | None
    ) -> Callable[[FusionResult | None], Awaitable[None]] | None:
        """What a run owes when it ends: its budget settled, then its answer cached (both before its
        terminal event goes out, so a client told "completed" finds the entry)."""
        if ticket is None or not ticket.store:
            return admission.release_result if admission is not None else None
        cache = self.cache

        async def finish(result: FusionResult | None) -> None:
            try:
                if admission is not None:
                    await admission.release_result(result)
            finally:
                await cache.remember(ticket, result)

        return finish

    async def wait(self, run: ActiveRun, client_left: Awaitable[None]) -> FusionResult:
        """Wait for the run; a caller that goes away (`client_left` completes) cancels it unless it
        runs in the background.

        When the server cancels the wait (graceful shutdown ran out of time), the run is stopped and
        recorded, and the caller gets a 503 rather than a bare connection drop."""
        left = asyncio.ensure_future(client_left)
        done = asyncio.ensure_future(run.done.wait())
        try:
            await asyncio.wait({done, left}, return_when=asyncio.FIRST_COMPLETED)
            if not run.done.is_set() and not run.background:  # the caller left first
                run.cancel("the client disconnected")
                await run.done.wait()
        except asyncio.CancelledError:
            if not run.background:
                run.cancel(SHUTDOWN_REASON)
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(run.done.wait()), timeout=10)
            raise shutting_down(run.run_id) from None
        finally:
            left.cancel()
            done.cancel()
        return run.result


def shutting_down(run_id: str) -> ServiceError:
    """What the caller of a run the gateway stopped on its way down is told (503: try again)."""
    return ServiceError(
        503,
        "the gateway is shutting down; the run was stopped and recorded",
        code="shutting_down",
        extra={"run_id": run_id},
    )
