"""The judge's small, strict readings for `escalate` and `vote`: their JSON schemas and parsers. Pure.

Strict: the output must be one JSON object (alone, or alone in a fenced block) with exactly the
expected values; nothing is repaired or guessed. An output that does not parse is an AnalysisError,
which moves the judge's chain to its next fallback and, at its end, leaves the decision to the mode's
safe default (escalate; the normaliser's reading).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from panelfuse.pipeline.analysis import AnalysisError

REASON_MAX = 300
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?```$", re.DOTALL)


@dataclass(frozen=True)
class Verdict:
    """The judge's reading of one answer: whether it can go to the user as it is."""

    sure: bool
    reason: str


def strict_object(text: str) -> dict[str, Any]:
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise AnalysisError(f"the judge's output is not one JSON object: {exc}") from exc
    if not isinstance(value, dict):
        raise AnalysisError("the judge's output is not a JSON object")
    return value


def verdict_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "verdict": {"type": "string", "enum": ["sure", "unsure"]},
            "reason": {"type": "string", "maxLength": REASON_MAX},
        },
        "required": ["verdict", "reason"],
        "additionalProperties": False,
    }


def parse_verdict(text: str) -> Verdict:
    data = strict_object(text)
    verdict = data.get("verdict")
    if verdict not in ("sure", "unsure"):
        raise AnalysisError(f'verdict must be "sure" or "unsure", not {json.dumps(verdict)[:40]}')
    reason = data.get("reason")
    return Verdict(verdict == "sure", reason[:REASON_MAX] if isinstance(reason, str) else "")


def groups_schema(labels: Sequence[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "groups": {
                "type": "array",
                "items": {"type": "array", "items": {"type": "string", "enum": list(labels)}, "minItems": 1},
                "minItems": 1,
            }
        },
        "required": ["groups"],
        "additionalProperties": False,
    }


def parse_groups(text: str, labels: Sequence[str]) -> list[list[str]]:
    """The judge's groups of equivalent answers: every label of `labels` in exactly one group."""
    groups = strict_object(text).get("groups")
    if not isinstance(groups, list) or not all(isinstance(g, list) and g for g in groups):
        raise AnalysisError("groups must be a list of non-empty lists of labels")
    seen: list[str] = [label for g in groups for label in g]
    unknown = [x for x in seen if x not in labels]
    if unknown:
        raise AnalysisError(f"groups name labels that answered nothing: {unknown[:8]}")
    if sorted(seen) != sorted(labels):
        missing = sorted(set(labels) - set(seen))
        twice = sorted({x for x in seen if seen.count(x) > 1})
        raise AnalysisError(f"every label must be in exactly one group (missing {missing}, repeated {twice})")
    return [list(g) for g in groups]
