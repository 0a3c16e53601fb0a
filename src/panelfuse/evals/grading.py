"""Grader calls: one request per criterion (DRACO's protocol), parsed, retried, costed.

A QA task's single criterion may be settled without a call by normalised match (`qa_mode`):
`match` — match only (free, deterministic); `grader` — always ask the grader; `auto` — match first,
ask the grader only when the gold answer is not found verbatim.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import json_repair

from panelfuse.evals.prompts import EXPLANATION_MAX_CHARS, GRADER_PROMPT_VERSION, grader_messages, response_format
from panelfuse.evals.scoring import Verdict, as_verdict
from panelfuse.evals.tasks import Criterion, Task, qa_match
from panelfuse.pricing import PriceTable, call_cost
from panelfuse.providers.base import ChatRequest, Usage
from panelfuse.providers.errors import ProviderError
from panelfuse.providers.registry import Providers

QAMode = Literal["match", "grader", "auto"]
MATCH_GRADER = "normalised-match"


@dataclass
class GradeOutcome:
    verdict: Verdict | None  # None: every attempt failed
    explanation: str
    grader: str  # the grader's model id, or MATCH_GRADER
    version: str  # the prompt version (or the matcher's)
    attempts: int = 0
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost: float | None = None
    latency_ms: int = 0


class GraderReplyError(ValueError):
    """The grader answered, but not with a usable verdict."""


def parse_verdict(text: str) -> tuple[Verdict, str]:
    """The verdict and explanation from the grader's JSON reply (repaired if a provider could not
    enforce the schema). Raises GraderReplyError."""
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = json_repair.loads(text) if text.strip() else None
    if not isinstance(data, dict):
        raise GraderReplyError(f"the grader's reply is not a JSON object: {text[:120]!r}")
    verdict = as_verdict(str(data.get("verdict", "")).strip().upper())
    if verdict is None:
        raise GraderReplyError(f"the grader's verdict {data.get('verdict')!r} is neither MET nor UNMET")
    explanation = str(data.get("explanation") or "").strip()[:EXPLANATION_MAX_CHARS]
    return verdict, explanation


class Grader:
    """Grades answers criterion by criterion with one model. Reusable and safe to call concurrently."""

    def __init__(
        self,
        providers: Providers,
        model: str,
        prices: PriceTable,
        *,
        retries: int = 2,
        max_tokens: int = 300,
        timeout: float | None = None,
        qa_mode: QAMode = "match",
    ) -> None:
        self.providers = providers
        self.model = model
        self.prices = prices
        self.retries = retries
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.qa_mode = qa_mode
        provider, route = providers.for_model(model)  # fail early on an unknown provider
        self._provider, self._route = provider, route

    @property
    def qualified(self) -> str:
        return self._route.qualified

    async def grade(self, task: Task, answer: str, criterion: Criterion) -> GradeOutcome:
        if task.kind == "qa" and self.qa_mode in ("match", "auto"):
            if qa_match(answer, task):
                return GradeOutcome("MET", "the gold answer appears in the response", MATCH_GRADER, "match-1")
            if self.qa_mode == "match":
                return GradeOutcome("UNMET", "the gold answer does not appear in the response", MATCH_GRADER, "match-1")
        return await self._ask(task, answer, criterion)

    async def _ask(self, task: Task, answer: str, criterion: Criterion) -> GradeOutcome:
        out = GradeOutcome(None, "", self.qualified, GRADER_PROMPT_VERSION, usage=Usage(cost=None))
        messages = grader_messages(task.problem, answer, criterion.requirement, negative=criterion.weight < 0)
        started = time.monotonic()
        costs: list[float] = []
        # The provider retries transport failures itself; these retries cover replies we cannot use.
        for _ in range(1 + self.retries):
            out.attempts += 1
            req = ChatRequest(
                model=self._route.model,
                messages=messages,
                max_tokens=self.max_tokens,
                temperature=0.0,
                response_format=response_format(),
                timeout=self.timeout,
            )
            try:
                completion = await self._provider.complete(req)
            except ProviderError as exc:
                out.error = f"{type(exc).__name__}: {exc}"
                continue
            out.usage.prompt_tokens += completion.usage.prompt_tokens
            out.usage.completion_tokens += completion.usage.completion_tokens
            cost = call_cost(completion.usage, self.prices.lookup(self.qualified))
            if cost is not None:
                costs.append(cost)
            try:
                out.verdict, out.explanation = parse_verdict(completion.text)
            except GraderReplyError as exc:
                out.error = str(exc)
                continue
            out.error = None
            break
        out.cost = sum(costs) if costs else None
        out.latency_ms = int((time.monotonic() - started) * 1000)
        return out
