"""A plain outer model given the fusion server tool (and possibly the caller's own tools): the route
side. The session that sequences the outer calls and the one fusion is panelfuse.service.server_tool."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import Request

from panelfuse.pipeline.events import Event
from panelfuse.providers.base import Completion, StreamEvent
from panelfuse.providers.errors import ProviderError
from panelfuse.server import shapes
from panelfuse.server.disconnect import unless_client_leaves
from panelfuse.server.errors import from_provider_error
from panelfuse.server.sse import DONE, LastFrame, ready_batches, sse, sse_response
from panelfuse.server.state import GatewayState
from panelfuse.service.admission import Admission
from panelfuse.service.caller import Principal
from panelfuse.service.carry import carry_through
from panelfuse.service.errors import ServiceError
from panelfuse.service.fusion import FusionService
from panelfuse.service.requests import ChatCompletionRequest, FusionPlugin
from panelfuse.service.server_tool import (
    FusionToolSession,
    ToolRun,
)
from panelfuse.service.tool_requests import open_tool_request


async def server_tool_completion(
    state: GatewayState,
    service: FusionService,
    caller: Principal,
    body: ChatCompletionRequest,
    params: FusionPlugin,
    own_tools: list[dict[str, Any]],
    request: Request,
) -> Any:
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    tool = await open_tool_request(
        service,
        caller,
        body,
        params,
        own_tools,
        admission_id=f"tool_{cid}",
        stored_request={"server_tool": True, "outer_model": body.model},
    )
    session, conversation, admission = tool.session, tool.conversation, tool.admission
    if body.stream:
        # keep-alives while the fusion runs between the outer model's calls
        return sse_response(
            tool_chunks(session, conversation, body.model, cid, created, admission), keepalive=state.keepalive_s
        )
    try:
        final = await unless_client_leaves(_last_completion(session, conversation), request)
    except ProviderError as exc:
        raise from_provider_error(exc) from exc
    finally:
        await tool.settle()
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
    items = ready_batches(session.events(conversation))
    try:
        # Inside the try: a client gone before the first chunk still gets its admission settled.
        yield sse(shapes.chunk(cid, model, created, delta={"role": "assistant", "content": ""}))
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
        yield LastFrame(sse(shapes.error_chunk(err, cid, model, created, usage=session.state.usage_dict())))
        return  # OpenRouter ends the stream with its error chunk: no [DONE]
    finally:
        # One carried task: a client that left cancels every await of ours, and stopping the outer
        # loop (and its fusion) awaits, which must not cut the settling short.
        await carry_through(_stop_and_settle(items, session, admission))
    yield LastFrame(DONE)


async def _stop_and_settle(items: AsyncGenerator[Any, None], session: FusionToolSession, admission: Admission) -> None:
    try:
        await items.aclose()
    finally:
        await admission.release(session.state.usage_dict()["cost"])


async def _last_completion(session: FusionToolSession, conversation: list[dict[str, Any]]) -> Completion:
    final = None
    async for item in session.events(conversation):
        if isinstance(item, Completion):
            final = item
    assert final is not None  # the outer loop always ends with the outer model's completion
    return final
