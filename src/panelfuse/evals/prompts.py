"""Every prompt the grader is sent, in one place, versioned. Bump GRADER_PROMPT_VERSION on any change
of wording or schema: it is stored with each grade, and a rerun refuses to mix grades of two versions.

The protocol is DRACO's: one call per criterion; the grader sees the criterion, whether it is a
requirement (positive) or a mistake to look for (negative), the task and the answer — never the
weight — and returns MET or UNMET with a short explanation, as schema-constrained JSON.
"""

from __future__ import annotations

from typing import Any

GRADER_PROMPT_VERSION = "grader-2026-11-24.1"
EXPLANATION_MAX_CHARS = 400

GRADER_SYSTEM = """\
You check one answer against one rubric item. You do not grade the answer as a whole and you do not
judge whether the rubric item is good or bad: you only decide whether what the item describes is
actually present in the answer.

The item is either a REQUIREMENT (something a good answer contains) or a MISTAKE (something a good
answer avoids). The question you answer is the same in both cases: does the answer contain the thing
the item describes?
- MET: the answer contains it, in substance. Different wording, an equivalent figure or a clear
  implication counts. For a MISTAKE, MET means the answer itself makes, states or recommends it.
- UNMET: it is absent, wrong, too vague to count, or (for a MISTAKE) only mentioned in order to warn
  against it or to correct it.

Be strict about facts, numbers, names and dates; be lenient about phrasing. Where the item asks for
something done immediately or without conditions, an answer that makes it conditional does not meet
it. Where it asks for a count, a length or an exclusion, check it exactly. Judge only the text of the
answer; do not reward length or confidence.

Reply with a JSON object: "verdict" is "MET" or "UNMET"; "explanation" says why in one or two
sentences."""

GRADER_USER = """\
Rubric item type: {kind}
Rubric item: {requirement}

The task the answer responds to:
<task>
{problem}
</task>

The answer to check:
<answer>
{answer}
</answer>

Is the rubric item MET or UNMET by this answer?"""

KIND_POSITIVE = "REQUIREMENT (a good answer contains this)"
KIND_NEGATIVE = "MISTAKE (a good answer avoids this)"


def grader_messages(problem: str, answer: str, requirement: str, *, negative: bool) -> list[dict[str, str]]:
    """The grader's messages for one criterion. The weight is deliberately not an argument."""
    user = GRADER_USER.format(
        kind=KIND_NEGATIVE if negative else KIND_POSITIVE,
        requirement=requirement,
        problem=problem,
        answer=answer if answer.strip() else "(the answer is empty)",
    )
    return [{"role": "system", "content": GRADER_SYSTEM}, {"role": "user", "content": user}]


def verdict_schema() -> dict[str, Any]:
    """JSON schema of the grader's reply; bounded so a small local model cannot ramble."""
    return {
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": ["MET", "UNMET"]},
            "explanation": {"type": "string", "maxLength": EXPLANATION_MAX_CHARS},
        },
        "required": ["verdict", "explanation"],
        "additionalProperties": False,
    }


def response_format() -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "criterion_verdict", "strict": True, "schema": verdict_schema()},
    }
