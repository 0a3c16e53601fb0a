"""The panel: members answer concurrently; fallbacks, hedges, statuses, quorum and grace."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from panelfuse.pipeline import prompts
from panelfuse.pipeline.calls import SharedRetrieval, call_model, call_with_tools, tool_event
from panelfuse.pipeline.chain import EmptyAnswer, run_chain, status_of
from panelfuse.pipeline.events import EventLog, FinalDelta, PanelCompleted, PanelCut, PanelDelta, PanelStarted
from panelfuse.pipeline.hedge import Hedge, Lane
from panelfuse.pipeline.result import MemberResult
from panelfuse.pipeline.routes import MemberChain, ResolvedModel
from panelfuse.providers.base import ChatRequest, Completion
from panelfuse.providers.errors import ProviderError
from panelfuse.tools.records import Citation

if TYPE_CHECKING:
    from panelfuse.pipeline.context import RunContext


class QuorumError(Exception):
    """Too few members answered; the message names every member's outcome (they are in `into`)."""


def panel_messages(messages: Sequence[dict[str, Any]], panel_sees: str) -> list[dict[str, Any]]:
    """What the members see: the whole conversation, or the system prompts and the last user turn."""
    if panel_sees == "conversation":
        return [dict(m) for m in messages]
    systems = [dict(m) for m in messages if m.get("role") in ("system", "developer")]
    users = [dict(m) for m in messages if m.get("role") == "user"]
    return systems + users[-1:]


@dataclass(frozen=True)
class MemberAnswer:
    """One member call's answer and the sources behind it."""

    completion: Completion
    citations: list[Citation]


async def run_member(
    run: RunContext,
    member: MemberChain,
    result: MemberResult,
    retrieval: SharedRetrieval | None = None,
) -> MemberResult:
    """Try the member's model, then each fallback (the chain runner); fill `result` in place (so a cut
    keeps its calls). With `hedge_ms`, the first call may race a duplicate (pipeline/hedge.py).

    When the mode's answer is the first member's (`single`), its text also streams as final.delta and,
    as with the synthesizer, no fallback is tried once text has reached the caller.

    A model offered tools answers through the tool loop; one that cannot call tools gets the question's
    search results in its prompt (`retrieval`), when there is a search backend."""
    log = run.log
    answer = FinalStream(log) if run.plan.mode.first_member_only else None
    started = time.monotonic()
    log.emit(PanelStarted(member=member.label, model=member.chain[0].model))

    def on_text(t: str) -> None:
        log.emit(PanelDelta(member=member.label, text=t))
        if answer is not None:
            answer(t)

    def lane(live: bool) -> Lane:
        return Lane(on_text, log, live=live)

    async def attempt(model: ResolvedModel, to: Lane) -> MemberAnswer:
        req = member_request(run, member, model)
        citations: list[Citation] = []
        completion = await _answer(run, member.label, model, req, result, citations, retrieval, to)
        if not completion.text.strip():
            raise EmptyAnswer("the model returned an empty answer", model=model.model)
        return MemberAnswer(completion, citations)

    def trying(model: ResolvedModel) -> None:
        result.model = model.model

    hedge_ms = run.plan.spec.hedge_ms_for(member.spec)
    first = (
        None if hedge_ms is None else Hedge(hedge_ms / 1000, attempt, lane, log, result, exclusive=answer is not None)
    )
    outcome = await run_chain(
        "panel",
        member.chain,
        lambda model: attempt(model, lane(True)),
        log,
        member=member.label,
        may_fall_back=lambda: not (answer and answer.started),
        on_try=trying,
        first=first,
    )
    result.latency_ms = int((time.monotonic() - started) * 1000)
    if outcome.model is not None:
        result.model = outcome.model.model
    if outcome.value is None:
        error = outcome.error
        if error is not None:
            code = error.status_code if isinstance(error, ProviderError) else None
            result.status, result.error, result.status_code = status_of(error), str(error), code
        return result
    completion = outcome.value.completion
    result.status, result.content, result.error, result.status_code = "ok", completion.text, None, None
    result.finish_reason, result.citations = completion.finish_reason, outcome.value.citations
    log.emit(
        PanelCompleted(
            member=member.label,
            model=result.model,
            content=result.content,
            usage=result.usage.to_dict(),
            cost=result.cost,
            latency_ms=result.latency_ms,
        )
    )
    return result


def member_request(run: RunContext, member: MemberChain, model: ResolvedModel) -> ChatRequest:
    """One member call. Where the member's answer is the answer (`single`), the caller's own settings
    for the answer (FusionSpec.answer) apply to it; otherwise the member's and the spec's."""
    spec = run.plan.spec
    temperature = member.spec.temperature if member.spec.temperature is not None else spec.temperature
    seed, stop, reasoning = member.spec.seed, None, spec.reasoning
    if run.plan.mode.first_member_only:
        answer = spec.answer
        temperature = answer.temperature if answer.temperature is not None else temperature
        seed = answer.seed if answer.seed is not None else seed
        stop, reasoning = answer.stop, answer.reasoning or reasoning
    return ChatRequest(
        model=model.model,
        messages=run.plan.panel_messages,
        max_tokens=run.plan.mode.member_max_tokens(spec),
        temperature=temperature,
        seed=seed,
        stop=stop,
        extra_body={"reasoning": reasoning} if reasoning else {},
    )


class FinalStream:
    """Passes a single-mode member's text on as the answer (final.delta) and remembers that it did."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.started = False

    def __call__(self, text: str) -> None:
        self.started = True
        self.log.emit(FinalDelta(text=text))


async def _answer(
    run: RunContext,
    label: str,
    model: ResolvedModel,
    req: ChatRequest,
    result: MemberResult,
    citations: list[Citation],
    retrieval: SharedRetrieval | None,
    lane: Lane,
) -> Completion:
    """One call of a member; its text and tool events go to `lane` (live, or held back: a hedge)."""
    if model.tools:
        return await call_with_tools(
            run.calls,
            model,
            req,
            result.calls,
            max_tool_calls=run.plan.spec.max_tool_calls,
            usage=result.tools,
            citations=citations,
            on_tool=tool_event(lane, label),
            on_text=lane.text,
        )
    if retrieval is not None:
        req = replace(req, messages=await retrieval.messages_for(req.messages, result.tools, citations))
    return await call_model(run.calls, model, req, result.calls, on_text=lane.text)


async def run_panel(
    run: RunContext,
    into: list[MemberResult],
    members: Sequence[MemberChain] | None = None,
    quorum: int | None = None,
) -> list[MemberResult]:
    """Run the members concurrently until every one ends, or the quorum holds and grace runs out.

    `members`: the plan's members to run (default: all of them); a staged panel (`escalate`) runs its
    stages one call each. `quorum`: the answers this call must get (default: the plan's); 0 asks for
    none: every member is waited for (no grace), and no failure is raised.
    `into` receives the member results at once, so a cancelled run still reports each member; results
    already in it from an earlier stage stay, and the whole stays in panel (label) order.
    Raises QuorumError (naming every member's outcome) when the quorum cannot be reached.
    """
    plan, log = run.plan, run.log
    spec = plan.spec
    quorum = plan.quorum if quorum is None else quorum
    chosen = plan.members if members is None else tuple(members)
    results = {
        # A member that never finishes (the run was cancelled) stays "cancelled".
        m.label: MemberResult(
            member=m.label,
            model=m.chain[0].model,
            requested_model=m.chain[0].model,
            weight=m.spec.weight,
            status="cancelled",
        )
        for m in chosen
    }
    earlier = [r for r in into if r.member not in results]
    into[:] = sorted([*earlier, *results.values()], key=lambda r: r.member)
    if plan.pre_retrieval and run.retrieval is None:  # one search per run, shared by every stage
        run.retrieval = SharedRetrieval(run.calls, prompts.last_user_text(plan.panel_messages))
    retrieval = run.retrieval
    tasks = {
        asyncio.create_task(run_member(run, m, results[m.label], retrieval), name=f"member-{m.label}"): m.label
        for m in chosen
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
                    log.emit(PanelCut(member=r.member, model=r.model))
                pending = set()
                break
            if ok + len(pending) < quorum:
                stop_reason = f"stopped: the quorum of {quorum} could no longer be reached"
                break  # stop waiting for members that cannot save the run
            if 0 < quorum <= ok and spec.grace_ms is not None and grace_until is None:
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
    ok_members = [r for r in out if r.status == "ok"]
    if len(ok_members) < quorum:
        reasons = "; ".join(f"{r.member} ({r.model}): {r.status}: {r.error}" for r in out if r.status != "ok")
        raise QuorumError(f"only {len(ok_members)} of {len(out)} members answered, quorum is {quorum}: {reasons}")
    return out
