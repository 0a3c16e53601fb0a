"""A plain model proxied: the request passes through to its provider, admitted and billed like a run.

The caller gets what the upstream answered, as OpenAI shapes it: every choice (`n`) with its own
index, logprobs, annotations and the usage breakdowns; `usage.cost` is the upstream's own when it
reports one, else computed from the price table. Each answered completion is recorded as a
generation (`X-Generation-Id` = the completion id)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse

from panelfuse.pricing import Price, call_cost, messages_tokens, token_cost
from panelfuse.providers.base import ChatRequest, Provider, StreamEvent, ToolCall, Usage
from panelfuse.providers.errors import ProviderError
from panelfuse.providers.resolve import ProviderRoute
from panelfuse.server import shapes
from panelfuse.server.disconnect import unless_client_leaves
from panelfuse.server.errors import ApiError, ServiceError, from_provider_error
from panelfuse.server.sse import DONE, LastFrame, sse, sse_response
from panelfuse.server.state import GatewayState
from panelfuse.service.admission import Admission
from panelfuse.service.caller import Principal, providers_for
from panelfuse.service.carry import carry_through
from panelfuse.service.experiments import Outcome
from panelfuse.service.fusion import FusionService
from panelfuse.service.generations import Generation, record
from panelfuse.service.requests import ChatCompletionRequest, upstream_request

T = TypeVar("T")
PROXY_DEFAULT_MAX_TOKENS = 4096  # the worst case of a proxied call that sets no max_tokens
GENERATION_HEADER = "X-Generation-Id"

# Called once a proxied stream has ended well: its usage, the first choice's finish reason, its cost.
OnStreamDone = Callable[[Usage | None, str | None, float | None], Awaitable[None]]
# Told how a proxied call ended, however it ended (an experiment's record); must not block.
OnOutcome = Callable[[Outcome], None]
# proxy_chunks' form of it: the status and the facts known (cost, error, answer).
OnEnd = Callable[..., None]


async def proxy_completion(
    state: GatewayState,
    service: FusionService,
    principal: Principal,
    body: ChatCompletionRequest,
    request: Request,
    on_outcome: OnOutcome | None = None,
) -> Any:
    started = time.monotonic()
    created_at = datetime.now(UTC)
    provider, route, req = resolve_proxied(state, principal, body)
    n = body.n or 1
    if n > 1 and not provider.supports_n:
        raise ApiError(
            400,
            f"n > 1 is not supported for '{body.model}': its provider ({provider.name}) answers one choice per call",
            param="n",
            code="unsupported_parameter",
        )
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    admission, price = await admit_proxied(service, principal, route, req, f"proxy_{cid}", choices=n)
    headers = {GENERATION_HEADER: cid}

    async def recorded(usage: Usage | None, finish_reason: str | None, cost: float | None) -> None:
        usage = usage or Usage()
        gen = Generation(
            id=cid,
            kind="chat",
            model=body.model,
            key_id=principal.key_id,
            created_at=created_at,
            latency_ms=int((time.monotonic() - started) * 1000),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost=cost,
            finish_reason=finish_reason,
            streamed=body.stream,
        )
        await carry_through(record(state.store, gen))

    def tell(status: Literal["completed", "failed", "cancelled"], **facts: Any) -> None:
        if on_outcome is not None:
            ms = int((time.monotonic() - started) * 1000)
            on_outcome(Outcome(status=status, latency_ms=ms, calls=1, response_id=cid, **facts))

    if not body.stream:
        # The upstream is asked the way the caller asked: a non-streamed call, every choice as it answers.
        try:
            answer = await answered_or_released(_fold_choices(provider.complete_events(req)), admission, request)
        except ServiceError as exc:
            tell("failed", error=exc.message)
            raise
        except BaseException:
            tell("cancelled")
            raise
        cost = call_cost(answer.usage, price)
        await admission.release(cost)
        out = answer.completion(model=body.model, cid=cid, created=created, cost=cost)
        await recorded(answer.usage, answer.finish_reason(), cost)
        tell("completed", cost=cost, answer=answer.text())
        return JSONResponse(out, headers=headers)
    try:
        upstream = await opened_stream(provider.stream(req), admission)
    except ServiceError as exc:
        tell("failed", error=exc.message)
        raise

    return sse_response(
        proxy_chunks(
            upstream,
            body.model,
            cid,
            created,
            admission,
            price,
            n=n,
            on_done=recorded,
            usage_alone=bool((body.stream_options or {}).get("include_usage")),
            on_end=tell if on_outcome is not None else None,
        ),
        headers=headers,
    )


def usage_object(usage: Usage, cost: float | None) -> dict[str, Any]:
    """OpenAI's usage object with OpenRouter's `cost`: the upstream's own, else the computed one."""
    out = usage.to_dict()
    if cost is not None:
        out["cost"] = cost
    return out


def _chunk(
    cid: str,
    model: str,
    created: int,
    *,
    index: int = 0,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A chat.completion.chunk for one choice (`index`), or with empty `choices` when it carries only usage."""
    out = shapes.chunk(cid, model, created, usage=usage)
    if delta is not None or finish_reason is not None:
        out["choices"] = [{"index": index, "delta": delta or {}, "finish_reason": finish_reason, "logprobs": logprobs}]
    return out


@dataclass
class _Choice:
    """One choice of a non-streamed answer, folded from its events."""

    index: int
    parts: list[str] = field(default_factory=list)
    refusal: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def add(self, ev: StreamEvent) -> None:
        if ev.text:
            self.parts.append(ev.text)
        if ev.refusal:
            self.refusal = (self.refusal or "") + ev.refusal
        self.tool_calls.extend(ev.tool_calls)
        if ev.finish_reason:
            self.finish_reason = ev.finish_reason
        if ev.annotations:
            self.annotations.extend(ev.annotations)
        if ev.logprobs:
            merged = self.logprobs if self.logprobs is not None else {}
            for key, value in ev.logprobs.items():
                if isinstance(value, list) and isinstance(merged.get(key), list):
                    merged[key] = [*merged[key], *value]
                elif value is not None or key not in merged:
                    merged[key] = value
            self.logprobs = merged

    def to_openai(self) -> dict[str, Any]:
        text = "".join(self.parts)
        message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": self.refusal}
        if self.tool_calls:
            message["tool_calls"] = [t.to_openai() for t in self.tool_calls]
        if self.annotations:
            message["annotations"] = self.annotations
        return {
            "index": self.index,
            "message": message,
            "finish_reason": self.finish_reason or "stop",
            "logprobs": self.logprobs,
        }


@dataclass
class _Answer:
    choices: dict[int, _Choice] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)

    def finish_reason(self) -> str | None:
        first = self.choices.get(0)
        return (first.finish_reason or "stop") if first is not None else None

    def text(self) -> str:
        first = self.choices.get(0)
        return "".join(first.parts) if first is not None else ""

    def completion(self, *, model: str, cid: str, created: int, cost: float | None) -> dict[str, Any]:
        choices = [self.choices[i].to_openai() for i in sorted(self.choices)] or [_Choice(0).to_openai()]
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": shapes.SYSTEM_FINGERPRINT,
            "choices": choices,
            "usage": usage_object(self.usage, cost),
        }


async def _fold_choices(events: AsyncIterator[StreamEvent]) -> _Answer:
    answer = _Answer()
    async for ev in events:
        if ev.text or ev.refusal or ev.tool_calls or ev.finish_reason or ev.logprobs or ev.annotations:
            answer.choices.setdefault(ev.index, _Choice(ev.index)).add(ev)
        if ev.usage is not None:
            answer.usage = ev.usage
    return answer


async def opened_stream(
    upstream: AsyncIterator[StreamEvent], admission: Admission
) -> AsyncGenerator[StreamEvent, None]:
    """`upstream` with its first event already read, so a failure before any output still gets a real
    HTTP status (the admission released at no cost). Closing the result closes `upstream`."""
    try:
        first = await anext(upstream)
    except StopAsyncIteration:
        first = StreamEvent(finish_reason="stop")
    except ProviderError as exc:
        await admission.release(0.0)
        raise from_provider_error(exc) from exc

    async def chained() -> AsyncGenerator[StreamEvent, None]:
        try:
            yield first
            async for ev in upstream:
                yield ev
        finally:
            aclose = getattr(upstream, "aclose", None)
            if aclose is not None:
                await aclose()

    return chained()


def resolve_proxied(
    state: GatewayState, caller: Principal, chat: ChatCompletionRequest
) -> tuple[Provider, ProviderRoute, ChatRequest]:
    """A plain model's provider (the caller's own key for passthrough), its route (checked against the
    caller's allowlist and model policy) and the request as that provider reads it."""
    try:
        provider, route = providers_for(caller, state.providers).for_model(chat.model)
    except ProviderError as exc:
        raise from_provider_error(exc) from exc
    caller.check_models([route.qualified])
    return provider, route, upstream_request(chat, route.model)


async def answered_or_released(work: Awaitable[T], admission: Admission, request: Request) -> T:
    """A non-streamed proxied call's answer. If the upstream fails, the reservation is released at no
    cost and the error raised in the caller's shape; if the client leaves (or anything else stops it),
    the reservation is settled as held. On success the caller settles it at the real cost."""
    try:
        return await unless_client_leaves(work, request)
    except ProviderError as exc:
        await admission.release(0.0)  # the upstream refused or failed: nothing to charge
        raise from_provider_error(exc) from exc
    except BaseException:
        await admission.release_shielded(None)
        raise


async def admit_proxied(
    service: FusionService,
    caller: Principal,
    route: ProviderRoute,
    req: ChatRequest,
    admission_id: str,
    *,
    choices: int = 1,
) -> tuple[Admission, Price | None]:
    """Admit one proxied call (rate limits, then its worst case reserved against the budget: the prompt
    and `max_tokens` per choice at the model's price); returns the admission and that price."""
    price = service.gateway.prices.lookup(route.qualified)
    output = (req.max_tokens or PROXY_DEFAULT_MAX_TOKENS) * choices
    worst = token_cost(messages_tokens(req.messages), output, price) if price else 0.0
    admission = await service.admit(caller, admission_id, worst, [] if price else [route.qualified])
    return admission, price


async def close_and_settle(
    upstream: AsyncGenerator[StreamEvent, None], admission: Admission, cost: float | None
) -> None:
    try:
        await upstream.aclose()
    finally:
        await admission.release(cost)


async def proxy_chunks(
    upstream: AsyncGenerator[StreamEvent, None],
    model: str,
    cid: str,
    created: int,
    admission: Admission,
    price: Price | None,
    *,
    n: int = 1,
    on_done: OnStreamDone | None = None,
    usage_alone: bool = False,
    on_end: OnEnd | None = None,
) -> AsyncIterator[str]:
    """The upstream's stream as chunks. Usage comes last: in OpenAI's usage-only chunk (empty
    `choices`) when the caller asked for it with `stream_options.include_usage`, else, as OpenRouter
    sends it, on a last chunk that still has `choices[0]` (an empty delta), so a plain loop over
    `chunk.choices[0]` never breaks."""
    cost: float | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    completed = failed = False
    text: list[str] = []  # the first choice's answer, kept only for `on_end`
    # Frames of events at hand (the role, then the events of one network read) go out in one write.
    frames: list[str] = [
        sse(_chunk(cid, model, created, index=i, delta={"role": "assistant", "content": ""})) for i in range(n)
    ]

    try:
        # Inside the try: a client gone before the first chunk still gets the upstream closed and the
        # admission settled.
        async for ev in upstream:
            i = ev.index
            if ev.text or ev.refusal or ev.logprobs or ev.annotations:
                delta: dict[str, Any] = {}
                if ev.text:
                    delta["content"] = ev.text
                    if on_end is not None and i == 0:
                        text.append(ev.text)
                if ev.refusal:
                    delta["refusal"] = ev.refusal
                if ev.annotations:
                    delta["annotations"] = ev.annotations
                frames.append(sse(_chunk(cid, model, created, index=i, delta=delta, logprobs=ev.logprobs)))
            if ev.tool_calls:
                calls = [{"index": k, **t.to_openai()} for k, t in enumerate(ev.tool_calls)]
                frames.append(sse(_chunk(cid, model, created, index=i, delta={"tool_calls": calls})))
            if ev.finish_reason:
                if i == 0:
                    finish_reason = ev.finish_reason
                frames.append(sse(_chunk(cid, model, created, index=i, delta={}, finish_reason=ev.finish_reason)))
            if ev.usage is not None:
                usage = ev.usage
                cost = call_cost(ev.usage, price)
                if usage_alone:
                    frames.append(sse(_chunk(cid, model, created, usage=usage_object(ev.usage, cost))))
                else:
                    frames.append(sse(_chunk(cid, model, created, delta={}, usage=usage_object(ev.usage, cost))))
            if frames and not ev.more:
                yield "".join(frames)
                frames = []
        completed = True
    except ProviderError as exc:
        failed = True
        err = from_provider_error(exc)
        if on_end is not None:
            on_end("failed", error=err.message)
        yield LastFrame("".join([*frames, sse(shapes.error_chunk(err, cid, model, created))]))
        return  # OpenRouter ends the stream with its error chunk: no [DONE]
    finally:
        if on_end is not None and not completed and not failed:
            on_end("cancelled")
        # One carried task: a client that left cancels every await of ours, and closing the upstream
        # may await (its connection), which must not cut the settling short.
        await carry_through(close_and_settle(upstream, admission, cost))
    if completed and on_done is not None:
        await on_done(usage, finish_reason, cost)
    if completed and on_end is not None:
        on_end("completed", cost=cost, answer="".join(text))
    # What is still held (an upstream that ended without a last read) goes with [DONE].
    yield LastFrame("".join([*frames, DONE]))
