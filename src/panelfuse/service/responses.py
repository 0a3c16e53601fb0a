"""The Responses API's drivers: what each path produces (a fusion run's events and result, the
server-tool session's items, a proxied stream) fed to a `ResponseBuilder`; the route frames what
they yield. Nothing here knows HTTP. The translation itself: `responses_input` (in) and
`responses_output` (out)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from panelfuse.pipeline.events import TERMINAL, Event
from panelfuse.pipeline.result import FusionResult
from panelfuse.pricing import Price, call_cost
from panelfuse.providers.base import Completion, StreamEvent, Usage
from panelfuse.providers.errors import ProviderError
from panelfuse.service.errors import ServiceError, from_provider_error
from panelfuse.service.responses_output import ResponseBuilder, output_annotations, usage_object
from panelfuse.service.runs import ActiveRun
from panelfuse.service.server_tool import failure_reason

# ---- drivers: what each path produces → builder events ---------------------------------------------------


def fusion_failure(result: FusionResult, run_id: str, message: str | None = None) -> ServiceError:
    """A fusion that did not complete, as chat completions reports it (502; 499 when cancelled)."""
    return ServiceError(
        499 if result.status == "cancelled" else 502,
        f"fusion failed: {message or result.error}",
        code="fusion_failed",
        extra={
            "run_id": run_id,
            "failed_models": [f.to_dict() for f in result.failed_models],
            "failure_reason": failure_reason(result),
        },
    )


def fusion_result_events(builder: ResponseBuilder, result: FusionResult) -> list[dict[str, Any]]:
    """A finished, completed fusion as a whole response (the non-streaming alias)."""
    events = [*builder.open_fusion(), *builder.close_fusion(result), *builder.text(result.content)]
    notes = output_annotations(result.annotations)
    return [*events, *builder.complete(usage_object(result.usage_dict()), result.finish_reason, notes)]


async def fusion_run_events(run: ActiveRun, builder: ResponseBuilder) -> AsyncGenerator[dict[str, Any], None]:
    """A fusion alias's live run as Responses events: the fusion call's progress in the fusion item,
    closed when the answer starts, then the answer as `output_text` deltas."""
    for e in [*builder.start(), *builder.open_fusion()]:
        yield e
    notes: list[dict[str, Any]] = []
    async for ev in run.follow():
        kind, result = ev.type, run.result
        events: list[dict[str, Any]] = []
        if kind in ("final.delta", "final.completed", "run.completed"):
            events += builder.close_fusion(result)
        if kind == "final.delta":
            events += builder.text(ev.data["text"])
        elif kind == "final.completed":
            if not builder.output_text:
                events += builder.text(ev.data["content"])
            notes = output_annotations(ev.data.get("annotations"))
        elif kind == "run.completed":
            builder.model = result.model or builder.model
            events += builder.complete(usage_object(result.usage_dict()), result.finish_reason, notes)
        elif kind in ("run.failed", "run.cancelled"):
            message = ev.data.get("error") or ev.data.get("reason") or "the fusion failed"
            events += builder.close_fusion(result, failed=True, error=message)
            events += builder.fail(fusion_failure(result, run.run_id, message), usage_object(result.usage_dict()))
        else:
            events += builder.fusion_event(ev)
        for e in events:
            yield e
        if kind in TERMINAL:
            return


async def tool_session_events(
    items: AsyncIterator[StreamEvent | Event | Completion],
    builder: ResponseBuilder,
    fusion_result: Callable[[], FusionResult | None],
    usage: Callable[[], dict[str, Any]],
    annotations: Callable[[str], list[dict[str, Any]]],
    *,
    raise_errors: bool,
) -> AsyncGenerator[dict[str, Any], None]:
    """The server-tool session (outer model + one fusion) as Responses events: the outer model's text
    as a message (the fusion's sources as its annotations), the fusion as its item, and the caller's
    own tool calls as `function_call` items.
    With `raise_errors` a failure raises (a non-streaming answer gets its HTTP status); otherwise it
    ends the stream with `response.failed`."""
    for e in builder.start():
        yield e
    try:
        async for item in items:
            if isinstance(item, StreamEvent):
                events = builder.text(item.text)
            elif isinstance(item, Event):
                if item.type in TERMINAL:
                    message = item.data.get("error") or item.data.get("reason")
                    failed = item.type != "run.completed"
                    events = builder.close_fusion(fusion_result(), failed=failed, error=message)
                else:
                    events = builder.fusion_event(item)
            else:
                events = builder.refusal(item.refusal or "")
                notes = output_annotations(annotations(item.text))
                if item.tool_calls:
                    events += builder.close_message(notes)
                for call in item.tool_calls:
                    events += builder.function_call(call)
                finish = "tool_calls" if item.tool_calls else item.finish_reason
                events += builder.complete(usage_object(usage()), finish, notes)
            for e in events:
                yield e
    except (ProviderError, ServiceError) as exc:
        err = from_provider_error(exc) if isinstance(exc, ProviderError) else exc
        if raise_errors:
            raise err from exc
        for e in builder.fail(err, usage_object(usage())):
            yield e


async def proxy_events(
    upstream: AsyncIterator[StreamEvent], builder: ResponseBuilder, price: Price | None, *, raise_errors: bool
) -> AsyncGenerator[dict[str, Any], None]:
    """A proxied model's stream as Responses events: text and refusal as the message (with the
    upstream's annotations), tool calls as `function_call` items, the usage (with its cost) at the end."""
    usage = Usage()
    finish: str | None = None
    annotations: list[dict[str, Any]] = []
    for e in builder.start():
        yield e
    try:
        async for ev in upstream:
            events = [*builder.text(ev.text), *builder.refusal(ev.refusal or "")]
            for call in ev.tool_calls:
                events += builder.function_call(call)
            finish = ev.finish_reason or finish
            annotations += ev.annotations or []
            if ev.usage is not None:
                usage = ev.usage
            for e in events:
                yield e
    except ProviderError as exc:
        if raise_errors:
            raise from_provider_error(exc) from exc
        for e in builder.fail(from_provider_error(exc), usage_object(_usage_dict(usage, price))):
            yield e
        return
    for e in builder.complete(usage_object(_usage_dict(usage, price)), finish, output_annotations(annotations)):
        yield e


def _usage_dict(usage: Usage, price: Price | None) -> dict[str, Any]:
    out = usage.to_dict()
    cost = call_cost(usage, price)
    if cost is not None:
        out["cost"] = cost
    return out
