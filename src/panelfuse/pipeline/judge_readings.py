"""The judge's small readings: `escalate`'s sure/unsure verdict on one answer and `vote`'s grouping of
equivalent answers. One call each through the judge's chain (no tools, no repair retry: the parsers in
pipeline/verdicts.py are strict, and an unreadable output moves to the next fallback)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from panelfuse.pipeline import prompts
from panelfuse.pipeline.analysis import AnalysisError, response_format
from panelfuse.pipeline.calls import call_model
from panelfuse.pipeline.chain import run_chain
from panelfuse.pipeline.context import RunContext
from panelfuse.pipeline.events import AnalysisStarted
from panelfuse.pipeline.judge import answers_of
from panelfuse.pipeline.result import MemberResult, StageResult
from panelfuse.pipeline.routes import ResolvedModel
from panelfuse.pipeline.verdicts import Verdict, groups_schema, parse_groups, parse_verdict, verdict_schema
from panelfuse.providers.base import ChatRequest
from panelfuse.providers.errors import ProviderError

T = TypeVar("T")


@dataclass
class Reading(Generic[T]):
    stage: StageResult
    value: T | None  # None: the chain ended without a readable output (stage.error says why)


async def _read(
    run: RunContext,
    messages: list[dict[str, str]],
    schema: dict[str, Any],
    name: str,
    max_tokens: int,
    parse: Callable[[str], T],
) -> Reading[T]:
    stage = StageResult(model=run.plan.judge[0].model)
    run.log.emit(AnalysisStarted(model=stage.model))
    req = ChatRequest(
        model="",
        messages=messages,
        max_tokens=max_tokens,
        temperature=0.0,
        response_format=response_format(schema, name),
        # The spec's `reasoning` reaches every judge call (as judge.py's do).
        extra_body={"reasoning": run.plan.spec.reasoning} if run.plan.spec.reasoning else {},
    )

    def trying(model: ResolvedModel) -> None:
        stage.model = model.model

    async def attempt(model: ResolvedModel) -> tuple[str, T]:
        completion = await call_model(run.calls, model, req, stage.calls)
        return completion.text, parse(completion.text)

    chain = await run_chain(
        "analysis", run.plan.judge, attempt, run.log, errors=(ProviderError, AnalysisError), on_try=trying
    )
    if chain.value is None:
        stage.error = str(chain.error)
        return Reading(stage, None)
    stage.content, value = chain.value
    return Reading(stage, value)


async def run_verdict(run: RunContext, member: MemberResult, max_tokens: int) -> Reading[Verdict]:
    messages = prompts.verdict_messages(run.plan.messages, answers_of([member]))
    return await _read(run, messages, verdict_schema(), "verdict", max_tokens, parse_verdict)


async def run_grouping(run: RunContext, ok: Sequence[MemberResult], max_tokens: int) -> Reading[list[list[str]]]:
    labels = [m.member for m in ok]
    messages = prompts.groups_messages(run.plan.messages, answers_of(ok))
    return await _read(run, messages, groups_schema(labels), "groups", max_tokens, lambda t: parse_groups(t, labels))
