"""The eval runner: answer every (configuration, task, pass), grade every answer criterion by
criterion, and keep each answer and grade in the store the moment it exists, so a rerun with the
same eval name skips what is done (an interrupted run resumes; nothing is graded twice).

A failed answer is stored as such and scores 0 for that pass; it is not retried unless
`retry_failed` is set (likewise grades the grader failed on, which are excluded from scores).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError

from panelfuse.evals.configs import EvalConfig
from panelfuse.evals.grading import MATCH_GRADER, Grader
from panelfuse.evals.prompts import GRADER_PROMPT_VERSION
from panelfuse.evals.store import AnswerKey, AnswerRow, EvalStore, GradeKey, GradeRow
from panelfuse.evals.tasks import Criterion, Task
from panelfuse.pipeline.run import Fusion, FusionStream
from panelfuse.pricing import PriceTable, call_cost
from panelfuse.providers.base import ChatRequest
from panelfuse.providers.registry import Providers
from panelfuse.store import RunStore, StoreError


class EvalMismatchError(ValueError):
    """Stored results under this eval name were made by a different configuration or grader."""


class Progress(Protocol):
    def start(self, answers: int, grades: int) -> None: ...
    def advance(self, kind: str, n: int = 1) -> None: ...  # kind: "answer" | "grade"


class NullProgress:
    def start(self, answers: int, grades: int) -> None:
        pass

    def advance(self, kind: str, n: int = 1) -> None:
        pass


@dataclass
class EvalSettings:
    name: str  # the key under which results are stored (default: the output directory)
    passes: int = 1
    concurrency: int = 4  # upstream calls in flight at once (answers and grades together)
    retry_failed: bool = False
    record_runs: bool = True  # fusion answers also go to the `runs` table, inspectable like any run


@dataclass
class EvalData:
    """Everything a report needs: the tasks and configurations, and the stored rows."""

    name: str
    tasks: list[Task]
    configs: list[EvalConfig]
    passes: int
    grader: str
    answers: dict[AnswerKey, AnswerRow] = field(default_factory=dict)
    grades: dict[GradeKey, GradeRow] = field(default_factory=dict)


class EvalRunner:
    def __init__(
        self,
        store: RunStore,
        providers: Providers,
        grader: Grader,
        prices: PriceTable,
        settings: EvalSettings,
        progress: Progress | None = None,
    ) -> None:
        self.store = store
        self.evals = EvalStore(store.database)
        self.providers = providers
        self.grader = grader
        self.prices = prices
        self.settings = settings
        self.progress = progress or NullProgress()
        self._sem = asyncio.Semaphore(max(1, settings.concurrency))

    async def run(self, tasks: Sequence[Task], configs: Sequence[EvalConfig]) -> EvalData:
        s = self.settings
        data = EvalData(s.name, list(tasks), list(configs), s.passes, self.grader.qualified)
        data.answers = await self.evals.answers(s.name)
        data.grades = await self.evals.grades(s.name)
        self._check_consistent(data)
        self.progress.start(
            len(configs) * len(tasks) * s.passes, len(configs) * s.passes * sum(len(t.criteria) for t in tasks)
        )
        try:
            async with asyncio.TaskGroup() as group:
                for config in configs:
                    for task in tasks:
                        for p in range(s.passes):
                            group.create_task(self._unit(data, config, task, p))
        except BaseExceptionGroup as eg:
            raise _first_leaf(eg) from eg  # callers get the error itself (a StoreError, say), not a group
        return data

    def _check_consistent(self, data: EvalData) -> None:
        by_label = {c.label: c for c in data.configs}
        for row in data.answers.values():
            config = by_label.get(row.config_label)
            if config is not None and row.config_hash != config.fingerprint:
                raise EvalMismatchError(
                    f"eval '{data.name}' holds answers of a different configuration labelled '{config.label}'"
                    " (its spec changed): give this run another --name, or another label"
                )
        for g in data.grades.values():
            if (
                g.config_label in by_label
                and g.grader_model != MATCH_GRADER
                and (g.grader_model, g.grader_version) != (self.grader.qualified, GRADER_PROMPT_VERSION)
            ):
                raise EvalMismatchError(
                    f"eval '{data.name}' holds grades by {g.grader_model} ({g.grader_version}), not by"
                    f" {self.grader.qualified} ({GRADER_PROMPT_VERSION}): give this run another --name"
                )

    async def _unit(self, data: EvalData, config: EvalConfig, task: Task, pass_index: int) -> None:
        key = (config.label, task.id, pass_index)
        answer = data.answers.get(key)
        if answer is None or (self.settings.retry_failed and answer.status == "failed"):
            async with self._sem:
                answer = await self._answer(config, task, pass_index)
                await self.evals.put_answer(data.name, answer)
            data.answers[key] = answer
            for c in task.criteria:  # the store dropped grades of a replaced answer; so do we
                data.grades.pop((*key, c.id), None)
        self.progress.advance("answer")
        if answer.status != "ok":
            self.progress.advance("grade", len(task.criteria))
            return
        async with asyncio.TaskGroup() as group:
            for criterion in task.criteria:
                group.create_task(self._grade(data, task, answer, criterion))

    async def _grade(self, data: EvalData, task: Task, answer: AnswerRow, criterion: Criterion) -> None:
        key = (*answer.key, criterion.id)
        done = data.grades.get(key)
        if done is not None and not (self.settings.retry_failed and done.verdict is None):
            self.progress.advance("grade")
            return
        async with self._sem:
            out = await self.grader.grade(task, answer.content, criterion)
            row = GradeRow(
                *answer.key,
                criterion.id,
                out.verdict,
                out.explanation,
                out.grader,
                out.version,
                out.attempts,
                out.error,
                out.usage.prompt_tokens,
                out.usage.completion_tokens,
                out.cost,
                out.latency_ms,
            )
            # Stored before the slot is freed: an interruption loses at most the calls in flight.
            await self.evals.put_grade(data.name, row)
        data.grades[key] = row
        self.progress.advance("grade")

    async def _answer(self, config: EvalConfig, task: Task, pass_index: int) -> AnswerRow:
        messages = [{"role": "user", "content": task.problem}]
        base = {
            "config_label": config.label,
            "task_id": task.id,
            "pass_index": pass_index,
            "config_hash": config.fingerprint,
        }
        if config.kind == "single":
            return await self._single(config, messages, base)
        return await self._fusion(config, task, messages, base)

    async def _single(self, config: EvalConfig, messages: list[dict[str, Any]], base: dict[str, Any]) -> AnswerRow:
        assert config.model is not None
        started = time.monotonic()
        try:
            provider, route = self.providers.for_model(config.model)
            # max_tokens None: the provider's own default (the model's limit on OpenAI-compatible APIs)
            req = ChatRequest(
                model=route.model, messages=messages, max_tokens=config.max_tokens, timeout=config.timeout
            )
            c = await provider.complete(req)
        except Exception as exc:  # any failure is this answer's result, not the eval's end
            return AnswerRow(
                **base,
                status="failed",
                content="",
                error=f"{type(exc).__name__}: {exc}",
                prompt_tokens=0,
                completion_tokens=0,
                cost=None,
                latency_ms=int((time.monotonic() - started) * 1000),
            )
        cost = call_cost(c.usage, self.prices.lookup(route.qualified))
        return AnswerRow(
            **base,
            status="ok",
            content=c.text,
            error=None,
            prompt_tokens=c.usage.prompt_tokens,
            completion_tokens=c.usage.completion_tokens,
            cost=cost,
            latency_ms=int((time.monotonic() - started) * 1000),
        )

    async def _fusion(
        self, config: EvalConfig, task: Task, messages: list[dict[str, Any]], base: dict[str, Any]
    ) -> AnswerRow:
        assert config.spec is not None
        stream = Fusion(config.spec, providers=self.providers, prices=self.prices).stream(messages)
        try:
            async for _ in stream:
                pass
        except Exception as exc:  # a bug or an unexpected upstream shape: this answer failed
            return AnswerRow(
                **base,
                status="failed",
                content="",
                error=f"{type(exc).__name__}: {exc}",
                prompt_tokens=0,
                completion_tokens=0,
                cost=None,
                latency_ms=0,
            )
        result = stream.result
        run_id = await self._record(stream, config, task, messages, base["pass_index"])
        ok = result.status == "completed"
        return AnswerRow(
            **base,
            status="ok" if ok else "failed",
            content=result.content if ok else "",
            error=result.error,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            cost=result.cost,
            latency_ms=result.latency_ms,
            run_id=run_id,
        )

    async def _record(
        self, stream: FusionStream, config: EvalConfig, task: Task, messages: list[dict[str, Any]], pass_index: int
    ) -> str | None:
        """Keep the fusion run (result and events) in `runs`, like a gateway run. Best effort."""
        result, spec = stream.result, config.spec
        if not self.settings.record_runs or spec is None:
            return None
        status = result.status if result.status in ("completed", "failed", "cancelled") else "failed"
        request = {
            "messages": messages,
            "eval": {"name": self.settings.name, "config": config.label, "task_id": task.id, "pass": pass_index},
        }
        try:
            await self.store.create_run(
                result.run_id,
                spec=spec.model_dump(mode="json"),
                request=request,
                request_model=f"panelfuse/fusion-{spec.preset}" if spec.preset else "panelfuse/fusion",
                preset=spec.preset,
                mode=spec.mode,
                prompt_version=result.prompt_version,
            )
            await self.store.append_events(result.run_id, stream.log.events)
            await self.store.finish_run(
                result.run_id,
                status=status,
                result=result.to_dict(),
                content=result.content,
                usage=result.usage_dict(),
                cost=result.cost,
                degraded=result.degraded,
                error=result.error,
                latency_ms=result.latency_ms,
            )
        except (StoreError, SQLAlchemyError):
            with contextlib.suppress(StoreError, SQLAlchemyError):
                await self.store.delete_run(result.run_id)
            return None
        return result.run_id


def _first_leaf(eg: BaseExceptionGroup) -> BaseException:
    exc: BaseException = eg
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
