"""A plain outer model given the fusion server tool (and possibly the caller's own tools): the route
side. The session that sequences the outer calls and the one fusion is panelfuse.service.server_tool."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import Request

from panelfuse.pipeline.events import Event
from panelfuse.pipeline.result import FusionResult
from panelfuse.providers.base import Completion, StreamEvent
from panelfuse.providers.errors import ProviderError
from panelfuse.server import shapes
from panelfuse.server.errors import from_provider_error
from panelfuse.server.proxy import proxy_request
from panelfuse.server.sse import DONE, ready_batches, sse, sse_response
from panelfuse.server.state import GatewayState
from panelfuse.service.admission import Admission
from panelfuse.service.caller import Principal, providers_for
from panelfuse.service.errors import ServiceError
from panelfuse.service.fusion import FusionService, PlannedFusion
from panelfuse.service.requests import ChatCompletionRequest, FusionPlugin
from panelfuse.service.server_tool import (
    FUSION_FUNCTION_DEF,
    FusionToolSession,
    ToolRun,
    outer_tool_choice,
    outer_worst_case,
)
from panelfuse.service.specs import fusion_spec


async def server_tool_completion(
    state: GatewayState,
    service: FusionService,
    caller: Principal,
    body: ChatCompletionRequest,
    params: FusionPlugin,
    own_tools: list[dict[str, Any]],
    request: Request,
) -> Any:
    try:
        provider, route = providers_for(caller, state.providers).for_model(body.model)
    except ProviderError as exc:
        raise from_provider_error(exc) from exc
    caller.check_models([route.qualified])
    if params.model is None:
        # As on OpenRouter: without `parameters.model` the judge is the model handling the request.
        params = params.model_copy(update={"model": body.model})
    # The request's own max_tokens, temperature, stop, seed, reasoning and response_format are the outer
    # model's (it writes the answer): none of them reaches the fusion.
    bare = ChatCompletionRequest(model=body.model, messages=body.messages)
    spec = fusion_spec(bare, params, None, state.default_preset(), state.presets)
    conversation = body.plain_messages()
    # `mode: "fast"` (single) runs the first member alone and its answer is the tool result; every other
    # mode runs panel + analysis for the outer model to answer from.
    mode = "single" if spec.mode == "single" else "analyze"
    # Planned once, on the caller's conversation; the fusion itself runs the same plan on the question
    # the outer model asks. Its max_cost verdict is the fusion's own (a refused fusion is a tool error).
    planned = service.plan(caller, spec.model_copy(update={"mode": mode}), conversation, enforce_max_cost=False)
    base = replace(
        proxy_request(body, route.model),
        tools=[*own_tools, FUSION_FUNCTION_DEF],
        tool_choice=outer_tool_choice(body.tool_choice),
    )
    outer, unpriced = outer_worst_case(state.prices, route.qualified, base)
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    est = planned.plan.estimate
    admission = await service.admit(caller, f"tool_{cid}", est.total + outer, est.unpriced + unpriced)

    async def run_fusion(messages: list[dict[str, Any]]) -> AsyncIterator[Event | FusionResult]:
        asked = PlannedFusion(planned.fusion, planned.plan.with_messages(messages))
        run = await service.start(
            caller,
            asked,
            request={"messages": messages, "server_tool": True, "outer_model": body.model},
            request_model=body.model,
            settle=False,  # this request's admission covers the fusion
        )
        try:
            async for ev in run.follow():
                yield ev
            await run.done.wait()
        finally:
            run.cancel("the request ended")  # a no-op once done; stops the fusion if the caller left
            session.state.fusion_result = run.result  # its cost counts, also when the caller left
        yield run.result

    session = FusionToolSession(provider, route, base, state.prices, run_fusion)
    if body.stream:
        # keep-alives while the fusion runs between the outer model's calls
        return sse_response(
            tool_chunks(session, conversation, body.model, cid, created, admission), keepalive=state.keepalive_s
        )
    final = None
    try:
        async for item in session.events(conversation):
            if isinstance(item, Completion):
                final = item
    except ProviderError as exc:
        raise from_provider_error(exc) from exc
    finally:
        await admission.release_shielded(session.state.usage_dict()["cost"])
    assert final is not None
    out = completion_response(body.model, final, session.state, cid, created)
    # The panel's sources as url_citation annotations of the outer model's answer.
    out["choices"][0]["message"]["annotations"] = session.state.annotations(final.text)
    return out


def completion_response(model: str, completion: Completion, run: ToolRun, cid: str, created: int) -> dict[str, Any]:
    out = shapes.proxied_completion(completion, model=model, cid=cid, created=created)
    out["usage"] = run.usage_dict()
    if run.fusion_result is not None:
        out["fusion"] = shapes.fusion_object(run.fusion_result)
    return out


async def tool_chunks(
    session: FusionToolSession,
    conversation: list[dict[str, Any]],
    model: str,
    cid: str,
    created: int,
    admission: Admission,
) -> AsyncIterator[str]:
    """The outer model's stream, as fusion_chunks shapes the alias's: every chunk with `choices[0]`,
    the fusion's progress in the `fusion` field of chunks with an empty delta (deltas that piled up
    merged), the outer model's text as content deltas, then one last chunk (finish_reason, usage, the
    fusion's `fusion` object) and [DONE]; a failure is OpenRouter's error chunk, with nothing after."""
    yield sse(shapes.chunk(cid, model, created, delta={"role": "assistant", "content": ""}))
    items = ready_batches(session.events(conversation))
    try:
        async for batch in items:
            for item in shapes.coalesce(batch):
                if isinstance(item, StreamEvent):
                    yield sse(shapes.chunk(cid, model, created, delta={"content": item.text}))
                elif isinstance(item, Event):
                    yield sse(shapes.event_chunk(item, item.data, cid, model, created))
                else:
                    if item.tool_calls:
                        calls = [{"index": i, **t.to_openai()} for i, t in enumerate(item.tool_calls)]
                        yield sse(shapes.chunk(cid, model, created, delta={"tool_calls": calls}))
                    annotations = session.state.annotations(item.text)
                    if annotations:  # the panel's sources, as on the non-streamed message
                        yield sse(shapes.chunk(cid, model, created, delta={"annotations": annotations}))
                    result = session.state.fusion_result
                    final = shapes.final_chunk(
                        cid,
                        model,
                        created,
                        finish_reason="tool_calls" if item.tool_calls else (item.finish_reason or "stop"),
                        usage=session.state.usage_dict(),
                        fusion=shapes.fusion_object(result) if result else None,
                    )
                    yield sse(final)
    except (ProviderError, ServiceError) as exc:
        err = from_provider_error(exc) if isinstance(exc, ProviderError) else exc
        yield sse(shapes.error_chunk(err, cid, model, created, usage=session.state.usage_dict()))
        return  # OpenRouter ends the stream with its error chunk: no [DONE]
    finally:
        await items.aclose()  # stops the outer loop (and its fusion) when the caller left
        await admission.release_shielded(session.state.usage_dict()["cost"])
    yield DONE
