"""What `escalate` saves against the full panel, on a scripted workload over the fake upstream.

The same prompts run in `synthesize` (three members, judge, synthesizer) and in `escalate` with each
rule. Each prompt is one of three kinds, by script:

- converge: the members give one answer, worded a little differently (one prompt in three: the
  second member words it quite differently, which word overlap cannot see through);
- diverge: the members give different answers in different words;
- subtle: the members' answers differ only in the final number ("... is 41" vs "... is 42").

Usage is scripted to realistic sizes (each member answers in 400 tokens; the judge and synthesizer
read every answer), priced with one illustrative price for every model (USD 1.25 in / 10 out per
million tokens). The judge is scripted as an oracle: it reports a contradiction (or "unsure") exactly
on the prompts that diverge, so the rule "judge" rows measure cost, not the judgement of a real model.
No timings: the figures are calls and dollars, the same on any machine.

    .venv/bin/python bench/escalation.py [--prompts 40] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import re
import sys
from dataclasses import asdict, dataclass
from typing import Any

from panelfuse.config import Config, ProviderConfig
from panelfuse.pipeline.run import Fusion
from panelfuse.pricing import Price, PriceTable
from panelfuse.providers.http import close_shared_client
from panelfuse.providers.registry import Providers
from panelfuse.spec import FusionSpec
from panelfuse.testing import FakeUpstream, Script

MEMBERS = ("fake/a", "fake/b", "fake/c")
JUDGE = "fake/judge"
PRICE = Price(1.25, 10.0)  # USD per million tokens, every model
ANSWER_TOKENS, ANALYSIS_TOKENS, FINAL_TOKENS, QUESTION_TOKENS, OVERHEAD_TOKENS = 400, 300, 500, 50, 300
MIX = {"converge": 0.6, "diverge": 0.25, "subtle": 0.15}
TOPICS = ["boiling point", "orbital period", "page count", "melting point", "population", "distance", "half-life"]
REASONS = ["the measurements agree", "the standard tables say so", "it follows from the definition"]

CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("synthesize (full panel)", {"mode": "synthesize"}),
    ("escalate, rule judge, first_stage 2", {"mode": "escalate", "escalation": {"rule": "judge", "first_stage": 2}}),
    ("escalate, rule judge, first_stage 1", {"mode": "escalate", "escalation": {"rule": "judge", "first_stage": 1}}),
    ("escalate, rule overlap (0.5)", {"mode": "escalate", "escalation": {"rule": "overlap"}}),
    ("escalate, rule final-answer", {"mode": "escalate", "escalation": {"rule": "final-answer"}}),
]


@dataclass
class Row:
    name: str
    runs: int
    calls: int
    cost: float
    escalated: int
    escalated_converge: int
    escalated_diverge: int  # of the diverge and subtle prompts
    saving: float = 0.0  # of the cost, against the first row's


def kinds(prompts: int, seed: int) -> list[str]:
    out = []
    for kind, share in MIX.items():
        out += [kind] * round(prompts * share)
    out = (out + ["converge"] * prompts)[:prompts]
    random.Random(seed).shuffle(out)
    return out


def answer(kind: str, index: int, member: int) -> str:
    topic, reason = TOPICS[index % len(TOPICS)], REASONS[index % len(REASONS)]
    value = 10 + index
    if kind == "converge":
        second = f"Standard references list {value} for this {topic}." if index % 3 == 0 else None
        return [
            f"The {topic} is {value} because {reason}.",
            second or f"The {topic} is {value}, because {reason}.",
            f"The {topic} is {value} since {reason}.",
        ][member]
    if kind == "subtle":
        return f"The {topic} is {value + member} because {reason}."
    return [
        f"The {topic} is {value} because {reason}.",
        f"Estimates vary widely; sources disagree, roughly {value * 3} in older surveys.",
        f"Nobody measured it; guesses put it near {value * 7} under other conventions.",
    ][member]


def prompt_index(body: dict[str, Any]) -> int:
    found = re.search(r"Question (\d+):", json.dumps(body.get("messages", [])))
    assert found, "every prompt names its index"
    return int(found.group(1))


def analysis(labels: list[str], contradicts: bool) -> dict[str, Any]:
    stances = [{"model": label, "stance": f"view {label}"} for label in labels]
    return {
        "consensus": [] if contradicts else ["the value"],
        "contradictions": [{"topic": "the value", "stances": stances}] if contradicts else [],
        "partial_coverage": [],
        "unique_insights": [],
        "blind_spots": [],
        "anomalies": [],
    }


def script(fake: FakeUpstream, kind_of: list[str]) -> None:
    for member, model in enumerate(MEMBERS):

        def reply(body: dict[str, Any], member: int = member) -> Script:
            i = prompt_index(body)
            return Script(
                text=answer(kind_of[i], i, member), prompt_tokens=QUESTION_TOKENS, completion_tokens=ANSWER_TOKENS
            )

        fake.script(model.removeprefix("fake/"), reply)

    def judge(body: dict[str, Any]) -> Script:
        text = json.dumps(body.get("messages", []))
        i = prompt_index(body)
        labels = sorted(set(re.findall(r'label=\\"([A-H])\\"', text)))
        reads = OVERHEAD_TOKENS + QUESTION_TOKENS + ANSWER_TOKENS * len(labels)
        differs = kind_of[i] != "converge"
        if "Decide whether that answer can go to the user" in text:  # the verdict
            verdict = {"verdict": "unsure" if differs else "sure", "reason": "scripted"}
            return Script(text=json.dumps(verdict), prompt_tokens=reads, completion_tokens=30)
        if "You write the final answer" in text:  # the synthesizer
            return Script(
                text=f"The synthesized answer {i}.",
                prompt_tokens=reads + ANALYSIS_TOKENS,
                completion_tokens=FINAL_TOKENS,
            )
        return Script(
            text=json.dumps(analysis(labels, differs)), prompt_tokens=reads, completion_tokens=ANALYSIS_TOKENS
        )

    fake.script("judge", judge)


def spec_for(overrides: dict[str, Any]) -> FusionSpec:
    return FusionSpec.model_validate(
        {
            "members": [{"model": m} for m in MEMBERS],
            "judge": {"model": JUDGE},
            "panel_tools": [],
            "max_tokens": ANSWER_TOKENS,
            "deadline_ms": 60_000,
            **overrides,
        }
    )


async def run_config(fake: FakeUpstream, name: str, spec: FusionSpec, kind_of: list[str], concurrency: int) -> Row:
    cfg = Config(
        default_provider="fake",
        providers={"fake": ProviderConfig(kind="openai_compat", base_url=fake.openai_base_url, api_key="k")},
    )
    providers = Providers(cfg, env={})
    prices = PriceTable({m: PRICE for m in (*MEMBERS, JUDGE)}, "bench")
    gate = asyncio.Semaphore(concurrency)
    row = Row(name, 0, 0, 0.0, 0, 0, 0)
    before = len(fake.requests)

    async def one(i: int) -> None:
        async with gate:
            result = await Fusion(spec, providers=providers, prices=prices).run(f"Question {i}: what is it?")
        row.runs += 1
        row.calls += result.calls
        row.cost += result.cost or 0.0
        if result.escalated:
            row.escalated += 1
            if kind_of[i] == "converge":
                row.escalated_converge += 1
            else:
                row.escalated_diverge += 1

    await asyncio.gather(*(one(i) for i in range(len(kind_of))))
    made = len(fake.requests) - before
    if made != row.calls:  # the run's own count must be the upstream's
        raise SystemExit(f"{name}: the runs count {row.calls} calls, the fake upstream saw {made}")
    return row


def table(rows: list[Row], kind_of: list[str]) -> str:
    differs = sum(1 for k in kind_of if k != "converge")
    converge = len(kind_of) - differs
    lines = [
        "| configuration | calls | calls/prompt | cost (USD) | cost/prompt | escalated | "
        f"of {converge} converging | of {differs} diverging | saving vs full |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        escalated = "—" if r.name.startswith("synthesize") else f"{r.escalated}/{r.runs}"
        conv = "—" if r.name.startswith("synthesize") else str(r.escalated_converge)
        div = "—" if r.name.startswith("synthesize") else str(r.escalated_diverge)
        lines.append(
            f"| {r.name} | {r.calls} | {r.calls / r.runs:.2f} | {r.cost:.4f} | {r.cost / r.runs:.5f} | "
            f"{escalated} | {conv} | {div} | {r.saving:.0%} |"
        )
    return "\n".join(lines)


async def bench(prompts: int, seed: int, concurrency: int) -> tuple[list[Row], list[str]]:
    kind_of = kinds(prompts, seed)
    rows = []
    with FakeUpstream() as fake:
        script(fake, kind_of)
        try:
            for name, overrides in CONFIGS:
                rows.append(await run_config(fake, name, spec_for(overrides), kind_of, concurrency))
        finally:
            await close_shared_client()
    full = rows[0].cost
    for r in rows:
        r.saving = 1 - r.cost / full if full else 0.0
    return rows, kind_of


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--seed", type=int, default=16, help="shuffles which prompts converge")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    rows, kind_of = asyncio.run(bench(args.prompts, args.seed, args.concurrency))
    mix = {k: kind_of.count(k) for k in MIX}
    print(f"{args.prompts} prompts: {mix['converge']} converge, {mix['diverge']} diverge, {mix['subtle']} subtle")
    print(table(rows, kind_of))
    if args.json:
        data = {
            "date": datetime.date.today().isoformat(),
            "command": " ".join(["bench/escalation.py", *(argv if argv is not None else sys.argv[1:])]),
            "prompts": args.prompts,
            "mix": mix,
            "price_per_million": {"input": PRICE.input, "output": PRICE.output},
            "rows": [asdict(r) for r in rows],
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)


if __name__ == "__main__":
    main()
