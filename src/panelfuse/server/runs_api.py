"""/v1/fusion/*: the runs (list, get, events replay + live tail, delete, resynthesize, feedback) and
the estimate. (/v1/models is in models_api.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator, ValidationError

from panelfuse.pipeline.result import MemberResult
from panelfuse.providers.resolve import FusionRoute, UnknownModelError
from panelfuse.server import responses, shapes
from panelfuse.server.deps import Caller, Service, State, Trials
from panelfuse.server.disconnect import until_disconnected
from panelfuse.server.errors import ApiError
from panelfuse.server.sse import sse, sse_response
from panelfuse.server.state import GatewayState
from panelfuse.service.caller import Principal
from panelfuse.service.requests import (
    MAX_ID_LENGTH,
    ChatCompletionRequest,
    EstimateRequest,
    FeedbackRequest,
    ResynthesizeRequest,
    no_nul,
    no_nul_or_none,
)
from panelfuse.service.resynthesis import resynthesis_spec
from panelfuse.service.specs import fusion_spec, validation_error
from panelfuse.store import CacheStore, InvalidCursorError

router = APIRouter()
TERMINAL_STATUSES = ("completed", "failed", "cancelled", "interrupted")
EVENT_PAGE = 1000  # stored events read per query while replaying
POLL_INTERVAL = 0.5  # live tail of a run served by another process: how often to read the store
# An event's seq is a 32-bit column on PostgreSQL: a larger `after` could only fail in the store.
MAX_SEQ = 2**31 - 1
# Path and query strings the store looks up as text: no NUL (PostgreSQL refuses it), bounded length.
RunId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH), AfterValidator(no_nul)]
QueryText = Annotated[str | None, Query(max_length=MAX_ID_LENGTH), AfterValidator(no_nul_or_none)]


async def _run_or_404(state: GatewayState, run_id: str, principal: Principal) -> Any:
    # Another key's run is indistinguishable from a missing one: no probing for ids.
    run = await state.store.get_run(run_id, key_id=principal.scope)
    if run is None:
        raise ApiError(404, f"no run '{run_id}'", param="run_id", code="run_not_found")
    return run


@router.get(
    "/v1/fusion/runs",
    summary="List runs, newest first",
    response_model=responses.RunList,
    response_model_exclude_unset=True,
)
async def list_runs(
    state: State,
    principal: Caller,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    before: QueryText = None,
    status: QueryText = None,
    preset: QueryText = None,
    mode: QueryText = None,
    degraded: bool | None = None,
) -> dict[str, Any]:
    try:
        page = await state.store.list_runs(
            limit=limit,
            before=before,
            status=status,
            preset=preset,
            mode=mode,
            degraded=degraded,
            key_id=principal.scope,
        )
    except InvalidCursorError as exc:
        raise ApiError(400, str(exc), param="before", code="invalid_cursor") from exc
    return {
        "object": "list",
        "data": [r.to_dict() for r in page.items],
        "next_cursor": page.next_cursor,
        "has_more": page.next_cursor is not None,
    }


@router.get(
    "/v1/fusion/runs/{run_id}",
    summary="One run with its result",
    response_model=responses.Run,
    response_model_exclude_unset=True,
)
async def get_run(run_id: RunId, state: State, principal: Caller) -> dict[str, Any]:
    return (await _run_or_404(state, run_id, principal)).to_dict()


def _last_event_id(value: str | None) -> int:
    """The seq an EventSource's `Last-Event-ID` resumes after (0 when it names none); out of range is a 400."""
    if not value or not value.isdigit():
        return 0
    if len(value) > 10 or int(value) > MAX_SEQ:
        raise ApiError(400, f"Last-Event-ID: at most {MAX_SEQ}", param="Last-Event-ID", code="invalid_value")
    return int(value)


def _sse_event(ev: dict[str, Any]) -> str:
    return sse(ev, event=ev["type"], event_id=ev["seq"])


@router.get("/v1/fusion/runs/{run_id}/events", summary="The run's events after `after` (SSE), then its live tail")
async def run_events(
    run_id: RunId,
    state: State,
    principal: Caller,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    await _run_or_404(state, run_id, principal)
    after = max(after, _last_event_id(last_event_id))
    return sse_response(_tail(state, run_id, after), keepalive=state.keepalive_s)


async def _tail(state: GatewayState, run_id: str, after: int) -> AsyncIterator[str]:
    """Stored events first; then, if this process drives the run, its live feed; otherwise poll the
    store (the run may live in another worker or replica) until the run ends. Keep-alives come from
    the SSE writer."""
    while True:
        async for seq, frame in _stored(state, run_id, after):
            yield frame
            after = seq
        active = state.manager.active.get(run_id)
        if active is not None:
            async for ev in active.follow(after):
                yield _sse_event(ev.to_dict())
                after = ev.seq
        run = await state.store.get_run(run_id)
        if run is None or run.status in TERMINAL_STATUSES:
            async for _, frame in _stored(state, run_id, after):
                yield frame
            return
        await asyncio.sleep(POLL_INTERVAL)


async def _stored(state: GatewayState, run_id: str, after: int) -> AsyncIterator[tuple[int, str]]:
    """Every stored event after `after`, a page at a time (a long run has thousands): (seq, frame)."""
    while True:
        page = await state.store.events_after(run_id, after, limit=EVENT_PAGE)
        for rec in page:
            yield rec.seq, _sse_event(rec.to_dict())
            after = rec.seq
        if len(page) < EVENT_PAGE:
            return


@router.delete(
    "/v1/fusion/runs/{run_id}",
    summary="Delete a run (cancelling it if it is running)",
    response_model=responses.Deleted,
    response_model_exclude_unset=True,
)
async def delete_run(run_id: RunId, state: State, principal: Caller) -> dict[str, Any]:
    await _run_or_404(state, run_id, principal)
    active = state.manager.active.get(run_id)
    if active is not None:
        active.cancel("deleted")
        await active.done.wait()
    if not await state.store.delete_run(run_id, key_id=principal.scope):
        raise ApiError(404, f"no run '{run_id}'", param="run_id", code="run_not_found")
    await CacheStore(state.store.database).forget_run(run_id)  # its answer is not served again
    return {"id": run_id, "object": "fusion.run", "deleted": True}


@router.post(
    "/v1/fusion/runs/{run_id}/feedback",
    summary="Score a run (-1 … 1) with an optional comment",
    response_model=responses.Feedback,
    response_model_exclude_unset=True,
)
async def feedback(
    run_id: RunId, body: FeedbackRequest, state: State, principal: Caller, trials: Trials
) -> dict[str, Any]:
    if not await state.store.set_feedback(run_id, body.score, body.comment, key_id=principal.scope):
        raise ApiError(404, f"no run '{run_id}'", param="run_id", code="run_not_found")
    await trials.store.set_feedback(run_id, body.score, key_id=principal.scope)  # an experiment's record, if any
    return {"id": run_id, "object": "fusion.feedback", "score": body.score, "comment": body.comment}


@router.post(
    "/v1/fusion/runs/{run_id}/resynthesize",
    summary="A new judge/synthesizer/mode over the stored panel answers; billed for the new calls only",
    response_model=responses.ChatCompletion,
    response_model_exclude_unset=True,
)
async def resynthesize(
    run_id: RunId, body: ResynthesizeRequest, request: Request, state: State, principal: Caller, service: Service
) -> Any:
    source = await _run_or_404(state, run_id, principal)
    if source.result is None or not source.result.get("panel"):
        raise ApiError(409, f"run '{run_id}' has no stored panel answers", code="nothing_to_resynthesize")
    spec = resynthesis_spec(source.spec, body)
    panel = [MemberResult.from_dict(m) for m in source.result["panel"]]
    planned = service.plan(
        principal, spec, source.request.get("messages") or [], reuse_panel=panel, max_cost_param="max_cost"
    )
    run = await service.start(
        principal, planned, request=source.request, request_model=source.request_model, parent_run_id=run_id
    )
    result = await service.wait(run, until_disconnected(request))
    if result.status != "completed":
        raise ApiError(
            502, f"re-synthesis failed: {result.error}", code="fusion_failed", extra={"run_id": result.run_id}
        )
    out = shapes.chat_completion(result)
    out["fusion"]["parent_run_id"] = run_id
    return out


@router.post(
    "/v1/fusion/estimate",
    summary="The worst-case cost of a fusion request, before running it",
    response_model=responses.Estimate,
    response_model_exclude_unset=True,
)
async def estimate(body: EstimateRequest, state: State, principal: Caller, service: Service) -> dict[str, Any]:
    try:
        chat = ChatCompletionRequest(
            model=body.model,
            messages=body.messages,
            plugins=body.plugins,
            max_completion_tokens=body.max_completion_tokens,
        )
        plugin = chat.fusion_plugin()
    except ValidationError as exc:
        raise validation_error(exc, "body") from exc
    try:
        route = state.providers.route(body.model, list(state.presets))
    except UnknownModelError as exc:
        raise ApiError(404, str(exc), param="model", code="model_not_found") from exc
    if not isinstance(route, FusionRoute):
        raise ApiError(
            400,
            f"'{body.model}' is not a fusion model: estimates are for panelfuse/fusion",
            param="model",
            code="not_a_fusion_model",
        )
    spec = fusion_spec(chat, plugin, route.preset, state.default_preset(), state.presets)
    est = service.plan(principal, spec, chat.plain_messages(), enforce_max_cost=False).plan.estimate
    return {
        "object": "fusion.estimate",
        "total": est.total,
        "by_stage": est.by_stage(),
        "unpriced": est.unpriced,
        "prices_as_of": state.prices.as_of,
        "calls": [c.__dict__ for c in est.calls],
        "formula": "sum over planned calls of prompt_tokens x input_price + max_tokens x output_price",
    }
