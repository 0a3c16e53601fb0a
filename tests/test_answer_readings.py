"""The pure readings behind `escalate` and `vote`: the final-answer normaliser, the overlap measure, the
vote tally and the judge's strict verdict and groups. Examples, then properties (hypothesis)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from panelfuse.pipeline.agreement import content_words, overlap
from panelfuse.pipeline.analysis import AnalysisError
from panelfuse.pipeline.final_answer import final_answer, normalise_number
from panelfuse.pipeline.tally import group_by_reading, tally
from panelfuse.pipeline.verdicts import parse_groups, parse_verdict

# --- the final-answer normaliser --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("The answer is 42.", "number", "42"),
        ("42", "number", "42"),
        ("Let me think.\nSo 6 x 7 = 42", "number", "42"),
        ("Final answer: **1,000.50**", "number", "1000.5"),
        ("It is 6 / 8 of the cake", "number", "3/4"),
        ("thus $\\boxed{7}$ and not 8", "number", "7"),
        ("-0.0", "number", "0"),
        ("+3", "number", "3"),
        ("The answer is (C) because the others fail.", "choice", "C"),
        ("B", "choice", "B"),
        ("Option D.", "choice", "D"),
        ("A dog barks.", "line", "a dog barks"),
        ("The answer is:\n\n  Paris.", "line", "paris"),
        ("«Paris»", "line", "paris"),
    ],
)
def test_final_answer_examples(text, kind, value):
    reading = final_answer(text)
    assert reading is not None and (reading.kind, reading.value) == (kind, value)


def test_final_answer_of_nothing_is_none():
    assert final_answer("") is None and final_answer("  \n\t ") is None and final_answer("**") is None


def test_the_same_answer_worded_differently_reads_alike():
    assert final_answer("The answer is 42.") == final_answer("42") == final_answer("answer = 42.0")
    assert final_answer("The answer is 42.") != final_answer("The answer is 41.")
    assert final_answer("The answer is (C)") == final_answer("C")


def test_normalise_number():
    assert normalise_number("1,000") == "1000" and normalise_number("12.500") == "12.5"
    assert normalise_number("4/2") == "2" and normalise_number("1/0") is None and normalise_number("x") is None


@given(st.text(max_size=300))
@settings(max_examples=300)
def test_final_answer_never_raises_and_is_idempotent(text):
    reading = final_answer(text)
    if reading is not None:
        assert reading.value  # never an empty reading
        again = final_answer(reading.value)
        # A number or a choice reads back as itself.
        assert reading.kind == "line" or (again is not None and again.value == reading.value)


@given(st.integers(-(10**12), 10**12), st.sampled_from(["", "The answer is ", "So: ", "Final answer: "]))
def test_an_integer_reads_as_itself_whatever_the_preamble(n, preamble):
    reading = final_answer(f"{preamble}{n}.")
    assert reading is not None and reading.kind == "number" and reading.value == str(n)


@given(st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-1000, max_value=1000))
def test_a_decimal_and_its_padded_form_read_alike(d):
    assert final_answer(f"{d}") == final_answer(f"{d}000")


# --- the overlap measure ----------------------------------------------------------------------------


def test_overlap_examples():
    assert overlap("Rayleigh scattering.", "rayleigh SCATTERING") == 1.0
    assert overlap("The answer is 41.", "The answer is 42.") == pytest.approx(1 / 3)
    assert overlap("", "") == 1.0 and overlap("", "word") == 0.0
    assert content_words("The cost is 1,000.0 dollars") == {"cost", "1000", "dollars"}


words = st.lists(st.sampled_from(["sky", "blue", "red", "the", "is", "42", "42.0", "light", "Sky", "BLUE"]), max_size=8)


@given(words, words)
def test_overlap_is_symmetric_and_bounded(a, b):
    x, y = " ".join(a), " ".join(b)
    assert overlap(x, y) == overlap(y, x)
    assert 0.0 <= overlap(x, y) <= 1.0


@given(st.text(max_size=200))
def test_an_answer_overlaps_itself_fully(text):
    assert overlap(text, text) == 1.0


@given(words)
def test_overlap_ignores_order_case_and_punctuation(a):
    x = " ".join(a)
    y = ", ".join(reversed([w.upper() for w in a])) + "!"
    assert overlap(x, y) == 1.0


# --- the vote tally ---------------------------------------------------------------------------------


def test_the_majority_wins():
    readings = {"A": "42", "B": "41", "C": "42"}
    t = tally(group_by_reading(readings, "ABC"), readings, "ABC", {}, "normalise")
    assert t.winner == "A" and t.tie is False
    assert [(g.answer, g.members, g.votes) for g in t.groups] == [("42", ("A", "C"), 2), ("41", ("B",), 1)]


def test_a_tie_goes_to_the_earliest_member():
    readings = {"A": "41", "B": "42", "C": "42", "D": "41"}
    t = tally(group_by_reading(readings, "ABCD"), readings, "ABCD", {}, "normalise")
    assert t.tie is True and t.winner == "A"
    # Order of the groups given does not matter: the panel order decides.
    t2 = tally([["C", "B"], ["D", "A"]], readings, "ABCD", {}, "judge")
    assert t2.winner == "A" and t2.groups[0].members == ("A", "D")


def test_weights_outvote_numbers():
    readings = {"A": "1", "B": "2", "C": "2"}
    t = tally(group_by_reading(readings, "ABC"), readings, "ABC", {"A": 3.0}, "normalise")
    assert t.winner == "A" and t.groups[0].weight == 3.0 and t.tie is False
    even = tally(group_by_reading(readings, "ABC"), readings, "ABC", {"A": 2.0}, "normalise")
    assert even.winner == "B" and even.tie is False  # equal weight: more votes win


def test_float_weights_tie_exactly():
    readings = {"A": "x", "B": "y", "C": "y"}
    t = tally(group_by_reading(readings, "ABC"), readings, "ABC", {"A": 0.3, "B": 0.1, "C": 0.2}, "normalise")
    assert t.groups[0].members == ("B", "C") and t.tie is False  # same weight, more votes


def test_a_tally_needs_an_answer():
    with pytest.raises(ValueError):
        tally([], {}, [], {}, "normalise")


@given(st.lists(st.sampled_from(["1", "2", "3"]), min_size=1, max_size=8))
def test_tally_properties(values):
    order = "ABCDEFGH"[: len(values)]
    readings = dict(zip(order, values, strict=True))
    t = tally(group_by_reading(readings, order), readings, order, {}, "normalise")
    counts = {v: values.count(v) for v in values}
    assert t.groups[0].votes == max(counts.values())
    assert sorted(m for g in t.groups for m in g.members) == list(order)
    # The winner is the earliest member among the most-voted answers.
    best = [label for label in order if counts[readings[label]] == max(counts.values())]
    assert t.winner == best[0]
    assert t.tie == (sum(1 for c in counts.values() if c == max(counts.values())) > 1)


# --- the judge's strict readings --------------------------------------------------------------------


def test_verdict_is_strict():
    assert parse_verdict('{"verdict": "sure", "reason": "ok"}').sure is True
    assert parse_verdict('```json\n{"verdict": "unsure", "reason": "hedges"}\n```').sure is False
    for bad in ('{"verdict": "probably"}', "sure", '["sure"]', 'The verdict: {"verdict": "sure"}', ""):
        with pytest.raises(AnalysisError):
            parse_verdict(bad)


def test_groups_are_strict():
    assert parse_groups('{"groups": [["A", "C"], ["B"]]}', ["A", "B", "C"]) == [["A", "C"], ["B"]]
    for bad in (
        '{"groups": [["A", "C"]]}',  # B missing
        '{"groups": [["A", "B"], ["B", "C"]]}',  # B twice
        '{"groups": [["A", "B", "C", "D"]]}',  # D answered nothing
        '{"groups": [["A", "B", "C"], []]}',  # an empty group
        '{"groups": "A B C"}',
        "A, B and C agree",
    ):
        with pytest.raises(AnalysisError):
            parse_groups(bad, ["A", "B", "C"])


@given(st.text(max_size=200))
def test_the_strict_parsers_raise_only_their_error(text):
    for parse in (parse_verdict, lambda t: parse_groups(t, ["A", "B"])):
        try:
            parse(text)
        except AnalysisError:
            pass


@given(st.permutations(["A", "B", "C", "D"]), st.integers(1, 4))
def test_any_partition_of_the_labels_reads_back(labels, cut):
    groups = [labels[:cut], labels[cut:]] if cut < 4 else [labels]
    assert parse_groups(json.dumps({"groups": groups}), ["A", "B", "C", "D"]) == groups
