"""POST /v1/chat/completions: one route, three paths (a fusion model, a plain model with the fusion
server tool, a plain model proxied). The route reads the request; the fusion service does the work."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from panelfuse.pipeline.events import PanelCompleted
from panelfuse.server import responses, shapes
from panelfuse.server.deps import Caller, Service, State, Trials
from panelfuse.server.disconnect import until_disconnected
from panelfuse.server.proxy import proxy_completion
from panelfuse.server.server_tool import server_tool_completion
from panelfuse.server.sse import DONE, LastFrame, ready_batches, sse, sse_response
from panelfuse.service.cache import cache_directive, cache_headers
from panelfuse.service.requests import ChatCompletionRequest
from panelfuse.service.routing import route_chat
from panelfuse.service.runs import ActiveRun
from panelfuse.service.server_tool import fusion_depth
from panelfuse.service.specs import fusion_spec

router = APIRouter()


@router.post(
    "/v1/chat/completions",
    summary="OpenAI-compatible chat completions, with fusion",
    response_model=responses.ChatCompletion,
    response_model_exclude_unset=True,
    responses=responses.SSE_OR_JSON,
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, state: State, service: Service, caller: Caller, trials: Trials
) -> Any:
    at_depth = bool(fusion_depth(request.headers))
    # An experiment on the requested model sends the request to its arm (service/experiments.py).
    trial = None if at_depth else await trials.assign(body, caller, request.headers)
    if trial is not None:
        body = trial.request_for(body)
    route = route_chat(body, state.providers, state.presets, state.default_preset(), at_fusion_depth=at_depth)
    if route.path == "proxy":
        tell = trials.teller(trial) if trial is not None else None
        return await proxy_completion(state, service, caller, route.chat, request, on_outcome=tell)
    if route.path == "server_tool":
        assert route.tool_params is not None
        return await server_tool_completion(
            state, service, caller, route.chat, route.tool_params, list(route.own_tools), request
        )
    body, plugin, alias_preset = route.chat, route.plugin, route.alias_preset
    spec = fusion_spec(body, plugin, alias_preset, state.default_preset(), state.presets)
    planned = service.plan(caller, spec, body.plain_messages())
    run = await service.start(
        caller,
        planned,
        request=body.model_dump(mode="json"),
        request_model=body.model,
        background=bool(plugin and plugin.background),
        live=bool(body.stream),
        cache=cache_directive(request.headers),
    )
    include_panel = plugin.include_panel if plugin else True
    # The completion id names the run: GET /v1/generation?id= answers from it.
    headers = {"X-Panelfuse-Run-Id": run.run_id, "X-Generation-Id": shapes.completion_id(run.run_id)}
    headers.update(cache_headers(run.cache))
    if trial is not None:
        trials.follow_run(trial, run, response_id=shapes.completion_id(run.run_id))
    if body.stream:
        answer_model = planned.plan.mode.answer_model(spec)
        return sse_response(
            fusion_chunks(run, answer_model, include_panel), keepalive=state.keepalive_s, headers=headers
        )
    result = await service.wait(run, until_disconnected(request))
    if result.status != "completed":
        raise shapes.fusion_error(result)
    return JSONResponse(shapes.chat_completion(result, include_panel=include_panel), headers=headers)


async def fusion_chunks(run: ActiveRun, answer_model: str, include_panel: bool) -> AsyncIterator[str]:
    """The run as chat.completion.chunk frames, each with `choices[0]` (safe for naive loops): the
    role first, progress in the `fusion` field of chunks with an empty delta, the answer as content
    deltas, then one last chunk (finish_reason, usage, the final `fusion` object) and [DONE]; or, for
    a run that failed or was cancelled, OpenRouter's error chunk and nothing after it. Deltas that
    piled up while the client was slower than the run go out merged, one chunk per member or answer
    (the stored events keep them as they came). A caller that leaves cancels the run (unless it runs in
    the background)."""
    cid = shapes.completion_id(run.run_id)
    created = int(time.time())
    batches = ready_batches(run.follow())
    try:
        # Inside the try: a client gone before the first chunk still reaches the clean-up below.
        yield sse(shapes.chunk(cid, answer_model, created, delta={"role": "assistant", "content": ""}))
        async for batch in batches:
            frames: list[str] = []  # a batch's frames go out in one write
            for ev in shapes.coalesce(batch):
                if ev.type == "final.delta":
                    frames.append(sse(shapes.chunk(cid, answer_model, created, delta={"content": ev.data["text"]})))
                    continue
                data = ev.data
                if isinstance(ev.payload, PanelCompleted) and not include_panel:
                    data = {k: v for k, v in data.items() if k != "content"}
                frames.append(sse(shapes.event_chunk(ev, data, cid, answer_model, created)))
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
                    yield LastFrame("".join([*frames, sse(final), DONE]))
                    return
                if ev.type in ("run.failed", "run.cancelled"):
                    err = shapes.fusion_error(result, cancelled=ev.type == "run.cancelled")
                    frames.append(sse(shapes.error_chunk(err, cid, answer_model, created, usage=result.usage_dict())))
                    yield LastFrame("".join(frames))
                    return
            yield "".join(frames)
    finally:
        if not run.done.is_set() and not run.background:
            run.cancel("the client disconnected")
        await batches.aclose()
