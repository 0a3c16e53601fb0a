"""POST /v1/messages (and /anthropic/v1/messages): Anthropic's Messages API, with fusion.

A request is read as the chat-completions request it amounts to (`service/messages_requests.py`) and
takes the same paths: a fusion alias runs a fusion through the fusion service; any other configured
model is proxied to its provider (natively to an Anthropic upstream, translated for OpenAI-compatible
ones), admitted and billed like the chat proxy. Answers are Anthropic `message` objects or their
event streams (`service/messages_output.py`); errors are Anthropic's shape (`server/errors.py`)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from panelfuse.pricing import Price, call_cost
from panelfuse.providers.anthropic import AnthropicProvider
from panelfuse.providers.base import StreamEvent, Usage, fold_stream
from panelfuse.providers.errors import ProviderError
from panelfuse.server import shapes
from panelfuse.server.deps import Caller, Service, State
from panelfuse.server.disconnect import until_disconnected
from panelfuse.server.errors import ApiError, from_provider_error
from panelfuse.server.proxy import admit_proxied, answered_or_released, close_and_settle, opened_stream, resolve_proxied
from panelfuse.server.sse import ready_batches, sse, sse_response
from panelfuse.service.admission import Admission
from panelfuse.service.cache import cache_directive, cache_headers
from panelfuse.service.carry import carry_through
from panelfuse.service.messages_output import MessageEvents, error_body, message, new_message_id
from panelfuse.service.messages_requests import MessagesRequest
from panelfuse.service.requests import ChatCompletionRequest
from panelfuse.service.routing import Route, route_chat
from panelfuse.service.runs import ActiveRun
from panelfuse.service.server_tool import fusion_depth
from panelfuse.service.specs import fusion_spec, validation_error

router = APIRouter()
PING = sse({"type": "ping"}, event="ping")  # Anthropic's keep-alive while the panel works


@router.post("/v1/messages", summary="Anthropic-compatible Messages API, with fusion")
@router.post("/anthropic/v1/messages", include_in_schema=False)
async def create_message(
    body: MessagesRequest, request: Request, state: State, service: Service, caller: Caller
) -> Any:
    try:
        chat = ChatCompletionRequest.model_validate(body.chat_body())
    except ValidationError as exc:
        raise validation_error(exc, "body") from exc
    at_depth = bool(fusion_depth(request.headers))
    route = route_chat(chat, state.providers, state.presets, state.default_preset(), at_fusion_depth=at_depth)
    if route.path == "server_tool":
        raise ApiError(
            400,
            "the fusion server tool is offered on chat completions and the Responses API; "
            "on the Messages API name a fusion model (e.g. panelfuse/fusion) instead",
            param="tools",
            code="unsupported_parameter",
        )
    if route.path == "proxy":
        return await proxy_message(body, route.chat, request, state, service, caller)
    return await fusion_message(body, route, request, state, service, caller)


# ---- a fusion ----------------------------------------------------------------------------------------


async def fusion_message(
    body: MessagesRequest, route: Route, request: Request, state: State, service: Service, caller: Caller
) -> Any:
    chat, plugin = route.chat, route.plugin
    spec = fusion_spec(chat, plugin, route.alias_preset, state.default_preset(), state.presets)
    planned = service.plan(caller, spec, chat.plain_messages())
    run = await service.start(
        caller,
        planned,
        request={**chat.model_dump(mode="json", exclude_none=True), "api": "messages"},
        request_model=body.model,
        background=bool(plugin and plugin.background),
        live=body.stream,
        cache=cache_directive(request.headers),
    )
    include_panel = plugin.include_panel if plugin else True
    mid = f"msg_{run.run_id.removeprefix('run_')}"
    headers = {"X-Panelfuse-Run-Id": run.run_id, **cache_headers(run.cache)}
    if body.stream:
        events = MessageEvents(mid, planned.plan.mode.answer_model(spec))
        frames = fusion_frames(run, events, include_panel, progress=body.fusion_events)
        return sse_response(frames, keepalive=state.keepalive_s, keepalive_frame=PING, headers=headers)
    result = await service.wait(run, until_disconnected(request))
    if result.status != "completed":
        raise shapes.fusion_error(result)
    answer = message(
        mid,
        result.model,
        text=result.content,
        finish_reason=result.finish_reason,
        usage=result.usage,
        extra={"fusion": shapes.fusion_object(result, include_panel)},
    )
    return JSONResponse(answer, headers=headers)


async def fusion_frames(
    run: ActiveRun, events: MessageEvents, include_panel: bool, *, progress: bool
) -> AsyncIterator[str]:
    """The run as Anthropic's stream: the answer's text as one text block; with `progress`, the run's
    other events as `fusion` events (the extension); the fusion object on the last one. A run that
    fails or is cancelled ends with an `error` event. A client that leaves cancels the run."""
    batches = ready_batches(run.follow())
    try:
        yield render(events.start())  # inside the try: a client gone before it still cancels the run
        async for batch in batches:
            out: list[dict[str, Any]] = []
            for ev in shapes.coalesce(batch):
                if ev.type == "final.delta":
                    out += events.text(ev.data["text"])
                elif ev.type == "run.completed":
                    result = run.result
                    if progress:
                        out.append(
                            {"type": "fusion", "event": ev.type, "fusion": shapes.fusion_object(result, include_panel)}
                        )
                    out += events.finish(result.finish_reason, result.usage)
                    yield render(out)
                    return
                elif ev.type in ("run.failed", "run.cancelled"):
                    out.append(error_body(shapes.fusion_error(run.result, cancelled=ev.type == "run.cancelled")))
                    yield render(out)
                    return
                elif progress:
                    data = ev.data if include_panel or ev.type != "panel.completed" else _without_content(ev.data)
                    out.append({"type": "fusion", "event": ev.type, "data": data})
            if out:
                yield render(out)
    finally:
        if not run.done.is_set() and not run.background:
            run.cancel("the client disconnected")
        await batches.aclose()


def _without_content(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "content"}


def render(events: list[dict[str, Any]]) -> str:
    """Events as SSE frames, `event:` named by their type, in one write."""
    return "".join(sse(e, event=e["type"]) for e in events)


# ---- a plain model, proxied ------------------------------------------------------------------------------


async def proxy_message(
    body: MessagesRequest, chat: ChatCompletionRequest, request: Request, state: State, service: Service, caller: Caller
) -> Any:
    provider, route, req = resolve_proxied(state, caller, chat)
    req.extra_body.update(body.native_extra(anthropic_upstream=isinstance(provider, AnthropicProvider)))
    mid = new_message_id()
    admission, price = await admit_proxied(service, caller, route, req, f"proxy_{mid}")
    if body.stream:
        upstream = await opened_stream(provider.stream(req), admission)
        return sse_response(proxy_frames(upstream, MessageEvents(mid, body.model), admission, price))
    started = time.monotonic()
    folded = fold_stream(body.model, provider.complete_events(req), raise_refusal=False)
    answer = await answered_or_released(folded, admission, request)
    cost = call_cost(answer.usage, price)
    await admission.release(cost)
    out = message(
        mid,
        body.model,
        text=answer.text,
        tool_calls=answer.tool_calls,
        finish_reason=answer.finish_reason,
        usage=answer.usage,
        extra={"cost": cost, "latency_ms": int((time.monotonic() - started) * 1000)},
    )
    return JSONResponse(out)


async def proxy_frames(
    upstream: AsyncGenerator[StreamEvent, None], events: MessageEvents, admission: Admission, price: Price | None
) -> AsyncIterator[str]:
    """A provider's stream as Anthropic's: text deltas, each tool call a block, then the stop reason
    and usage; an upstream failure midway ends it with an `error` event."""
    finish: str | None = None
    usage: Usage | None = None
    try:
        yield render(events.start())
        async for ev in upstream:
            if ev.index != 0:
                continue  # Anthropic's messages have one choice
            out = events.text(ev.text)
            for call in ev.tool_calls:
                out += events.tool_call(call)
            finish = ev.finish_reason or finish
            usage = ev.usage or usage
            if out:
                yield render(out)
        yield render(events.finish(finish, usage))
    except ProviderError as exc:
        yield render([error_body(from_provider_error(exc))])
    finally:
        # One carried task: a client that left cancels our every await, and closing the upstream awaits.
        await carry_through(close_and_settle(upstream, admission, call_cost(usage, price) if usage else None))
