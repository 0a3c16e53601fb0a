"""The final-answer normaliser: what a text's answer comes to, as a value that compares equal when two
answers commit to the same thing. Pure. `vote` groups samples by it; `escalate`'s rule "final-answer"
escalates when two readings differ.

The reading, in order:

1. The candidate: the content of the last `\\boxed{...}`; else the text after the last answer marker
   ("the answer is", "answer:", "final answer =", …) up to the end of its line (the next non-empty
   line when the marker ends its line); else the last non-empty line. Markdown emphasis and code
   ticks are removed.
2. A letter choice (kind "choice"): the candidate is one capital letter A–H alone ("B", "B.", "(B)",
   "option B"), or starts with a bracketed one ("(B) because …"). Read as the letter.
3. A number (kind "number"): the last number in the candidate, thousands separators dropped
   ("1,000" → "1000"), a fraction reduced ("6/8" → "3/4"), trailing zeros trimmed ("42.50" → "42.5",
   "42.0" → "42"), "+" dropped, "-0" → "0".
4. Otherwise (kind "line"): the candidate NFKC-normalised, case-folded, whitespace collapsed and
   surrounding punctuation and quotes stripped ("Paris." → "paris").

So "The answer is 42." and "42" read alike; "The answer is (C)" and "C" too. It is meant for
questions with checkable answers (arithmetic, multiple choice, a name): on open prose the last line
is a weak reading, which is why `vote` offers the judge's reading instead.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Literal

Kind = Literal["choice", "number", "line"]

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_MARKER = re.compile(r"(?:final\s+answer|answer)\s*(?:is|:|=)\s*(?:[:=]\s*)?", re.IGNORECASE)
_EMPHASIS = re.compile(r"[*_`]+")
_CHOICE_ALONE = re.compile(r"^(?:option|choice)?\s*\(?([A-H])\)?[.):]?$", re.IGNORECASE)
_CHOICE_BRACKETED = re.compile(r"^\(([A-H])\)")
# A fraction first, then a thousands-grouped number, so "3/4" and "1,000" are one number each.
_NUMBER = re.compile(r"[-+]?\d+\s*/\s*\d+|[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
_STRIP = " \t\n\r.,;:!?\"'«»“”‘’()[]{}"


@dataclass(frozen=True)
class FinalAnswer:
    kind: Kind
    value: str

    def __str__(self) -> str:
        return self.value


def normalise_number(text: str) -> str | None:
    """A number's canonical text ("1,000.50" → "1000.5", "6/8" → "3/4", "4/2" → "2"), or None when
    `text` is not one number."""
    if "/" in text:
        try:
            frac = Fraction("".join(text.split()))
        except (ValueError, ZeroDivisionError):
            return None
        return str(frac.numerator) if frac.denominator == 1 else f"{frac.numerator}/{frac.denominator}"
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def normalise_line(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(folded.split()).strip(_STRIP)


def candidate(text: str) -> str:
    """The part of `text` that states its answer (step 1 above), emphasis removed."""
    boxed = _BOXED.findall(text)
    if boxed:
        return _EMPHASIS.sub("", boxed[-1]).strip()
    plain = _EMPHASIS.sub("", text)
    markers = list(_MARKER.finditer(plain))
    if markers:
        rest = plain[markers[-1].end() :]
        for line in rest.splitlines():
            if line.strip():
                return line.strip()
    lines = [line.strip() for line in plain.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def final_answer(text: str) -> FinalAnswer | None:
    """The reading of `text` (see the module's docstring), or None when it has no text at all."""
    cand = candidate(text)
    if not cand:
        return None
    bare = cand.strip(" \t")
    choice = _CHOICE_ALONE.match(bare) or _CHOICE_BRACKETED.match(bare)
    if choice and choice.group(1).isupper():
        return FinalAnswer("choice", choice.group(1))
    numbers = _NUMBER.findall(cand)
    if numbers:
        value = normalise_number(numbers[-1])
        if value is not None:
            return FinalAnswer("number", value)
    line = normalise_line(cand)
    return FinalAnswer("line", line) if line else None
