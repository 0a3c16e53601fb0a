"""Every prompt the pipeline sends, in one place, versioned. Bump PROMPT_VERSION on any wording change:
it is recorded in every result so runs made under different prompts can be told apart."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from panelfuse.tools import untrusted
from panelfuse.tools.records import Citation

PROMPT_VERSION = "2026-12-03.1"

ANSWER_MARKER = "=== ANSWER ==="

CONTEXT_PREAMBLE = """\
Several assistants answered a user's request independently. The request and their answers follow;
instructions for your part come after them."""

JUDGE_SYSTEM = """\
You are the analyst of a panel. Several assistants, labelled {labels}, answered the same request
independently (above). You do not answer the request yourself. You compare their answers and report,
as one JSON object, what a careful editor needs in order to write the best possible single answer:

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

# `escalate` with one first-stage member (rule "judge"): a small, strict verdict on that one answer.
VERDICT_SYSTEM = """\
An assistant answered the user's request (above, labelled {label}). You do not answer the request
yourself. Decide whether that answer can go to the user as it is. Say "sure" only when it is correct,
answers the whole request and does not hedge; say "unsure" when it may be wrong, misses part of the
request, hedges or contradicts itself, or when you cannot tell. Reply with a JSON object
{{"verdict": "sure" or "unsure", "reason": "<one sentence>"}} and nothing else."""

# `vote` with the judge's reading: equivalent answers grouped, nothing else judged.
GROUPS_SYSTEM = """\
Several assistants, labelled {labels}, answered the same request independently (above). You do not
answer the request yourself, and you do not judge which answer is right. Group the answers by the
final answer they reach: two answers belong to one group when they come to the same value, choice or
conclusion, however they word it or reason to it. Put every label in exactly one group. Reply with a
JSON object {{"groups": [["<label>", ...], ...]}} and nothing else."""

TOOLS_SYSTEM = f"""\
You may call the tools you are given to look things up before you answer: search first, then fetch the
pages that look most useful. Use them only when they help; stop when you can answer well. In your answer,
cite the URLs of the sources you relied on.
{untrusted.NOTICE}"""

RETRIEVAL_SYSTEM = f"""\
Passages found for the user's request follow. Use those that are relevant and cite their URLs or paths;
say so when they do not answer the request.
{untrusted.NOTICE}

{{results}}"""

SOURCES_NOTE = f"""

The assistants consulted the sources listed below. Where your answer relies on one, cite it as a
markdown link with its exact URL. {untrusted.NOTICE}
{{sources}}"""


def with_system_note(messages: Sequence[Mapping[str, Any]], note: str) -> list[dict[str, Any]]:
    """The messages with one more system message, right after the leading system/developer ones."""
    out = [dict(m) for m in messages]
    at = 0
    while at < len(out) and out[at].get("role") in ("system", "developer"):
        at += 1
    return [*out[:at], {"role": "system", "content": note}, *out[at:]]


def with_tool_notice(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return with_system_note(messages, TOOLS_SYSTEM)


def with_retrieved(messages: Sequence[Mapping[str, Any]], results: str) -> list[dict[str, Any]]:
    """Pre-retrieval for models without function calling: `results` are already untrusted blocks."""
    return with_system_note(messages, RETRIEVAL_SYSTEM.format(results=results))


def sources_note(sources: Sequence[Citation]) -> str:
    if not sources:
        return ""
    listing = "\n".join(f"- {c.title or c.url}: {c.url}" for c in sources)
    return SOURCES_NOTE.format(sources=untrusted.wrap(listing, "sources consulted by the panel"))


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text of the last user turn: what pre-retrieval searches for."""
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
            return str(content or "")
    return ""


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


def shared_context(conversation: Sequence[Mapping[str, Any]], answers: Mapping[str, str]) -> dict[str, str]:
    """The first message of every judge, best-of and synthesizer prompt of a run, byte for byte: the
    request and the answers, before any stage's instructions. A provider that caches prompt prefixes
    (llama.cpp's slots, OpenAI's and others' prompt caching) then reads them once for the judge and
    reuses them for the synthesizer."""
    return {
        "role": "system",
        "content": f"{CONTEXT_PREAMBLE}\n\nThe request:\n{render_conversation(conversation)}\n\n"
        f"The answers:\n{render_answers(answers)}",
    }


def judge_messages(
    conversation: Sequence[Mapping[str, Any]],
    answers: Mapping[str, str],
    *,
    weights: Mapping[str, float] | None = None,
    criteria: str | None = None,
    dimensions: Sequence[str] = (),
    writes_answer: bool = False,
    sources: Sequence[Citation] = (),
) -> list[dict[str, str]]:
    weight_text = ""
    if weights:
        stated = ", ".join(f"{label}: {w:g}" for label, w in weights.items())
        weight_text = (
            f"\nThe operator trusts some assistants more than others (relative weights {stated}); "
            "when evidence is balanced, lean towards the more trusted answers.\n"
        )
    extra = "".join(f"- {d}: findings on '{d.replace('_', ' ')}'.\n" for d in dimensions)
    instructions = JUDGE_SYSTEM.format(
        labels=", ".join(answers),
        extra_dimensions=extra,
        weights=weight_text,
        criteria=f"\nAlso judge by these criteria: {criteria}\n" if criteria else "",
    )
    if writes_answer:
        instructions += JUDGE_WRITES_SUFFIX + sources_note(sources)
    return [shared_context(conversation, answers), {"role": "user", "content": instructions}]


def judge_retry_message(error: str) -> dict[str, str]:
    return {
        "role": "user",
        "content": f"That output could not be used ({error}). Reply again with only the JSON object.",
    }


def synthesizer_messages(
    conversation: Sequence[Mapping[str, Any]],
    answers: Mapping[str, str],
    analysis: Mapping[str, Any] | None,
    sources: Sequence[Citation] = (),
) -> list[dict[str, Any]]:
    if analysis is None:
        briefing = f"{SYNTHESIZER_NO_ANALYSIS}{sources_note(sources)}"
    else:
        # Compact JSON: the same content in fewer prompt tokens.
        briefing = (
            f"{SYNTHESIZER_SYSTEM}{sources_note(sources)}\n\n"
            f"The analysis:\n{json.dumps(analysis, ensure_ascii=False, separators=(', ', ': '))}"
        )
    # The conversation stays as real turns so the synthesizer answers its last turn naturally; the
    # user's own system messages come right before it, after the shared context and the briefing.
    own_system = [dict(m) for m in conversation if m.get("role") == "system"]
    turns = [dict(m) for m in conversation if m.get("role") != "system"]
    return [shared_context(conversation, answers), {"role": "system", "content": briefing}, *own_system, *turns]


def best_of_messages(
    conversation: Sequence[Mapping[str, Any]], answers: Mapping[str, str], criteria: str | None = None
) -> list[dict[str, str]]:
    instructions = BEST_OF_SYSTEM.format(
        labels=", ".join(answers), criteria=f"\nJudge by these criteria: {criteria}" if criteria else ""
    )
    return [shared_context(conversation, answers), {"role": "user", "content": instructions}]


def verdict_messages(conversation: Sequence[Mapping[str, Any]], answers: Mapping[str, str]) -> list[dict[str, str]]:
    """The judge's sure/unsure verdict on the one answer in `answers`."""
    instructions = VERDICT_SYSTEM.format(label=", ".join(answers))
    return [shared_context(conversation, answers), {"role": "user", "content": instructions}]


def groups_messages(conversation: Sequence[Mapping[str, Any]], answers: Mapping[str, str]) -> list[dict[str, str]]:
    """The judge's grouping of equivalent answers (vote's judge reading)."""
    instructions = GROUPS_SYSTEM.format(labels=", ".join(answers))
    return [shared_context(conversation, answers), {"role": "user", "content": instructions}]
