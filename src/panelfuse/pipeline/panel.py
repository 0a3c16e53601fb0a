"""The panel: members answer concurrently; fallbacks, statuses, quorum and grace (DESIGN.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from panelfuse.pipeline import prompts
from panelfuse.pipeline.calls import (
    CallContext,
    SharedRetrieval,
    call_model,
    call_with_tools,
    offered_tools,
    tool_event,
)
from panelfuse.pipeline.events import EventLog
from panelfuse.pipeline.result import MemberResult, MemberStatus
from panelfuse.providers.base import ChatRequest, Completion
from panelfuse.providers.errors import DeadlineExceeded, ProviderError, RefusedError
from panelfuse.spec import FusionSpec, MemberSpec
from panelfuse.tools.records import Citation


class QuorumError(Exception):
    """Too few members answered; the message names every member's outcome (they are in `into`)."""


def status_of(error: ProviderError) -> MemberStatus:
    if isinstance(error, DeadlineExceeded):
        return "timeout"
    if isinstance(error, RefusedError):
        return "refused"
    return "failed"


def panel_messages(messages: Sequence[dict[str, Any]], panel_sees: str) -> list[dict[str, Any]]:
    """What the members see: the whole conversation, or the system prompts and the last user turn."""
    if panel_sees == "conversation":
        return [dict(m) for m in messages]
    systems = [dict(m) for m in messages if m.get("role") in ("system", "developer")]
    users = [dict(m) for m in messages if m.get("role") == "user"]
    return systems + users[-1:]


class EmptyAnswer(ProviderError):
    kind = "empty"


async def run_member(
    ctx: CallContext,
    spec: FusionSpec,
    label: str,
    member: MemberSpec,
    messages: list[dict[str, Any]],
    log: EventLog,
    result: MemberResult,
    retrieval: SharedRetrieval | None = None,
) -> MemberResult:
    """Try the member's model, then each fallback; fill `result` in place (so a cut keeps its calls).

    In `single` mode this member's text is the answer: it also streams as final.delta, and, as with the
    synthesizer, no fallback is tried once text has reached the caller.

    A model that can call tools gets the spec's panel tools through the tool loop; one that cannot
    gets the question's search results in its prompt (`retrieval`), when there is a search backend."""
    chain = [member.model, *member.fallbacks]
    started = time.monotonic()
    answer = FinalStream(log) if spec.mode == "single" else None
    for i, model in enumerate(chain):
        result.model = model
        if i == 0:
            log.emit("panel.started", member=label, model=model)
        req = ChatRequest(
            model=model,
            messages=messages,
            max_tokens=spec.max_tokens,
            temperature=member.temperature if member.temperature is not None else spec.temperature,
            seed=member.seed,
            extra_body={"reasoning": spec.reasoning} if spec.reasoning else {},
        )
        citations: list[Citation] = []
        try:
            completion = await _answer(ctx, spec, label, model, req, log, result, citations, retrieval, answer)
            if not completion.text.strip():
                raise EmptyAnswer("the model returned an empty answer", model=model)
        except ProviderError as exc:
            result.status = "empty" if isinstance(exc, EmptyAnswer) else status_of(exc)
            result.error = str(exc)
            result.status_code = exc.status_code
            if i + 1 < len(chain) and not (answer and answer.started):
                log.emit("panel.fallback", member=label, **{"from": model, "to": chain[i + 1]}, reason=str(exc))
                continue
            result.latency_ms = int((time.monotonic() - started) * 1000)
            log.emit("panel.failed", member=label, model=model, status=result.status, error=result.error)
            return result
        result.status, result.content, result.error, result.status_code = "ok", completion.text, None, None
        result.citations = citations
        result.latency_ms = int((time.monotonic() - started) * 1000)
        log.emit(
            "panel.completed",
            member=label,
            model=model,
            content=completion.text,
            usage=result.usage.to_dict(),
            cost=result.cost,
            latency_ms=result.latency_ms,
        )
        return result
    return result


class FinalStream:
    """Passes a single-mode member's text on as the answer (final.delta) and remembers that it did."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.started = False

    def __call__(self, text: str) -> None:
        self.started = True
        self.log.emit("final.delta", text=text)


async def _answer(
    ctx: CallContext,
    spec: FusionSpec,
    label: str,
    model: str,
    req: ChatRequest,
    log: EventLog,
    result: MemberResult,
    citations: list[Citation],
    retrieval: SharedRetrieval | None,
    answer: FinalStream | None = None,
) -> Completion:
    def on_text(t: str) -> None:
        log.emit("panel.delta", member=label, text=t)
        if answer is not None:
            answer(t)

    offered = offered_tools(ctx.providers, ctx.toolbox, model, spec.panel_tools, spec.max_tool_calls)
    if offered:
        return await call_with_tools(
            ctx,
            model,
            req,
            result.calls,
            offered=offered,
            max_tool_calls=spec.max_tool_calls,
            usage=result.tools,
            citations=citations,
            on_tool=tool_event(log, label),
            on_text=on_text,
        )
    if retrieval is not None:
        req = replace(req, messages=await retrieval.messages_for(req.messages, result.tools, citations))
    return await call_model(ctx, model, req, result.calls, on_text=on_text)


async def run_panel(
    ctx: CallContext,
    spec: FusionSpec,
    messages: Sequence[dict[str, Any]],
    log: EventLog,
    into: list[MemberResult],
) -> list[MemberResult]:
    """Run the members concurrently until every one ends, or the quorum holds and grace runs out.

    `into` receives the member results at once, so a cancelled run still reports each member.
    Raises QuorumError (naming every member's outcome) when the quorum cannot be reached.
    """
    seen = panel_messages(messages, spec.panel_sees)
    quorum = spec.effective_quorum
    members = spec.labelled_members()[:1] if spec.mode == "single" else spec.labelled_members()
    results = {
        # A member that never finishes (the run was cancelled) stays "cancelled".
        label: MemberResult(member=label, model=m.model, requested_model=m.model, weight=m.weight, status="cancelled")
        for label, m in members
    }
    into[:] = list(results.values())
    retrieval = None
    if SharedRetrieval.wanted(ctx.toolbox, spec.panel_tools):
        retrieval = SharedRetrieval(ctx, prompts.last_user_text(seen))
    tasks = {
        asyncio.create_task(
            run_member(ctx, spec, label, m, seen, log, results[label], retrieval), name=f"member-{label}"
        ): label
        for label, m in members
    }
    pending = set(tasks)
    grace_until: float | None = None
    stop_reason = "the run stopped before this member finished"
    try:
        while pending:
            timeout = None if grace_until is None else max(0.0, grace_until - time.monotonic())
            done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a bug inside a member surfaces here rather than vanishing
            ok = sum(1 for r in results.values() if r.status == "ok")
            if not done:  # grace ran out: the stragglers are cut, which is not a failure
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                for task in pending:
                    r = results[tasks[task]]
                    r.status, r.error = "cut", f"cut after grace_ms={spec.grace_ms}"
                    log.emit("panel.cut", member=r.member, model=r.model)
                pending = set()
                break
            if ok + len(pending) < quorum:
                stop_reason = f"stopped: the quorum of {quorum} could no longer be reached"
                break  # stop waiting for members that cannot save the run
            if ok >= quorum and spec.grace_ms is not None and grace_until is None:
                grace_until = time.monotonic() + spec.grace_ms / 1000
    finally:
        # Cancellation of the run (or an early quorum failure) cancels every in-flight member call.
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            for task in pending:
                r = results[tasks[task]]
                if r.status not in ("ok", "cut"):
                    r.status, r.error = "cancelled", stop_reason
    out = list(results.values())
    ok = [r for r in out if r.status == "ok"]
    if len(ok) < quorum:
        reasons = "; ".join(f"{r.member} ({r.model}): {r.status}: {r.error}" for r in out if r.status != "ok")
        raise QuorumError(f"only {len(ok)} of {len(out)} members answered, quorum is {quorum}: {reasons}")
    return out
