"""The synthesizer: the final answer, streamed, written from the panel's answers and the analysis."""

from __future__ import annotations

from collections.abc import Sequence

from panelfuse.pipeline import prompts
from panelfuse.pipeline.analysis import Analysis
from panelfuse.pipeline.calls import call_model
from panelfuse.pipeline.chain import EmptyAnswer, run_chain
from panelfuse.pipeline.context import RunContext
from panelfuse.pipeline.events import FinalDelta
from panelfuse.pipeline.judge import answers_of
from panelfuse.pipeline.result import MemberResult, StageResult
from panelfuse.pipeline.routes import ResolvedModel
from panelfuse.providers.base import ChatRequest, Completion
from panelfuse.tools.records import Citation


async def run_synthesis(
    run: RunContext, ok: Sequence[MemberResult], analysis: Analysis | None, sources: Sequence[Citation] = ()
) -> StageResult:
    """Stream the final answer. A fallback is tried only while nothing has streamed yet. `sources`: the
    URLs the panel (and judge) used, which the synthesizer is asked to cite. An empty or
    whitespace-only answer is a failed call (EmptyAnswer): leading whitespace is held back until text
    comes, so such an answer never reaches the caller and its fallback may still run."""
    spec = run.plan.spec
    stage = StageResult(model=run.plan.synthesizer[0].model)
    streamed = False
    held: list[str] = []

    def emit(text: str) -> None:
        nonlocal streamed
        if not streamed and not text.strip():
            held.append(text)
            return
        streamed = True
        run.log.emit(FinalDelta(text="".join(held) + text))
        held.clear()

    req = ChatRequest(
        model="",
        messages=prompts.synthesizer_messages(
            run.plan.messages, answers_of(ok), analysis.to_dict() if analysis else None, sources
        ),
        # The answer: the caller's own limit and sampling (FusionSpec.answer), else the spec's.
        max_tokens=spec.answer_max_tokens,
        temperature=spec.answer.temperature if spec.answer.temperature is not None else spec.temperature,
        stop=spec.answer.stop,
        seed=spec.answer.seed,
        response_format=spec.response_format,
        extra_body={"reasoning": spec.answer.reasoning} if spec.answer.reasoning else {},
    )

    async def attempt(model: ResolvedModel) -> Completion:
        stage.model = model.model
        held.clear()
        completion = await call_model(run.calls, model, req, stage.calls, on_text=emit)
        if not completion.text.strip():
            raise EmptyAnswer("the synthesizer returned an empty answer", model=model.model)
        return completion

    chain = await run_chain("synthesis", run.plan.synthesizer, attempt, run.log, may_fall_back=lambda: not streamed)
    if chain.value is None:
        stage.error = str(chain.error)
    else:
        stage.content, stage.finish_reason = chain.value.text, chain.value.finish_reason
    return stage
