"""How much two answers say the same thing, with no model call: the measure of `escalate`'s rule
"overlap". Pure.

The measure is the Jaccard similarity of the two answers' sets of content words: |A ∩ B| / |A ∪ B|,
from 0 (no word in common) to 1 (the same words). Words are read case-folded and NFKC-normalised,
numbers in their canonical form (final_answer.normalise_number: "42.0" and "42" are one word), and
a short list of English function words is left out so that "the answer is 41" and "the answer is
42" do not look alike through their grammar. Two empty answers are identical (1.0); an empty answer
and a non-empty one share nothing (0.0).

The run escalates when the similarity is below the threshold (EscalationSpec.threshold, default
spec.DEFAULT_OVERLAP_THRESHOLD = 0.5). That default is cautious: two short answers that agree share
most of their words (well above 0.5), while two paraphrases of one long answer often score 0.3–0.5 and
escalate, which costs a full run but never a worse answer. Lower it to escalate less on prose. Word
overlap cannot see that "41" and "42" differ in an otherwise identical sentence as clearly as rule
"final-answer" does; for checkable answers prefer that rule.
"""

from __future__ import annotations

import re
import unicodedata

from panelfuse.pipeline.final_answer import normalise_number

# Numbers (with their separators) first, then runs of letters: "3.5kg" is "3.5" and "kg".
_WORD = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+")
FUNCTION_WORDS = frozenset(
    """a an and are as at be been but by can could do does for from had has have how i if in into is it
    its may might must of on or so such than that the their them then there these they this those to
    was we were what when where which while who why will with would you your""".split()
)


def content_words(text: str) -> frozenset[str]:
    words = set()
    for word in _WORD.findall(unicodedata.normalize("NFKC", text).casefold()):
        if word[0].isdigit():
            word = normalise_number(word) or word
        elif word in FUNCTION_WORDS:
            continue
        words.add(word)
    return frozenset(words)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def overlap(a: str, b: str) -> float:
    """The similarity of two answers (see the module's docstring): symmetric, in [0, 1]."""
    return jaccard(content_words(a), content_words(b))
