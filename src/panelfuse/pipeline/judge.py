"""The judge's stages: the analysis, judge-writes (analysis then answer in one call) and best-of."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from panelfuse.pipeline import prompts
from panelfuse.pipeline.analysis import (
    Analysis,
    AnalysisError,
    analysis_schema,
    best_of_choice,
    best_of_schema,
    map_labels,
    parse_analysis,
    response_format,
    split_judge_writes,
)
from panelfuse.pipeline.calls import call_model, call_with_tools, tool_event
from panelfuse.pipeline.chain import run_chain
from panelfuse.pipeline.context import RunContext
from panelfuse.pipeline.events import AnalysisCompleted, AnalysisFailed, AnalysisStarted, EventLog, FinalDelta
from panelfuse.pipeline.result import BestOfChoice, MemberResult, StageResult
from panelfuse.pipeline.routes import ResolvedModel
from panelfuse.providers.base import ChatRequest, Completion
from panelfuse.providers.errors import ProviderError
from panelfuse.tools.records import Citation


@dataclass
class AnalysisOutcome:
    stage: StageResult
    analysis: Analysis | None = None
    repaired: bool = False
    answer: str | None = None  # judge-writes only


def answers_of(ok: Sequence[MemberResult]) -> dict[str, str]:
    return {m.member: m.content for m in ok}


def weights_of(ok: Sequence[MemberResult]) -> dict[str, float] | None:
    weights = {m.member: m.weight for m in ok if m.weight is not None}
    return weights or None


def _reasoning(run: RunContext) -> dict[str, Any]:
    """The spec's `reasoning` reaches the judge too (OpenRouter forwards it to panelists and analyst)."""
    reasoning = run.plan.spec.reasoning
    return {"reasoning": reasoning} if reasoning else {}


def _start(run: RunContext) -> StageResult:
    stage = StageResult(model=run.plan.judge[0].model)
    run.log.emit(AnalysisStarted(model=stage.model))
    return stage


def _trying(stage: StageResult) -> Callable[[ResolvedModel], None]:
    def note(model: ResolvedModel) -> None:
        stage.model = model.model

    return note


async def _judge_call(
    run: RunContext,
    model: ResolvedModel,
    req: ChatRequest,
    stage: StageResult,
    on_text: Callable[[str], None] | None = None,
) -> Completion:
    """One judge call: through the tool loop when the plan offers the judge tools (judge_tools)."""
    citations: list[Citation] = []
    completion = await call_with_tools(
        run.calls,
        model,
        req,
        stage.calls,
        max_tool_calls=run.plan.spec.max_tool_calls,
        usage=stage.tools,
        citations=citations,
        on_tool=tool_event(run.log, "judge"),
        on_text=on_text,
    )
    stage.citations = citations
    return completion


def _completed(run: RunContext, outcome: AnalysisOutcome) -> None:
    assert outcome.analysis is not None
    run.log.emit(
        AnalysisCompleted(
            analysis=outcome.analysis.to_dict(), usage=outcome.stage.usage.to_dict(), cost=outcome.stage.cost
        )
    )


async def run_analysis(run: RunContext, ok: Sequence[MemberResult]) -> AnalysisOutcome:
    """The judge writes the analysis (schema-constrained where the provider can; otherwise parsed
    leniently with one repair retry). Each failure moves to the next fallback."""
    spec = run.plan.spec
    labels = [m.member for m in ok]
    dims = spec.judge.dimensions
    outcome = AnalysisOutcome(_start(run))
    base = ChatRequest(
        model="",
        messages=prompts.judge_messages(
            run.plan.messages, answers_of(ok), weights=weights_of(ok), criteria=spec.judge.criteria, dimensions=dims
        ),
        max_tokens=run.plan.mode.judge_max_tokens(spec),
        temperature=0.0,
        response_format=response_format(analysis_schema(labels, dims)),
        extra_body=_reasoning(run),
    )

    async def attempt(model: ResolvedModel) -> tuple[Completion, bool, Analysis]:
        completion = await _judge_call(run, model, base, outcome.stage)
        try:
            parsed = parse_analysis(completion.text, labels, dims)
        except AnalysisError as first_error:
            retry = replace(
                base,
                messages=[
                    *base.messages,
                    {"role": "assistant", "content": completion.text},
                    prompts.judge_retry_message(str(first_error)),
                ],
            )
            completion = await call_model(run.calls, model, retry, outcome.stage.calls)
            parsed = parse_analysis(completion.text, labels, dims)
        return completion, parsed.repaired, map_labels(parsed.analysis, {m.member: m.model for m in ok})

    chain = await run_chain(
        "analysis",
        run.plan.judge,
        attempt,
        run.log,
        errors=(ProviderError, AnalysisError),
        on_try=_trying(outcome.stage),
    )
    if chain.value is None:
        outcome.stage.error = str(chain.error)
        return outcome
    completion, outcome.repaired, outcome.analysis = chain.value
    outcome.stage.content = completion.text
    _completed(run, outcome)
    return outcome


class AnswerSplitter:
    """Streams only the part of a judge-writes output after the marker, as final.delta events."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.buffer: list[str] = []
        self.answer_started = False

    def feed(self, text: str) -> None:
        self.buffer.append(text)
        if self.answer_started:
            self.log.emit(FinalDelta(text=text))
            return
        _, answer = split_judge_writes("".join(self.buffer), prompts.ANSWER_MARKER)
        if answer is not None:
            self.answer_started = True
            if answer:
                self.log.emit(FinalDelta(text=answer))


def _split_leading_json(text: str) -> tuple[str, str]:
    """(the leading JSON object, the rest) for a judge-writes output that forgot the marker."""
    start = text.find("{")
    if start < 0:
        return "", text.strip()
    try:
        _, end = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):  # deep nesting: parse_analysis reports it unreadable
        return text, ""
    return text[start:end], text[end:].strip()


async def run_judge_writes(run: RunContext, ok: Sequence[MemberResult], sources: Sequence[Citation]) -> AnalysisOutcome:
    """One judge call writes the analysis, then the marker, then the answer; the answer part streams."""
    spec = run.plan.spec
    labels = [m.member for m in ok]
    outcome = AnalysisOutcome(_start(run))
    req = ChatRequest(
        model="",
        messages=prompts.judge_messages(
            run.plan.messages,
            answers_of(ok),
            weights=weights_of(ok),
            criteria=spec.judge.criteria,
            dimensions=spec.judge.dimensions,
            writes_answer=True,
            sources=sources,
        ),
        max_tokens=run.plan.mode.judge_max_tokens(spec),
        temperature=0.0,
        extra_body=_reasoning(run),
    )
    splitter = AnswerSplitter(run.log)

    async def attempt(model: ResolvedModel) -> Completion:
        nonlocal splitter
        splitter = AnswerSplitter(run.log)
        return await _judge_call(run, model, req, outcome.stage, on_text=splitter.feed)

    chain = await run_chain(
        "analysis",
        run.plan.judge,
        attempt,
        run.log,
        may_fall_back=lambda: not splitter.answer_started,
        on_try=_trying(outcome.stage),
    )
    if chain.value is None:
        outcome.stage.error = str(chain.error)
        return outcome
    text = chain.value.text
    head, answer = split_judge_writes(text, prompts.ANSWER_MARKER)
    if answer is None:
        head, answer = _split_leading_json(text)
        if answer:
            run.log.emit(FinalDelta(text=answer))
    outcome.answer = answer
    outcome.stage.content, outcome.stage.finish_reason = text, chain.value.finish_reason
    try:
        parsed = parse_analysis(head, labels, spec.judge.dimensions)
        outcome.analysis = map_labels(parsed.analysis, {m.member: m.model for m in ok})
    except AnalysisError as exc:
        # The answer is written (and streamed): no fallback, the analysis is reported missing.
        outcome.stage.error = f"analysis unreadable: {exc}"
        run.log.emit(AnalysisFailed(error=outcome.stage.error, model=outcome.stage.model, status="failed"))
        return outcome
    outcome.repaired = parsed.repaired
    _completed(run, outcome)
    return outcome


async def run_best_of(run: RunContext, ok: Sequence[MemberResult]) -> tuple[StageResult, BestOfChoice]:
    """The judge picks the best answer; it is returned verbatim. Without a judge, the heaviest member wins."""
    spec = run.plan.spec
    labels = [m.member for m in ok]
    stage = _start(run)
    req = ChatRequest(
        model="",
        messages=prompts.best_of_messages(run.plan.messages, answers_of(ok), spec.judge.criteria),
        max_tokens=run.plan.mode.judge_max_tokens(spec),
        temperature=0.0,
        response_format=response_format(best_of_schema(labels), "best_of"),
        extra_body=_reasoning(run),
    )

    async def attempt(model: ResolvedModel) -> tuple[Completion, str, str]:
        completion = await call_model(run.calls, model, req, stage.calls)
        return (completion, *best_of_choice(completion.text, labels))

    chain = await run_chain(
        "analysis", run.plan.judge, attempt, run.log, errors=(ProviderError, AnalysisError), on_try=_trying(stage)
    )
    if chain.value is None:
        stage.error = str(chain.error)
        winner = max(ok, key=lambda m: m.weight or 1.0)
        return stage, BestOfChoice(winner.member, winner.model, f"the judge failed; chose {winner.member} by weight")
    completion, label, reason = chain.value
    stage.content = completion.text
    winner = next(m for m in ok if m.member == label)
    return stage, BestOfChoice(winner.member, winner.model, reason)
