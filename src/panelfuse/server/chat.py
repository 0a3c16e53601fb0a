"""POST /v1/chat/completions: the fusion alias/plugin path and the proxy path."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from panelfuse.pipeline.events import Event
from panelfuse.pipeline.run import Fusion
from panelfuse.pricing import Price, call_cost, messages_tokens, token_cost
from panelfuse.providers.base import ChatRequest, Completion, StreamEvent, fold_stream
from panelfuse.providers.errors import ProviderError
from panelfuse.providers.registry import Providers
from panelfuse.providers.resolve import FusionRoute, ProviderRoute, UnknownModelError
from panelfuse.server import shapes
from panelfuse.server.access import Principal, current_principal, providers_for
from panelfuse.server.admission import Admission, admit
from panelfuse.server.errors import ApiError, from_provider_error
from panelfuse.server.fusion_tool import (
    FUSION_FUNCTION_DEF,
    FusionToolSession,
    completion_response,
    fusion_depth,
    outer_tool_choice,
    outer_worst_case,
    split_tools,
    with_depth_header,
)
from panelfuse.server.plugin import spec_from_request
from panelfuse.server.runs import ActiveRun
from panelfuse.server.schemas import ChatCompletionRequest, FusionPlugin
from panelfuse.server.state import GatewayState
from panelfuse.spec import FusionSpec

router = APIRouter()


def validation_api_error(exc: ValidationError, prefix: str) -> ApiError:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    param = f"{prefix}.{where}" if where else prefix
    return ApiError(400, f"{param}: {first.get('msg')}", param=param, code="invalid_value")


def answer_model_hint(spec: FusionSpec) -> str:
    """The model expected to write the answer, for chunks sent before it is known for sure."""
    if spec.mode == "single":
        return spec.members[0].model
    if spec.mode in ("judge-writes", "best-of"):
        return spec.judge.model
    return spec.synthesizer_model


@router.post("/v1/chat/completions", summary="OpenAI-compatible chat completions, with fusion")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, principal: Annotated[Principal, Depends(current_principal)]
) -> Any:
    state: GatewayState = request.app.state.gateway
    providers = providers_for(principal, state.providers)
    try:
        plugin = body.fusion_plugin()
    except ValidationError as exc:
        raise validation_api_error(exc, "plugins[0]") from exc
    tool_params, own_tools = split_tools(body.tools)
    try:
        route = providers.route(body.model, list(state.presets))
    except UnknownModelError as exc:
        raise ApiError(404, str(exc), param="model", code="model_not_found") from exc
    wants_fusion = isinstance(route, FusionRoute) or tool_params is not None or (plugin is not None and plugin.enabled)
    if wants_fusion and fusion_depth(request.headers) > 0:
        # This request was made on behalf of a fusion: a fusion may never start another one.
        raise ApiError(
            400, "a fusion cannot call a fusion (the request carries a fusion depth header)", code="fusion_recursion"
        )
    if tool_params is not None:
        if isinstance(route, FusionRoute):
            raise ApiError(
                400,
                "the fusion server tool goes on a plain model, not on a fusion model",
                param="tools",
                code="invalid_value",
            )
        return await server_tool_completion(state, providers, principal, body, tool_params, own_tools, request)
    if isinstance(route, FusionRoute):
        return await fusion_completion(state, providers, principal, body, plugin, route.preset, request)
    if plugin is not None and plugin.enabled:
        raise ApiError(
            400,
            f"the fusion plugin needs a fusion model (panelfuse/fusion); '{body.model}' is a plain model",
            param="plugins",
            code="fusion_plugin_on_plain_model",
        )
    return await proxy_completion(state, providers, principal, body, request)


def build_fusion_spec(
    state: GatewayState, body: ChatCompletionRequest, plugin: FusionPlugin | None, alias_preset: str | None
) -> FusionSpec:
    if body.n is not None and body.n > 1:
        raise ApiError(400, "n > 1 is not supported on a fusion model", param="n", code="unsupported_parameter")
    if body.tools:
        raise ApiError(
            400,
            "client function tools are not supported on a fusion model; give them to a plain "
            "model that calls the fusion server tool",
            param="tools",
            code="unsupported_parameter",
        )
    try:
        spec = spec_from_request(body, plugin, alias_preset, state.default_preset(), state.presets)
    except KeyError as exc:
        raise ApiError(400, str(exc.args[0]), param="plugins[0].preset", code="unknown_preset") from exc
    except ValidationError as exc:
        raise validation_api_error(exc, "fusion") from exc
    if plugin is not None and not plugin.enabled:
        spec = spec.model_copy(update={"mode": "single"})
    return spec


def spec_model_ids(spec: FusionSpec, providers: Providers, *, panel: bool = True) -> list[str]:
    """Every qualified model id a spec may call (members unless `panel` is off, judge, synthesizer,
    all their fallbacks): what a key's allowlist is checked against."""
    ids = [m for member in spec.members for m in (member.model, *member.fallbacks)] if panel else []
    if spec.mode != "single":
        ids += [spec.judge.model, *spec.judge.fallbacks]
    if spec.mode == "synthesize":
        ids += [spec.synthesizer_model, *spec.synthesizer_fallbacks]
    out = []
    for model in ids:
        route = providers.route(model)
        out.append(route.qualified if isinstance(route, ProviderRoute) else model)
    return out


async def fusion_completion(
    state: GatewayState,
    providers: Providers,
    principal: Principal,
    body: ChatCompletionRequest,
    plugin: FusionPlugin | None,
    alias_preset: str | None,
    request: Request,
) -> Any:
    spec = build_fusion_spec(state, body, plugin, alias_preset)
    principal.check_models(spec_model_ids(spec, providers))
    fusion = Fusion(spec, providers=with_depth_header(providers), prices=state.prices)
    messages = body.plain_messages()
    try:
        est = fusion.estimate(messages)
    except ProviderError as exc:
        raise ApiError(400, f"cannot plan the fusion: {exc}", code="invalid_model") from exc
    if spec.max_cost is not None and (est.unpriced or est.total > spec.max_cost):
        why = (
            f"no price known for {', '.join(est.unpriced)}"
            if est.unpriced
            else f"the worst-case estimate ${est.total:.6f} exceeds max_cost ${spec.max_cost:g}"
        )
        raise ApiError(
            400, f"refused: {why}", param="plugins[0].max_cost", code="max_cost_exceeded", extra={"estimate": est.total}
        )
    background = bool(plugin and plugin.background)
    include_panel = plugin.include_panel if plugin else True
    run_id = f"run_{uuid.uuid4().hex[:24]}"
    admission = await admit(state, principal, run_id, est.total, est.unpriced)
    try:
        run = await state.manager.start(
            fusion,
            messages,
            run_id=run_id,
            request=body.model_dump(mode="json"),
            request_model=body.model,
            background=background,
            key_id=principal.key_id,
            on_finish=admission.release_result,
        )
    except BaseException:
        await admission.release(0.0)
        raise
    if body.stream:
        return StreamingResponse(
            stream_fusion(run, spec, include_panel, state.keepalive_s),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Panelfuse-Run-Id": run.run_id},
        )
    await wait_or_disconnect(request, run)
    result = run.result
    assert result is not None
    if result.status != "completed":
        status = 499 if result.status == "cancelled" else 502
        raise ApiError(
            status,
            f"fusion failed: {result.error}",
            code="fusion_failed",
            extra={"run_id": result.run_id, "failed_models": result.failed_models},
        )
    return JSONResponse(
        shapes.chat_completion(result, include_panel=include_panel), headers={"X-Panelfuse-Run-Id": result.run_id}
    )


async def wait_or_disconnect(request: Request, run: ActiveRun) -> None:
    """Wait for the run; a client that goes away cancels it unless it runs in the background.

    When the server cancels this request (graceful shutdown ran out of time), the run is stopped and
    recorded, and the caller gets a 503 rather than a bare connection drop.
    """
    try:
        while not run.done.is_set():
            try:
                await asyncio.wait_for(run.done.wait(), timeout=0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    if not run.background:
                        run.cancel("the client disconnected")
                        await run.done.wait()
                    return
    except asyncio.CancelledError:
        if not run.background:
            run.cancel("the gateway shut down before the run finished")
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(run.done.wait()), timeout=10)
        raise ApiError(
            503,
            "the gateway is shutting down; the run was stopped and recorded",
            code="shutting_down",
            extra={"run_id": run.run_id},
        ) from None


async def stream_fusion(run: ActiveRun, spec: FusionSpec, include_panel: bool, keepalive: float) -> AsyncIterator[str]:
    cid = shapes.completion_id(run.run_id)
    created = int(time.time())
    model = answer_model_hint(spec)
    role_sent = False
    events = run.follow().__aiter__()
    pending: asyncio.Task[Any] = asyncio.ensure_future(anext(events))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=keepalive)
            if not done:
                yield shapes.KEEPALIVE  # the panel is still working: keep proxies from timing out
                continue
            try:
                ev = pending.result()
            except StopAsyncIteration:
                break
            pending = asyncio.ensure_future(anext(events))
            if ev.type == "final.delta":
                delta: dict[str, Any] = {"content": ev.data["text"]}
                if not role_sent:
                    delta["role"] = "assistant"
                    role_sent = True
                yield shapes.sse(shapes.chunk(cid, model, created, delta=delta))
                continue
            if ev.type == "panel.completed" and not include_panel:
                ev_data = {k: v for k, v in ev.data.items() if k != "content"}
                ev = type(ev)(ev.run_id, ev.seq, ev.type, ev_data, ev.stage, ev.ts)
            yield shapes.sse(shapes.event_chunk(ev, cid, model, created))
            if ev.type == "run.completed":
                result = run.result
                assert result is not None
                yield shapes.sse(shapes.chunk(cid, result.model, created, delta={}, finish_reason="stop"))
                yield shapes.sse(
                    shapes.chunk(
                        cid,
                        result.model,
                        created,
                        usage=result.usage_dict(),
                        fusion=shapes.fusion_object(result, include_panel),
                    )
                )
                yield shapes.sse("[DONE]")
                return
            if ev.type in ("run.failed", "run.cancelled"):
                message = ev.data.get("error") or ev.data.get("reason") or "the fusion failed"
                extra = {"run_id": run.run_id, "failed_models": ev.data.get("failed_models", [])}
                yield shapes.sse(shapes.error_chunk(f"fusion failed: {message}", 502, extra))
                result = run.result
                if result is not None:
                    yield shapes.sse(shapes.chunk(cid, model, created, usage=result.usage_dict()))
                yield shapes.sse("[DONE]")
                return
    finally:
        pending.cancel()
        if not run.done.is_set() and not run.background:
            run.cancel("the client disconnected")


def proxy_request(body: ChatCompletionRequest, model: str) -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=body.plain_messages(),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stop_list(),
        tools=body.tools,
        tool_choice=body.tool_choice,
        response_format=body.response_format,
        extra_body=body.extra_body(),
    )


PROXY_DEFAULT_MAX_TOKENS = 4096  # the worst case of a proxied call that sets no max_tokens


async def proxy_completion(
    state: GatewayState, providers: Providers, principal: Principal, body: ChatCompletionRequest, request: Request
) -> Any:
    try:
        provider, route = providers.for_model(body.model)
    except ProviderError as exc:
        raise from_provider_error(exc) from exc
    principal.check_models([route.qualified])
    req = proxy_request(body, route.model)
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    price = state.prices.lookup(route.qualified)
    worst = (
        token_cost(messages_tokens(req.messages), req.max_tokens or PROXY_DEFAULT_MAX_TOKENS, price) if price else 0.0
    )
    admission = await admit(state, principal, f"proxy_{cid}", worst, [] if price else [route.qualified])
    upstream = provider.stream(req)
    if not body.stream:
        task = asyncio.ensure_future(fold_stream(route.model, upstream, raise_refusal=False))
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.5)
                if not task.done() and await request.is_disconnected():
                    task.cancel()  # the caller is gone: stop the upstream call too
                    raise ApiError(499, "the client disconnected", code="client_disconnected")
            completion = task.result()
        except ProviderError as exc:
            await admission.release(0.0)
            raise from_provider_error(exc) from exc
        except BaseException:
            task.cancel()
            await admission.release(None)
            raise
        await admission.release(call_cost(completion.usage, price))
        return shapes.proxied_completion(completion, model=body.model, cid=cid, created=created)
    # Read the first event before answering, so an upstream failure still gets a real HTTP status.
    try:
        first = await anext(upstream)
    except StopAsyncIteration:
        first = StreamEvent(finish_reason="stop")
    except ProviderError as exc:
        await admission.release(0.0)
        raise from_provider_error(exc) from exc
    return StreamingResponse(
        stream_proxy(first, upstream, body.model, cid, created, admission, price), media_type="text/event-stream"
    )


async def stream_proxy(
    first: StreamEvent,
    upstream: AsyncIterator[StreamEvent],
    model: str,
    cid: str,
    created: int,
    admission: Admission,
    price: Price | None,
) -> AsyncIterator[str]:
    cost: float | None = None
    yield shapes.sse(shapes.chunk(cid, model, created, delta={"role": "assistant", "content": ""}))

    async def all_events() -> AsyncIterator[StreamEvent]:
        yield first
        async for ev in upstream:
            yield ev

    try:
        async for ev in all_events():
            if ev.text or ev.refusal:
                delta = {"content": ev.text} if ev.text else {"refusal": ev.refusal}
                yield shapes.sse(shapes.chunk(cid, model, created, delta=delta))
            if ev.tool_calls:
                calls = [{"index": i, **t.to_openai()} for i, t in enumerate(ev.tool_calls)]
                yield shapes.sse(shapes.chunk(cid, model, created, delta={"tool_calls": calls}))
            if ev.finish_reason:
                yield shapes.sse(shapes.chunk(cid, model, created, delta={}, finish_reason=ev.finish_reason))
            if ev.usage is not None:
                cost = call_cost(ev.usage, price)
                yield shapes.sse(shapes.chunk(cid, model, created, usage=ev.usage.to_dict()))
    except ProviderError as exc:
        err = from_provider_error(exc)
        yield shapes.sse(shapes.error_chunk(err.message, err.status))
    finally:
        aclose = getattr(upstream, "aclose", None)
        if aclose is not None:
            await aclose()
        await admission.release(cost)
    yield shapes.sse("[DONE]")


async def server_tool_completion(
    state: GatewayState,
    providers: Providers,
    principal: Principal,
    body: ChatCompletionRequest,
    params: FusionPlugin,
    own_tools: list[dict[str, Any]],
    request: Request,
) -> Any:
    """A plain outer model with the fusion server tool (and possibly the caller's own tools)."""
    try:
        provider, route = providers.for_model(body.model)
    except ProviderError as exc:
        raise from_provider_error(exc) from exc
    spec = build_fusion_spec(state, body.model_copy(update={"tools": None, "n": None}), params, None)
    spec = spec.model_copy(update={"mode": "analyze"})
    principal.check_models([route.qualified, *spec_model_ids(spec, providers)])
    base = replace(
        proxy_request(body, route.model),
        tools=[*own_tools, FUSION_FUNCTION_DEF],
        tool_choice=outer_tool_choice(body.tool_choice),
    )
    fusion_providers = with_depth_header(providers)
    conversation = body.plain_messages()
    est = Fusion(spec, providers=fusion_providers, prices=state.prices).estimate(conversation)
    outer, unpriced = outer_worst_case(state.prices, route.qualified, base)
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    admission = await admit(state, principal, f"tool_{cid}", est.total + outer, est.unpriced + unpriced)

    async def run_fusion(messages: list[dict[str, Any]]) -> AsyncIterator[Any]:
        fusion = Fusion(spec, providers=fusion_providers, prices=state.prices)
        run = await state.manager.start(
            fusion,
            messages,
            run_id=f"run_{uuid.uuid4().hex[:24]}",
            request={"messages": messages, "server_tool": True, "outer_model": body.model},
            request_model=body.model,
            background=False,
            key_id=principal.key_id,
        )
        try:
            async for ev in run.follow():
                yield ev
            await run.done.wait()
        finally:
            run.cancel("the request ended")  # a no-op once done; stops the fusion if the caller left
        yield run.result

    session = FusionToolSession(provider, route, base, state.prices, run_fusion)
    if body.stream:
        return StreamingResponse(
            stream_server_tool(session, conversation, body.model, cid, created, admission),
            media_type="text/event-stream",
        )
    final = None
    try:
        async for item in session.events(conversation):
            if isinstance(item, Completion):
                final = item
    except ProviderError as exc:
        raise from_provider_error(exc) from exc
    finally:
        await admission.release(session.state.usage_dict()["cost"])
    assert final is not None
    return completion_response(body.model, final, session.state, cid, created)


async def stream_server_tool(
    session: FusionToolSession,
    conversation: list[dict[str, Any]],
    model: str,
    cid: str,
    created: int,
    admission: Admission,
) -> AsyncIterator[str]:
    yield shapes.sse(shapes.chunk(cid, model, created, delta={"role": "assistant", "content": ""}))
    try:
        async for item in session.events(conversation):
            if isinstance(item, StreamEvent):
                yield shapes.sse(shapes.chunk(cid, model, created, delta={"content": item.text}))
            elif isinstance(item, Event):
                yield shapes.sse(shapes.event_chunk(item, cid, model, created))
            else:
                if item.tool_calls:
                    calls = [{"index": i, **t.to_openai()} for i, t in enumerate(item.tool_calls)]
                    yield shapes.sse(shapes.chunk(cid, model, created, delta={"tool_calls": calls}))
                finish = "tool_calls" if item.tool_calls else (item.finish_reason or "stop")
                yield shapes.sse(shapes.chunk(cid, model, created, delta={}, finish_reason=finish))
                result = session.state.fusion_result
                yield shapes.sse(
                    shapes.chunk(
                        cid,
                        model,
                        created,
                        usage=session.state.usage_dict(),
                        fusion=shapes.fusion_object(result) if result else None,
                    )
                )
    except (ProviderError, ApiError) as exc:
        err = from_provider_error(exc) if isinstance(exc, ProviderError) else exc
        yield shapes.sse(shapes.error_chunk(err.message, err.status))
    finally:
        await admission.release(session.state.usage_dict()["cost"])
    yield shapes.sse("[DONE]")
