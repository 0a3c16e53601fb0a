"""POST /v1/chat/completions: one route, three paths (a fusion model, a plain model with the fusion
server tool, a plain model proxied). The route reads the request; the fusion service does the work."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from panelfuse.pipeline.events import PanelCompleted
from panelfuse.pipeline.modes import mode_for
from panelfuse.providers.resolve import FusionRoute, UnknownModelError
from panelfuse.server import responses, shapes
from panelfuse.server.deps import Caller, Service, State
from panelfuse.server.errors import ApiError
from panelfuse.server.proxy import proxy_completion
from panelfuse.server.server_tool import server_tool_completion
from panelfuse.server.sse import DONE, ready_batches, sse, sse_response
from panelfuse.service.requests import ChatCompletionRequest
from panelfuse.service.runs import ActiveRun
from panelfuse.service.server_tool import failure_reason, fusion_depth, split_tools, without_fusion
from panelfuse.service.specs import fusion_spec, validation_error, with_tool_parameters

router = APIRouter()


@router.post(
    "/v1/chat/completions",
    summary="OpenAI-compatible chat completions, with fusion",
    response_model=responses.ChatCompletion,
    response_model_exclude_unset=True,
    responses=responses.SSE_OR_JSON,
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, state: State, service: Service, caller: Caller
) -> Any:
    try:
        plugin = body.fusion_plugin()
    except ValidationError as exc:
        raise validation_error(exc, "plugins[0]") from exc
    tool_params, own_tools = split_tools(body.tools)
    if tool_params is not None:
        # As on OpenRouter: the plugin fills the tool's parameters; the tool's own fields win.
        tool_params = with_tool_parameters(plugin, tool_params)
    try:
        route = state.providers.route(body.model, list(state.presets))
    except UnknownModelError as exc:
        raise ApiError(404, str(exc), param="model", code="model_not_found") from exc
    is_fusion = isinstance(route, FusionRoute)
    alias_preset = route.preset if isinstance(route, FusionRoute) else None
    wants_fusion = is_fusion or tool_params is not None or (plugin is not None and plugin.enabled)
    if wants_fusion and fusion_depth(request.headers):
        # Made on behalf of a fusion (our depth header or OpenRouter's): no fusion starts here. As on
        # OpenRouter, which then does not inject the fusion tool, the request is served without it: the
        # outer model runs with the caller's own tools only, a fusion alias is its answer model called
        # directly, and a fusion plugin is ignored.
        model = body.model
        if is_fusion:
            bare = body.model_copy(update={"tools": None, "n": None})
            spec = fusion_spec(bare, tool_params or plugin, alias_preset, state.default_preset(), state.presets)
            model = mode_for(spec.mode).answer_model(spec)
        tools, choice = without_fusion(own_tools, body.tool_choice)
        plain = body.model_copy(update={"model": model, "tools": tools, "tool_choice": choice})
        return await proxy_completion(state, service, caller, plain, request)
    if tool_params is not None and not is_fusion:
        return await server_tool_completion(state, service, caller, body, tool_params, own_tools, request)
    if not is_fusion:
        if plugin is not None and plugin.enabled:
            raise ApiError(
                400,
                f"the fusion plugin needs a fusion model (panelfuse/fusion); '{body.model}' is a plain model",
                param="plugins",
                code="fusion_plugin_on_plain_model",
            )
        return await proxy_completion(state, service, caller, body, request)
    if tool_params is not None:
        # The fusion server tool on a fusion alias configures the alias's fusion (OpenRouter's alias is
        # a model given that tool): its parameters act as the plugin, field by field over it.
        plugin = tool_params
        body = body.model_copy(update={"tools": own_tools or None})

    spec = fusion_spec(body, plugin, alias_preset, state.default_preset(), state.presets)
    planned = service.plan(caller, spec, body.plain_messages())
    run = await service.start(
        caller,
        planned,
        request=body.model_dump(mode="json"),
        request_model=body.model,
        background=bool(plugin and plugin.background),
    )
    include_panel = plugin.include_panel if plugin else True
    headers = {"X-Panelfuse-Run-Id": run.run_id}
    if body.stream:
        answer_model = planned.plan.mode.answer_model(spec)
        return sse_response(
            fusion_chunks(run, answer_model, include_panel), keepalive=state.keepalive_s, headers=headers
        )
    result = await service.wait(run, request.is_disconnected)
    if result.status != "completed":
        raise ApiError(
            499 if result.status == "cancelled" else 502,
            f"fusion failed: {result.error}",
            code="fusion_failed",
            extra={
                "run_id": result.run_id,
                "failed_models": [f.to_dict() for f in result.failed_models],
                "failure_reason": failure_reason(result),
            },
        )
    return JSONResponse(shapes.chat_completion(result, include_panel=include_panel), headers=headers)


async def fusion_chunks(run: ActiveRun, answer_model: str, include_panel: bool) -> AsyncIterator[str]:
    """The run as chat.completion.chunk frames, each with `choices[0]` (safe for naive loops): the
    role first, progress in the `fusion` field of chunks with an empty delta, the answer as content
    deltas, then one last chunk (finish_reason, usage, the final `fusion` object) and [DONE]; or, for
    a run that failed or was cancelled, OpenRouter's error chunk and nothing after it. Deltas that
    piled up while the client was slower than the run go out merged, one chunk per member or answer
    (the stored events stay one per delta). A caller that leaves cancels the run (unless it runs in
    the background)."""
    cid = shapes.completion_id(run.run_id)
    created = int(time.time())
    yield sse(shapes.chunk(cid, answer_model, created, delta={"role": "assistant", "content": ""}))
    batches = ready_batches(run.follow())
    try:
        async for batch in batches:
            for ev in shapes.coalesce(batch):
                if ev.type == "final.delta":
                    yield sse(shapes.chunk(cid, answer_model, created, delta={"content": ev.data["text"]}))
                    continue
                data = ev.data
                if isinstance(ev.payload, PanelCompleted) and not include_panel:
                    data = {k: v for k, v in data.items() if k != "content"}
                yield sse(shapes.event_chunk(ev, data, cid, answer_model, created))
                result = run.result
                if ev.type == "run.completed":
                    final = shapes.final_chunk(
                        cid,
                        result.model,
                        created,
                        finish_reason=result.finish_reason,
                        usage=result.usage_dict(),
                        fusion=shapes.fusion_object(result, include_panel),
                    )
                    yield sse(final)
                    yield DONE
                    return
                if ev.type in ("run.failed", "run.cancelled"):
                    err = shapes.fusion_error(result, cancelled=ev.type == "run.cancelled")
                    yield sse(shapes.error_chunk(err, cid, answer_model, created, usage=result.usage_dict()))
                    return
    finally:
        if not run.done.is_set() and not run.background:
            run.cancel("the client disconnected")
        await batches.aclose()
