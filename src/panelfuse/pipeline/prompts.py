"""Every prompt the pipeline sends, in one place, versioned. Bump PROMPT_VERSION on any wording change:
it is recorded in every result so runs made under different prompts can be told apart."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

PROMPT_VERSION = "2026-11-23.1"

ANSWER_MARKER = "=== ANSWER ==="

JUDGE_SYSTEM = """\
You are the analyst of a panel. Several assistants, labelled {labels}, answered the same request
independently. You do not answer the request yourself. You compare their answers and report, as one
JSON object, what a careful editor needs in order to write the best possible single answer:

- consensus: claims that the answers agree on and that look sound.
- contradictions: topics where answers disagree; for each, every label's stance in a few words.
- partial_coverage: points that only some answers cover, with the labels that cover them.
- unique_insights: a valuable point that a single answer makes, with its label.
- blind_spots: things the request needs that no answer addresses.
- anomalies: answers (by label) that you discount, and why: off-topic, self-contradictory, clearly wrong.
{extra_dimensions}
Refer to answers only by their labels. Judge the substance, not the length or the confidence of an
answer. Keep each entry short and concrete. Lists may be empty. Output only the JSON object.
{weights}{criteria}"""

JUDGE_WRITES_SUFFIX = f"""
After the JSON object, write a line containing exactly {ANSWER_MARKER} and then the final answer to the
request itself, written for the user: build on the consensus, settle contradictions on the evidence,
add the unique insights worth keeping and cover the blind spots you can. Do not mention the panel."""

SYNTHESIZER_SYSTEM = """\
You write the final answer to the user's request. Several assistants answered it independently, and
an analyst compared their answers. Use the analysis as your guide: keep what they agree on, settle
each contradiction on the evidence (say so plainly when it cannot be settled), include the unique
insights that hold up, and fill the blind spots you can. Ignore answers the analyst discounted.
Write one answer for the user, in the language of the request, as if it were your own: do not
mention the panel, the assistants, their labels or the analysis."""

SYNTHESIZER_NO_ANALYSIS = """\
You write the final answer to the user's request. Several assistants answered it independently; no
analysis of their answers is available. Compare them yourself: keep what they agree on, settle
disagreements on the evidence, and add what only one of them noticed if it holds up. Write one
answer for the user, as if it were your own: do not mention the assistants or their labels."""

BEST_OF_SYSTEM = """\
Several assistants, labelled {labels}, answered the same request independently. Pick the single best
answer: the most correct, complete and useful for the user. Reply with a JSON object
{{"best": "<label>", "reason": "<one sentence>"}} and nothing else.{criteria}"""


def render_conversation(messages: Sequence[Mapping[str, Any]]) -> str:
    """The request as the judge and synthesizer see it: every turn, labelled by role."""
    lines = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "\n".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
        lines.append(f"[{m.get('role', 'user')}]\n{content or ''}")
    return "\n\n".join(lines)


def render_answers(answers: Mapping[str, str]) -> str:
    return "\n\n".join(f'<answer label="{label}">\n{text}\n</answer>' for label, text in answers.items())


def judge_messages(
    conversation: Sequence[Mapping[str, Any]],
    answers: Mapping[str, str],
    *,
    weights: Mapping[str, float] | None = None,
    criteria: str | None = None,
    dimensions: Sequence[str] = (),
    writes_answer: bool = False,
) -> list[dict[str, str]]:
    weight_text = ""
    if weights:
        stated = ", ".join(f"{label}: {w:g}" for label, w in weights.items())
        weight_text = (
            f"\nThe operator trusts some assistants more than others (relative weights {stated}); "
            "when evidence is balanced, lean towards the more trusted answers.\n"
        )
    extra = "".join(f"- {d}: findings on '{d.replace('_', ' ')}'.\n" for d in dimensions)
    system = JUDGE_SYSTEM.format(
        labels=", ".join(answers),
        extra_dimensions=extra,
        weights=weight_text,
        criteria=f"\nAlso judge by these criteria: {criteria}\n" if criteria else "",
    )
    if writes_answer:
        system += JUDGE_WRITES_SUFFIX
    user = f"The request:\n{render_conversation(conversation)}\n\nThe answers:\n{render_answers(answers)}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def judge_retry_message(error: str) -> dict[str, str]:
    return {
        "role": "user",
        "content": f"That output could not be used ({error}). Reply again with only the JSON object.",
    }


def synthesizer_messages(
    conversation: Sequence[Mapping[str, Any]],
    answers: Mapping[str, str],
    analysis: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    if analysis is None:
        context = f"The answers:\n{render_answers(answers)}"
        system = SYNTHESIZER_NO_ANALYSIS
    else:
        context = (
            f"The analysis:\n{json.dumps(analysis, ensure_ascii=False, indent=1)}\n\n"
            f"The answers:\n{render_answers(answers)}"
        )
        system = SYNTHESIZER_SYSTEM
    # The conversation stays as real turns so the synthesizer answers its last turn naturally.
    turns = [dict(m) for m in conversation if m.get("role") != "system"]
    briefing = {"role": "system", "content": f"{system}\n\n{context}"}
    own_system = [dict(m) for m in conversation if m.get("role") == "system"]
    return [*own_system, briefing, *turns]


def best_of_messages(
    conversation: Sequence[Mapping[str, Any]], answers: Mapping[str, str], criteria: str | None = None
) -> list[dict[str, str]]:
    system = BEST_OF_SYSTEM.format(
        labels=", ".join(answers), criteria=f"\nJudge by these criteria: {criteria}" if criteria else ""
    )
    user = f"The request:\n{render_conversation(conversation)}\n\nThe answers:\n{render_answers(answers)}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
