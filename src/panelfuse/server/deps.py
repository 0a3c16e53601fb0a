"""FastAPI dependencies: the gateway's state, its fusion service and the caller, per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from panelfuse.server.access import current_principal
from panelfuse.server.state import GatewayState
from panelfuse.service.caller import Principal
from panelfuse.service.experiments import Experiments
from panelfuse.service.fusion import FusionService


def gateway_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


def fusion_service(request: Request) -> FusionService:
    service: FusionService = request.app.state.fusion_service
    return service


def experiments(request: Request) -> Experiments:
    found: Experiments = request.app.state.experiments
    return found


State = Annotated[GatewayState, Depends(gateway_state)]
Service = Annotated[FusionService, Depends(fusion_service)]
Caller = Annotated[Principal, Depends(current_principal)]
Trials = Annotated[Experiments, Depends(experiments)]
