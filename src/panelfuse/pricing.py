"""Prices, cost arithmetic and worst-case estimates. Pure functions over a price table.

Worst-case estimate of a run (what `max_cost` is checked against):

    estimate = Σ over planned calls c of  prompt_tokens(c) × input_price + max_tokens × output_price

where the planned calls are
  * each member's primary model and every fallback in its chain (a fallback runs only after the
    previous one failed, but a failure may still be billed, so each counts in full);
  * with tools on, a member's call repeats up to max_tool_calls more times, each round's prompt
    grown by the previous output plus one tool result (TOOL_RESULT_TOKENS);
  * the judge (and its fallbacks), plus one repair retry when the judge's provider cannot enforce
    the schema, its prompt being the question plus every member's max_tokens;
  * the synthesizer (and its fallbacks), its prompt the judge's prompt plus the analysis;
and prompt_tokens is chars/4 of the text sent plus PROMPT_OVERHEAD_TOKENS for our instructions.
Models with no known price (and no provider-reported cost) are listed as unpriced, counted as 0.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from panelfuse.providers.base import Usage

PROMPT_OVERHEAD_TOKENS = 400  # our judge/synthesizer instructions and labels
TOOL_RESULT_TOKENS = 2000  # the budget a fetched page or search result is cut to
FREE_PROVIDERS = ("local",)


@dataclass(frozen=True)
class Price:
    input: float  # USD per million prompt tokens
    output: float  # USD per million completion tokens


@dataclass
class PriceTable:
    prices: dict[str, Price]
    as_of: str = "unknown"

    def lookup(self, model: str) -> Price | None:
        """Price of a qualified model id ("openrouter/google/gemini-3-flash"); local models are free."""
        if model in self.prices:
            return self.prices[model]
        if model.split("/", 1)[0] in FREE_PROVIDERS:
            return Price(0.0, 0.0)
        return None

    @classmethod
    def load(cls, overrides: Mapping[str, Mapping[str, float]] | None = None) -> PriceTable:
        data = tomllib.loads(resources.files("panelfuse").joinpath("data/prices.toml").read_text("utf-8"))
        prices = {k: Price(float(v["input"]), float(v["output"])) for k, v in data["models"].items()}
        for k, v in (overrides or {}).items():
            prices[k] = Price(float(v.get("input", 0.0)), float(v.get("output", 0.0)))
        return cls(prices, str(data.get("as_of", "unknown")))


def estimate_tokens(text: str) -> int:
    """Offline token estimate: chars/4, rounded up. Never downloads a tokenizer."""
    return math.ceil(len(text) / 4)


def messages_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    total = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content)
        total += estimate_tokens(str(content or "")) + 4  # role and separators
    return total


def token_cost(prompt_tokens: int, completion_tokens: int, price: Price) -> float:
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000


def call_cost(usage: Usage, price: Price | None) -> float | None:
    """Actual cost of one call: the provider's reported cost first, else tokens × price, else unknown."""
    if usage.cost is not None:
        return usage.cost
    if price is None:
        return None
    return token_cost(usage.prompt_tokens, usage.completion_tokens, price)


@dataclass
class PlannedCall:
    stage: str  # panel | analysis | synthesis
    who: str  # member label, "judge" or "synthesizer"
    model: str
    prompt_tokens: int
    max_tokens: int
    cost: float


@dataclass
class Estimate:
    total: float = 0.0
    calls: list[PlannedCall] = field(default_factory=list)
    unpriced: list[str] = field(default_factory=list)

    def add(self, table: PriceTable, stage: str, who: str, model: str, prompt_tokens: int, max_tokens: int) -> None:
        price = table.lookup(model)
        if price is None:
            if model not in self.unpriced:
                self.unpriced.append(model)
            cost = 0.0
        else:
            cost = token_cost(prompt_tokens, max_tokens, price)
        self.calls.append(PlannedCall(stage, who, model, prompt_tokens, max_tokens, cost))
        self.total += cost

    def without_stage(self, stage: str) -> Estimate:
        kept = [c for c in self.calls if c.stage != stage]
        return Estimate(sum(c.cost for c in kept), kept, list(self.unpriced))

    def by_stage(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for c in self.calls:
            out[c.stage] = out.get(c.stage, 0.0) + c.cost
        return out


def member_call_tokens(prompt_tokens: int, max_tokens: int, tool_rounds: int) -> list[int]:
    """Prompt sizes of a member's successive calls in a tool loop of `tool_rounds` extra rounds."""
    return [prompt_tokens + r * (max_tokens + TOOL_RESULT_TOKENS) for r in range(tool_rounds + 1)]
