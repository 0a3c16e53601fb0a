"""FastAPI dependencies: the gateway's state, its fusion service, its experiments and the caller, per
request. Each is `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per
request and dependency (about a third of a proxied request's CPU at C=1, in a py-spy profile)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from panelfuse.server.access import current_principal
from panelfuse.server.state import GatewayState
from panelfuse.service.caller import Principal
from panelfuse.service.experiments import Experiments
from panelfuse.service.fusion import FusionService


async def gateway_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


async def fusion_service(request: Request) -> FusionService:
    service: FusionService = request.app.state.fusion_service
    return service


async def experiments(request: Request) -> Experiments:
    found: Experiments = request.app.state.experiments
    return found


State = Annotated[GatewayState, Depends(gateway_state)]
Service = Annotated[FusionService, Depends(fusion_service)]
Caller = Annotated[Principal, Depends(current_principal)]
Trials = Annotated[Experiments, Depends(experiments)]
