"""A plain model proxied: the request passes through to its provider, admitted and billed like a run."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from panelfuse.pricing import Price, call_cost, messages_tokens, token_cost
from panelfuse.providers.base import ChatRequest, StreamEvent, fold_stream
from panelfuse.providers.errors import ProviderError
from panelfuse.server import shapes
from panelfuse.server.errors import ApiError, from_provider_error
from panelfuse.server.sse import DONE, sse, sse_response
from panelfuse.server.state import GatewayState
from panelfuse.service.admission import Admission
from panelfuse.service.caller import Principal, providers_for
from panelfuse.service.fusion import FusionService
from panelfuse.service.requests import ChatCompletionRequest

PROXY_DEFAULT_MAX_TOKENS = 4096  # the worst case of a proxied call that sets no max_tokens


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


async def proxy_completion(
    state: GatewayState, service: FusionService, principal: Principal, body: ChatCompletionRequest, request: Request
) -> Any:
    try:
        provider, route = providers_for(principal, state.providers).for_model(body.model)
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
    admission = await service.admit(principal, f"proxy_{cid}", worst, [] if price else [route.qualified])
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
            await admission.release_shielded(None)
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
    return sse_response(proxy_chunks(first, upstream, body.model, cid, created, admission, price))


async def proxy_chunks(
    first: StreamEvent,
    upstream: AsyncIterator[StreamEvent],
    model: str,
    cid: str,
    created: int,
    admission: Admission,
    price: Price | None,
) -> AsyncIterator[str]:
    cost: float | None = None
    yield sse(shapes.chunk(cid, model, created, delta={"role": "assistant", "content": ""}))

    async def all_events() -> AsyncIterator[StreamEvent]:
        yield first
        async for ev in upstream:
            yield ev

    try:
        async for ev in all_events():
            if ev.text or ev.refusal:
                delta = {"content": ev.text} if ev.text else {"refusal": ev.refusal}
                yield sse(shapes.chunk(cid, model, created, delta=delta))
            if ev.tool_calls:
                calls = [{"index": i, **t.to_openai()} for i, t in enumerate(ev.tool_calls)]
                yield sse(shapes.chunk(cid, model, created, delta={"tool_calls": calls}))
            if ev.finish_reason:
                yield sse(shapes.chunk(cid, model, created, delta={}, finish_reason=ev.finish_reason))
            if ev.usage is not None:
                cost = call_cost(ev.usage, price)
                yield sse(shapes.chunk(cid, model, created, usage=ev.usage.to_dict()))
    except ProviderError as exc:
        yield sse(shapes.error_chunk(from_provider_error(exc), cid, model, created))
        return  # OpenRouter ends the stream with its error chunk: no [DONE]
    finally:
        aclose = getattr(upstream, "aclose", None)
        if aclose is not None:
            await aclose()
        await admission.release_shielded(cost)
    yield DONE
