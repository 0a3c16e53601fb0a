"""The orchestrator: `Fusion(spec).run(messages)` and `Fusion(spec).stream(messages)`."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

from panelfuse.config import Config
from panelfuse.pipeline.calls import CallContext, CostGuard, SharedRetrieval, offered_tools
from panelfuse.pipeline.estimate import estimate_run
from panelfuse.pipeline.events import Event, EventLog
from panelfuse.pipeline.panel import QuorumError, run_panel
from panelfuse.pipeline.prompts import PROMPT_VERSION
from panelfuse.pipeline.result import FusionResult, MemberResult
from panelfuse.pipeline.stages import run_analysis, run_best_of, run_judge_writes, run_synthesis
from panelfuse.pricing import Estimate, PriceTable
from panelfuse.providers.registry import Providers
from panelfuse.spec import FusionSpec
from panelfuse.tools.records import ToolUsage
from panelfuse.tools.toolbox import Toolbox

TERMINAL = ("run.completed", "run.failed", "run.cancelled")


class FusionError(Exception):
    """The run failed; `result` holds every member's outcome and the reason."""

    def __init__(self, result: FusionResult) -> None:
        super().__init__(result.error or "fusion failed")
        self.result = result


class _Fail(Exception):
    pass


def normalize_messages(messages: str | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    out = [dict(m) for m in messages]
    if not any(m.get("role") == "user" for m in out):
        raise ValueError("messages must contain at least one user turn")
    return out


class Fusion:
    """One fusion run per call of run()/stream(); the spec and providers can be reused."""

    def __init__(
        self,
        spec: FusionSpec,
        *,
        providers: Providers | None = None,
        prices: PriceTable | None = None,
        config: Config | None = None,
        toolbox: Toolbox | None = None,
    ) -> None:
        self.spec = spec
        self.providers = providers or Providers(config)
        self.prices = prices or PriceTable.load(self.providers.config.prices)
        # web_search / web_fetch as the config's [tools] describes them (see panelfuse.tools.toolbox)
        self.toolbox = (
            toolbox if toolbox is not None else Toolbox.from_config(self.providers.config.tools, self.providers.env)
        )
        self.result: FusionResult | None = None
        self.log: EventLog | None = None

    def _enforces_schema(self, model: str) -> bool:
        provider, _ = self.providers.for_model(model)
        return provider.supports_json_schema

    def _tools_for(self, role: str, model: str) -> list[str]:
        wanted = self.spec.panel_tools if role == "panel" else self.spec.judge_tools
        return offered_tools(self.providers, self.toolbox, model, wanted, self.spec.max_tool_calls)

    def estimate(self, messages: str | Sequence[dict[str, Any]]) -> Estimate:
        return estimate_run(
            self.spec,
            normalize_messages(messages),
            self.prices,
            self._enforces_schema,
            tools_for=self._tools_for,
            search_price=self.toolbox.search_price,
            pre_retrieval=SharedRetrieval.wanted(self.toolbox, self.spec.panel_tools),
        )

    async def run(
        self,
        messages: str | Sequence[dict[str, Any]],
        run_id: str | None = None,
        reuse_panel: Sequence[MemberResult] | None = None,
    ) -> FusionResult:
        async for _ in self.stream(messages, run_id=run_id, reuse_panel=reuse_panel):
            pass
        assert self.result is not None
        if self.result.status == "failed":
            raise FusionError(self.result)
        return self.result

    async def stream(
        self,
        messages: str | Sequence[dict[str, Any]],
        run_id: str | None = None,
        reuse_panel: Sequence[MemberResult] | None = None,
    ) -> AsyncIterator[Event]:
        """Yield the run's events as they happen. Leaving the loop early cancels the run and every
        in-flight upstream call.

        `reuse_panel`: answers from an earlier run; the panel is not called again (nor billed again),
        only the judge and synthesizer run: a re-synthesis.
        """
        msgs = normalize_messages(messages)
        queue: asyncio.Queue[Event] = asyncio.Queue()
        log = EventLog(run_id or f"run_{uuid.uuid4().hex[:20]}", listener=queue.put_nowait)
        self.log = log
        task = asyncio.create_task(self._execute(msgs, log, reuse_panel), name=f"fusion-{log.run_id}")
        try:
            while True:
                ev = await queue.get()
                yield ev
                if ev.type in TERMINAL:
                    break
            await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _execute(
        self, messages: list[dict[str, Any]], log: EventLog, reuse_panel: Sequence[MemberResult] | None
    ) -> None:
        spec = self.spec
        started = time.monotonic()
        result = FusionResult(run_id=log.run_id, preset=spec.preset, mode=spec.mode, prompt_version=PROMPT_VERSION)
        self.result = result
        log.emit("run.started", spec=spec.model_dump(mode="json"), prompt_version=PROMPT_VERSION)
        try:
            await self._stages(messages, log, result, reuse_panel)
        except (_Fail, Exception) as exc:
            # _Fail is a reasoned failure; anything else is a bug of ours, still reported as a value.
            result.status = "failed"
            result.error = str(exc) if isinstance(exc, _Fail) else f"internal error: {exc!r}"
            result.latency_ms = int((time.monotonic() - started) * 1000)
            log.emit("run.failed", error=result.error, failed_models=result.failed_models)
            return
        except asyncio.CancelledError:
            result.status, result.error = "cancelled", "cancelled by the caller"
            log.emit("run.cancelled", reason=result.error)
            raise
        result.status = "completed"
        result.latency_ms = int((time.monotonic() - started) * 1000)
        log.emit("final.completed", content=result.content, annotations=result.annotations)
        log.emit("run.completed", usage=result.usage_dict(), cost=result.cost, degraded=result.degraded)

    async def _stages(
        self,
        messages: list[dict[str, Any]],
        log: EventLog,
        result: FusionResult,
        reuse_panel: Sequence[MemberResult] | None,
    ) -> None:
        spec = self.spec
        try:
            est = self.estimate(messages)
            if reuse_panel is not None:
                est = est.without_stage("panel")
        except Exception as exc:  # an unknown provider in the spec, say: the caller's error, reported
            raise _Fail(f"cannot plan the run: {exc}") from exc
        result.estimate = est.total
        if spec.max_cost is not None:
            if est.unpriced:
                raise _Fail(f"max_cost is set but these models have no known price: {', '.join(est.unpriced)}")
            if est.total > spec.max_cost:
                raise _Fail(f"refused: worst-case estimate ${est.total:.6f} exceeds max_cost ${spec.max_cost:g}")
        by_stage = est.by_stage()
        guard = CostGuard(spec.max_cost, later_stages=by_stage.get("analysis", 0.0) + by_stage.get("synthesis", 0.0))
        ctx = CallContext(self.providers, self.prices, guard, timeout=spec.deadline_ms / 1000, toolbox=self.toolbox)

        if reuse_panel is not None:
            # Earlier answers, unbilled here: their cost belongs to the run that made them.
            result.panel = [replace(m, calls=[], tools=ToolUsage()) for m in reuse_panel]
            if not any(m.status == "ok" for m in result.panel):
                raise _Fail("the earlier run has no successful panel answer to re-synthesize")
        else:
            try:
                await run_panel(ctx, spec, messages, log, into=result.panel)
            except QuorumError as exc:
                raise _Fail(str(exc)) from exc
        ok = [m for m in result.panel if m.status == "ok"]

        if spec.mode == "single":
            # The member's text already streamed as the answer (see run_member).
            result.content, result.model = ok[0].content, ok[0].model
            result.annotate(ok[:1])
            return
        if spec.mode == "best-of":
            guard.later_stages = 0.0
            stage, winner, reason = await run_best_of(ctx, spec, messages, ok, log)
            result.judge = stage
            result.best_of = {"member": winner.member, "model": winner.model, "reason": reason}
            self._answer_verbatim(result, winner, log)
            return
        if spec.mode == "judge-writes":
            guard.later_stages = 0.0
            outcome = await run_judge_writes(ctx, spec, messages, ok, log, sources=result.citations(ok))
            result.judge, result.analysis, result.analysis_repaired = outcome.stage, outcome.analysis, outcome.repaired
            if not outcome.answer:
                raise _Fail(f"the judge wrote no answer: {outcome.stage.error or 'empty output'}")
            result.content, result.model = outcome.answer, outcome.stage.model
            result.annotate(ok)
            return

        guard.later_stages = by_stage.get("synthesis", 0.0)
        outcome = await run_analysis(ctx, spec, messages, ok, log)
        result.judge, result.analysis, result.analysis_repaired = outcome.stage, outcome.analysis, outcome.repaired
        guard.later_stages = 0.0
        if spec.mode == "analyze":
            result.model = outcome.stage.model
            return
        synth = await run_synthesis(ctx, spec, messages, ok, result.analysis, log, sources=result.citations(ok))
        result.synthesizer = synth
        if synth.error is None:
            result.content, result.model = synth.content, synth.model
            result.annotate(ok)
            return
        if synth.content or any(c.cost_estimated for c in synth.calls):
            raise _Fail(f"the synthesizer failed mid-answer: {synth.error}")
        # Nothing streamed: answer with the most trusted member's own answer, and say so.
        chosen = max(ok, key=lambda m: m.weight or 1.0)
        result.stopped_by_max_cost = "max_cost" in synth.error
        result.error = f"synthesis failed ({synth.error}); the answer is member {chosen.member}'s, verbatim"
        self._answer_verbatim(result, chosen, log)

    @staticmethod
    def _answer_verbatim(result: FusionResult, member: MemberResult, log: EventLog) -> None:
        result.content, result.model = member.content, member.model
        result.annotate([member])
        log.emit("final.delta", text=member.content)
