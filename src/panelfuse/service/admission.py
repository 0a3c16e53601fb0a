"""Letting a run in: the key's rate limits, then its budget (the worst case reserved atomically in the
store). The returned Admission releases both when the run ends, charging what it really cost."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from panelfuse.pipeline.result import FusionResult
from panelfuse.service.caller import Principal
from panelfuse.service.carry import carry_through
from panelfuse.service.errors import ServiceError
from panelfuse.service.gateway import Gateway

log = logging.getLogger("panelfuse.server")


@dataclass
class Admission:
    state: Gateway
    principal: Principal
    run_id: str
    limited: bool = False
    reserved: bool = False
    done: bool = False

    async def release(self, cost: float | None) -> None:
        """Settle the reservation at `cost` (the reservation itself when unknown) and free the slot."""
        if self.done:
            return
        self.done = True
        key = self.principal.key
        try:
            if self.reserved:
                await self.state.store.keys.settle(self.run_id, cost)
        except Exception:  # the store is down: the reservation stays held, which errs on the safe side
            log.exception("could not settle the budget of run %s", self.run_id)
        finally:
            if self.limited and key is not None:
                await self.state.limiter.release(key.id, key.max_concurrent)

    async def release_shielded(self, cost: float | None) -> None:
        """`release`, carried to the end even when the caller is being cancelled."""
        await carry_through(self.release(cost))

    async def release_result(self, result: FusionResult | None) -> None:
        await self.release(result.cost if result is not None else None)


async def admit(
    state: Gateway, principal: Principal, run_id: str, worst_case: float, unpriced: list[str], *, budget: bool = True
) -> Admission:
    """Raise 429 (rate limit) or 402 (budget) in OpenAI's error shape; else hold both for the run.
    `budget=False`: a run that calls nobody (a response cache hit) is held to the rate limits only."""
    adm = Admission(state, principal, run_id)
    key = principal.key
    if key is None:
        return adm
    denied = await state.limiter.acquire(key.id, key.rpm, key.max_concurrent)
    if denied is not None:
        raise ServiceError(
            429, denied.reason, code="rate_limited", headers={"Retry-After": str(max(1, round(denied.retry_after)))}
        )
    adm.limited = key.max_concurrent is not None
    if key.budget_usd is None or not budget:
        return adm
    try:
        if unpriced:
            raise ServiceError(
                402, f"cannot reserve budget: no price is known for {', '.join(unpriced)}", code="insufficient_budget"
            )
        if not await state.store.keys.reserve(key.id, run_id, worst_case):
            fresh = await state.store.keys.get(key.id)
            left = fresh.remaining_usd if fresh is not None else None
            raise ServiceError(
                402,
                f"the run's worst case ${worst_case:.6f} does not fit the key's remaining budget (${left:.6f})"
                if left is not None
                else "budget exhausted",
                code="insufficient_budget",
                extra={"estimate": worst_case},
            )
    except BaseException:
        await adm.release(0.0)
        raise
    adm.reserved = True
    return adm
