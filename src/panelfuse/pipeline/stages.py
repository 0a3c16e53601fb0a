"""The stages after the panel: analysis, synthesis, judge-writes and best-of."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from panelfuse.pipeline import prompts
from panelfuse.pipeline.analysis import (
    AnalysisError,
    analysis_schema,
    best_of_choice,
    map_labels,
    parse_analysis,
    response_format,
    split_judge_writes,
)
from panelfuse.pipeline.calls import CallContext, call_model, call_with_tools, offered_tools, tool_event
from panelfuse.pipeline.estimate import judge_max_tokens
from panelfuse.pipeline.events import EventLog
from panelfuse.pipeline.result import MemberResult, StageResult
from panelfuse.providers.base import ChatRequest, Completion
from panelfuse.providers.errors import ProviderError
from panelfuse.spec import FusionSpec
from panelfuse.tools.records import Citation


@dataclass
class AnalysisOutcome:
    stage: StageResult
    analysis: dict[str, Any] | None = None
    repaired: bool = False
    answer: str | None = None  # judge-writes only


def answers_of(ok: Sequence[MemberResult]) -> dict[str, str]:
    return {m.member: m.content for m in ok}


def weights_of(ok: Sequence[MemberResult]) -> dict[str, float] | None:
    weights = {m.member: m.weight for m in ok if m.weight is not None}
    return weights or None


def _chain(first: str, fallbacks: Sequence[str]) -> list[str]:
    return [first, *fallbacks]


async def _judge_call(
    ctx: CallContext,
    spec: FusionSpec,
    model: str,
    req: ChatRequest,
    stage: StageResult,
    log: EventLog,
    on_text: Callable[[str], None] | None = None,
) -> Completion:
    """One judge call: through the tool loop when the spec gives the judge tools (judge_tools)."""
    offered = offered_tools(ctx.providers, ctx.toolbox, model, spec.judge_tools, spec.max_tool_calls)
    citations: list[Citation] = []
    completion = await call_with_tools(
        ctx,
        model,
        req,
        stage.calls,
        offered=offered,
        max_tool_calls=spec.max_tool_calls,
        usage=stage.tools,
        citations=citations,
        on_tool=tool_event(log, "judge"),
        on_text=on_text,
    )
    stage.citations = citations
    return completion


async def run_analysis(
    ctx: CallContext, spec: FusionSpec, messages: Sequence[dict[str, Any]], ok: Sequence[MemberResult], log: EventLog
) -> AnalysisOutcome:
    """The judge writes the analysis (schema-constrained where the provider can; otherwise parsed
    leniently with one retry). Each failure moves to the next fallback; the last one is reported."""
    labels = [m.member for m in ok]
    label_models = {m.member: m.model for m in ok}
    dims = spec.judge.dimensions
    chain = _chain(spec.judge.model, spec.judge.fallbacks)
    outcome = AnalysisOutcome(StageResult(model=chain[0]))
    log.emit("analysis.started", model=chain[0])
    base = ChatRequest(
        model="",
        messages=prompts.judge_messages(
            messages, answers_of(ok), weights=weights_of(ok), criteria=spec.judge.criteria, dimensions=dims
        ),
        max_tokens=judge_max_tokens(spec),
        temperature=0.0,
        response_format=response_format(analysis_schema(labels, dims)),
    )
    for i, model in enumerate(chain):
        outcome.stage.model = model
        try:
            completion = await _judge_call(ctx, spec, model, base, outcome.stage, log)
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
                completion = await call_model(ctx, model, retry, outcome.stage.calls)
                parsed = parse_analysis(completion.text, labels, dims)
        except (ProviderError, AnalysisError) as exc:
            outcome.stage.error = str(exc)
            if i + 1 < len(chain):
                log.emit("analysis.fallback", **{"from": model, "to": chain[i + 1]}, reason=str(exc))
                continue
            log.emit("analysis.failed", error=str(exc))
            return outcome
        outcome.stage.error = None
        outcome.stage.content = completion.text
        outcome.analysis = map_labels(parsed.analysis, label_models)
        outcome.repaired = parsed.repaired
        log.emit(
            "analysis.completed",
            analysis=outcome.analysis,
            usage=outcome.stage.usage.to_dict(),
            cost=outcome.stage.cost,
        )
        return outcome
    return outcome


async def run_synthesis(
    ctx: CallContext,
    spec: FusionSpec,
    messages: Sequence[dict[str, Any]],
    ok: Sequence[MemberResult],
    analysis: dict[str, Any] | None,
    log: EventLog,
    sources: Sequence[Citation] = (),
) -> StageResult:
    """Stream the final answer. A fallback is tried only while nothing has streamed yet. `sources`: the
    URLs the panel (and judge) used, which the synthesizer is asked to cite."""
    chain = _chain(spec.synthesizer_model, spec.synthesizer_fallbacks)
    stage = StageResult(model=chain[0])
    streamed = False

    def emit(text: str) -> None:
        nonlocal streamed
        streamed = True
        log.emit("final.delta", text=text)

    req = ChatRequest(
        model="",
        messages=prompts.synthesizer_messages(messages, answers_of(ok), analysis, sources),
        max_tokens=spec.max_tokens,
        temperature=spec.temperature,
        response_format=spec.response_format,
    )
    for i, model in enumerate(chain):
        stage.model = model
        try:
            completion = await call_model(ctx, model, req, stage.calls, on_text=emit)
        except ProviderError as exc:
            stage.error = str(exc)
            if streamed or i + 1 == len(chain):
                return stage
            continue
        stage.error = None
        stage.content = completion.text
        return stage
    return stage


async def run_judge_writes(
    ctx: CallContext,
    spec: FusionSpec,
    messages: Sequence[dict[str, Any]],
    ok: Sequence[MemberResult],
    log: EventLog,
    sources: Sequence[Citation] = (),
) -> AnalysisOutcome:
    """One judge call writes the analysis, then the marker, then the answer; the answer part streams."""
    labels = [m.member for m in ok]
    chain = _chain(spec.judge.model, spec.judge.fallbacks)
    outcome = AnalysisOutcome(StageResult(model=chain[0]))
    log.emit("analysis.started", model=chain[0])
    req = ChatRequest(
        model="",
        messages=prompts.judge_messages(
            messages,
            answers_of(ok),
            weights=weights_of(ok),
            criteria=spec.judge.criteria,
            dimensions=spec.judge.dimensions,
            writes_answer=True,
            sources=sources,
        ),
        max_tokens=judge_max_tokens(spec),
        temperature=0.0,
    )
    for i, model in enumerate(chain):
        outcome.stage.model = model
        splitter = AnswerSplitter(log)
        try:
            completion = await _judge_call(ctx, spec, model, req, outcome.stage, log, on_text=splitter.feed)
        except ProviderError as exc:
            outcome.stage.error = str(exc)
            if splitter.answer_started or i + 1 == len(chain):
                log.emit("analysis.failed", error=str(exc))
                return outcome
            log.emit("analysis.fallback", **{"from": model, "to": chain[i + 1]}, reason=str(exc))
            continue
        head, answer = split_judge_writes(completion.text, prompts.ANSWER_MARKER)
        if answer is None:
            head, answer = _split_leading_json(completion.text)
            if answer:
                log.emit("final.delta", text=answer)
        outcome.answer = answer
        outcome.stage.content = completion.text
        try:
            parsed = parse_analysis(head, labels, spec.judge.dimensions)
        except AnalysisError as exc:
            outcome.stage.error = f"analysis unreadable: {exc}"
            log.emit("analysis.failed", error=outcome.stage.error)
            return outcome
        outcome.analysis = map_labels(parsed.analysis, {m.member: m.model for m in ok})
        outcome.repaired = parsed.repaired
        log.emit(
            "analysis.completed",
            analysis=outcome.analysis,
            usage=outcome.stage.usage.to_dict(),
            cost=outcome.stage.cost,
        )
        return outcome
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
            self.log.emit("final.delta", text=text)
            return
        _, answer = split_judge_writes("".join(self.buffer), prompts.ANSWER_MARKER)
        if answer is not None:
            self.answer_started = True
            if answer:
                self.log.emit("final.delta", text=answer)


def _split_leading_json(text: str) -> tuple[str, str]:
    """(the leading JSON object, the rest) for a judge-writes output that forgot the marker."""
    start = text.find("{")
    if start < 0:
        return "", text.strip()
    try:
        _, end = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        return text, ""
    return text[start:end], text[end:].strip()


async def run_best_of(
    ctx: CallContext, spec: FusionSpec, messages: Sequence[dict[str, Any]], ok: Sequence[MemberResult], log: EventLog
) -> tuple[StageResult, MemberResult, str]:
    """The judge picks the best answer; it is returned verbatim. Without a judge, the heaviest member wins."""
    labels = [m.member for m in ok]
    chain = _chain(spec.judge.model, spec.judge.fallbacks)
    stage = StageResult(model=chain[0])
    log.emit("analysis.started", model=chain[0])
    schema = {
        "type": "object",
        "properties": {"best": {"type": "string", "enum": labels}, "reason": {"type": "string", "maxLength": 200}},
        "required": ["best", "reason"],
        "additionalProperties": False,
    }
    req = ChatRequest(
        model="",
        messages=prompts.best_of_messages(messages, answers_of(ok), spec.judge.criteria),
        max_tokens=judge_max_tokens(spec),
        temperature=0.0,
        response_format=response_format(schema, "best_of"),
    )
    for i, model in enumerate(chain):
        stage.model = model
        try:
            completion = await call_model(ctx, model, req, stage.calls)
            label, reason = best_of_choice(completion.text, labels)
        except (ProviderError, AnalysisError) as exc:
            stage.error = str(exc)
            if i + 1 < len(chain):
                log.emit("analysis.fallback", **{"from": model, "to": chain[i + 1]}, reason=str(exc))
                continue
            log.emit("analysis.failed", error=str(exc))
            break
        stage.error = None
        stage.content = completion.text
        winner = next(m for m in ok if m.member == label)
        return stage, winner, reason
    winner = max(ok, key=lambda m: m.weight or 1.0)
    return stage, winner, f"the judge failed; chose {winner.member} by weight"
