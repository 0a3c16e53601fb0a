"""POST /v1/responses: OpenAI's Responses API, with OpenRouter's fusion output item and events.

The same three paths as chat completions (a fusion model, a plain model with the fusion server tool, a
plain model proxied), reached by translating the request into a chat-completions request
(`service/responses.py`) and running it through the fusion service; the answer is a `response` object
or its stream events. Each response is recorded as a generation so `previous_response_id` can continue
it (`service/generations.py`)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from panelfuse.server.deps import Caller, Service, State
from panelfuse.server.disconnect import unless_client_leaves, until_disconnected
from panelfuse.server.errors import ApiError
from panelfuse.server.proxy import admit_proxied, opened_stream, resolve_proxied
from panelfuse.server.responses import SSE_OR_JSON
from panelfuse.server.sse import sse, sse_response
from panelfuse.server.state import GatewayState
from panelfuse.service import generations
from panelfuse.service.cache import cache_directive, cache_headers
from panelfuse.service.caller import Principal
from panelfuse.service.carry import carry_through
from panelfuse.service.errors import ServiceError
from panelfuse.service.fusion import FusionService
from panelfuse.service.requests import ChatCompletionRequest, FusionPlugin
from panelfuse.service.responses import (
    fusion_failure,
    fusion_result_events,
    fusion_run_events,
    proxy_events,
    tool_session_events,
)
from panelfuse.service.responses_input import (
    chat_request,
    input_items,
    items_to_messages,
    new_id,
    replayed_items,
    response_id_for_run,
)
from panelfuse.service.responses_output import TERMINAL_EVENTS, ResponseBuilder
from panelfuse.service.responses_requests import ResponsesRequest
from panelfuse.service.routing import route_chat
from panelfuse.service.server_tool import (
    fusion_depth,
)
from panelfuse.service.specs import fusion_spec
from panelfuse.service.tool_requests import open_tool_request
from panelfuse.store import RunStore

router = APIRouter()


class ResponseUsage(BaseModel):
    model_config = ConfigDict(extra="allow")

    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost: float | None = None


class ResponseObject(BaseModel):
    """OpenAI's `response` object; a fusion adds its `openrouter:fusion` output item before the message."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "failed", "in_progress", "incomplete", "cancelled", "queued"]
    model: str
    output: list[dict[str, Any]]
    error: dict[str, Any] | None = None
    usage: ResponseUsage | None = None


@dataclass
class Exchange:
    """One request's facts that every path needs to answer and to record it."""

    body: ResponsesRequest
    chat: ChatCompletionRequest
    items: list[dict[str, Any]]  # the whole conversation's input items (replayed ones first)
    caller: Principal
    state: GatewayState
    request: Request
    started: float

    async def remember(self, builder: ResponseBuilder, run_id: str | None = None) -> None:
        """Record the response as a generation: its stats always, its conversation unless `store` is
        false (a later `previous_response_id` needs it). Never raises."""
        response = builder.response()
        usage = response.get("usage") or {}
        keep = self.body.stored
        await carried_through(
            self.state.store,
            generations.Generation(
                id=builder.id,
                kind="responses",
                model=builder.model,
                key_id=self.caller.key_id,
                created_at=datetime.fromtimestamp(builder.created_at, UTC),
                latency_ms=int((time.monotonic() - self.started) * 1000),
                prompt_tokens=int(usage.get("input_tokens") or 0),
                completion_tokens=int(usage.get("output_tokens") or 0),
                cost=usage.get("cost"),
                finish_reason=builder.finish_reason,
                streamed=self.body.stream,
                run_id=run_id,
                request={"input": self.items} if keep else None,
                response=response if keep else None,
            ),
        )


async def carried_through(store: RunStore, gen: generations.Generation) -> None:
    """Record `gen` even when the client leaves meanwhile (a stream's response task is cancelled at
    its next await)."""
    await carry_through(generations.record(store, gen))


@router.post(
    "/v1/responses",
    summary="OpenAI-compatible Responses API, with fusion",
    response_model=ResponseObject,
    response_model_exclude_unset=True,
    responses=SSE_OR_JSON,
)
async def create_response(
    body: ResponsesRequest, request: Request, state: State, service: Service, caller: Caller
) -> Any:
    started = time.monotonic()
    replayed: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        previous = await generations.get(state.store, body.previous_response_id, key_id=caller.scope)
        if previous is None or previous.kind != "responses" or previous.request is None:
            raise ApiError(
                404,
                f"no stored response '{body.previous_response_id}'",
                param="previous_response_id",
                code="response_not_found",
            )
        replayed = replayed_items(previous.request, previous.response)
    own = input_items(body)
    messages = [
        *items_to_messages(replayed, body.instructions, index_base=-len(replayed)),
        *items_to_messages(own),
    ]
    chat = chat_request(body, messages)
    ex = Exchange(body, chat, [*replayed, *own], caller, state, request, started)
    at_depth = bool(fusion_depth(request.headers))
    route = route_chat(chat, state.providers, state.presets, state.default_preset(), at_fusion_depth=at_depth)
    ex.chat = route.chat
    if route.path == "proxy":
        return await proxy_response(ex, service)
    if route.path == "server_tool":
        assert route.tool_params is not None
        return await tool_response(ex, service, route.tool_params, list(route.own_tools))
    plugin, alias_preset = route.plugin, route.alias_preset
    return await fusion_response(ex, service, plugin, alias_preset)


# ---- the three paths -----------------------------------------------------------------------------


async def fusion_response(
    ex: Exchange, service: FusionService, plugin: FusionPlugin | None, alias_preset: str | None
) -> Any:
    state, caller, chat = ex.state, ex.caller, ex.chat
    spec = fusion_spec(chat, plugin, alias_preset, state.default_preset(), state.presets)
    planned = service.plan(caller, spec, chat.plain_messages())
    run = await service.start(
        caller,
        planned,
        request={**chat.model_dump(mode="json", exclude_none=True), "api": "responses"},
        request_model=ex.body.model,
        background=bool(plugin and plugin.background),
        cache=cache_directive(ex.request.headers),
    )
    include_panel = plugin.include_panel if plugin else True
    builder = ResponseBuilder(
        response_id_for_run(run.run_id),
        planned.plan.mode.answer_model(spec),
        ex.body,
        include_panel=include_panel,
    )
    headers = {"X-Panelfuse-Run-Id": run.run_id, **cache_headers(run.cache)}
    if ex.body.stream:

        async def leave() -> None:
            if not run.done.is_set() and not run.background:
                run.cancel("the client disconnected")

        events = fusion_run_events(run, builder)
        return sse_response(
            frames(events, lambda: ex.remember(builder, run.run_id), leave),
            keepalive=state.keepalive_s,
            headers=headers,
        )
    result = await service.wait(run, until_disconnected(ex.request))
    builder.model = result.model or builder.model
    if result.status != "completed":
        failure = fusion_failure(result, run.run_id)
        failure.extra["response_id"] = builder.id
        builder.open_fusion()
        builder.close_fusion(result)
        builder.fail(failure)
        await ex.remember(builder, run.run_id)
        raise failure
    fusion_result_events(builder, result)
    await ex.remember(builder, run.run_id)
    return JSONResponse(builder.response(), headers=headers)


async def tool_response(
    ex: Exchange, service: FusionService, params: FusionPlugin, own_tools: list[dict[str, Any]]
) -> Any:
    """A plain outer model with the fusion server tool, set up as chat completions sets it up
    (service/tool_requests.py); its items come back as a response."""
    state, caller, chat = ex.state, ex.caller, ex.chat
    builder = ResponseBuilder(new_id("resp"), ex.body.model, ex.body)
    tool = await open_tool_request(
        service,
        caller,
        chat,
        params,
        own_tools,
        admission_id=f"tool_{builder.id}",
        stored_request={"server_tool": True, "outer_model": chat.model, "api": "responses"},
    )
    session, conversation, runs = tool.session, tool.conversation, tool.runs
    events = tool_session_events(
        session.events(conversation),
        builder,
        lambda: runs[-1].result if runs else None,
        session.state.usage_dict,
        session.state.annotations,
        raise_errors=not ex.body.stream,
    )

    if ex.body.stream:
        return sse_response(
            frames(events, lambda: ex.remember(builder, tool.fusion_run_id), tool.settle), keepalive=state.keepalive_s
        )
    try:
        await drain(events, ex.request)
    finally:
        await tool.settle()
    await ex.remember(builder, tool.fusion_run_id)
    return JSONResponse(builder.response())


async def proxy_response(ex: Exchange, service: FusionService) -> Any:
    """A plain model proxied: a chat request to its provider, admitted and billed as the chat proxy is
    (server/proxy.py); the completion comes back as a response."""
    state, caller, chat = ex.state, ex.caller, ex.chat
    provider, route, req = resolve_proxied(state, caller, chat)
    builder = ResponseBuilder(new_id("resp"), ex.body.model, ex.body)
    admission, price = await admit_proxied(service, caller, route, req, f"proxy_{builder.id}")
    # The upstream is asked the way the caller asked (as the chat proxy does): streamed or not.
    upstream = provider.stream(req) if ex.body.stream else provider.complete_events(req)

    def cost() -> float | None:
        return (builder.usage or {}).get("cost")

    if not ex.body.stream:
        try:
            await drain(proxy_events(upstream, builder, price, raise_errors=True), ex.request)
        except ServiceError as exc:
            if exc.status != 499:
                await admission.release(0.0)  # the upstream refused or failed: nothing to charge
            else:
                await admission.release_shielded(None)
            raise
        except BaseException:
            await admission.release_shielded(None)
            raise
        await admission.release(cost())
        await ex.remember(builder)
        return JSONResponse(builder.response())
    stream = await opened_stream(upstream, admission)

    async def settle() -> None:
        await stream.aclose()
        await admission.release_shielded(cost())

    events = proxy_events(stream, builder, price, raise_errors=False)
    return sse_response(frames(events, lambda: ex.remember(builder), settle))


# ---- framing -------------------------------------------------------------------------------------


async def frames(
    events: AsyncGenerator[dict[str, Any], None],
    before_end: Callable[[], Awaitable[None]],
    after: Callable[[], Awaitable[None]],
) -> AsyncIterator[str]:
    """The events as SSE frames (`event:` and `data:` lines). `before_end` runs before the terminal
    event goes out (the response is recorded before the client can continue from it); `after` runs
    however the stream ends (a client that leaves included)."""
    try:
        async for ev in events:
            if ev["type"] in TERMINAL_EVENTS:
                await before_end()
            yield sse(ev, event=ev["type"])
    finally:
        # One carried task: a client that left cancels our every await, and closing the events awaits.
        await carry_through(_close_then(events, after))


async def _close_then(events: AsyncGenerator[dict[str, Any], None], after: Callable[[], Awaitable[None]]) -> None:
    try:
        await events.aclose()
    finally:
        await after()


async def drain(events: AsyncIterator[dict[str, Any]], request: Request) -> None:
    """Run a path to its end without streaming it; a caller that leaves stops it (499)."""

    async def consume() -> None:
        async for _ in events:
            pass

    await unless_client_leaves(consume(), request)
