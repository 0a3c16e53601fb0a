"""The analysis schema and parser: the schema is checked against the metaschema here, once, so the
parser can use a validator built once per panel shape."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from panelfuse.pipeline.analysis import AnalysisError, _validators, analysis_schema, parse_analysis
from pipeline_helpers import analysis_for


@pytest.mark.parametrize(("labels", "dims"), [(["A"], ()), (["A", "B", "C"], ()), (["A", "B"], ("risks",))])
def test_schema_is_valid_against_the_metaschema(labels, dims):
    jsonschema.Draft202012Validator.check_schema(analysis_schema(labels, dims))


def test_a_valid_analysis_parses_as_written():
    parsed = parse_analysis(json.dumps(analysis_for(["A", "B"])), ["A", "B"])
    assert parsed.analysis == analysis_for(["A", "B"])
    assert not parsed.repaired


def test_an_unknown_label_is_reported_with_its_path():
    bad = analysis_for(["A", "B"])
    bad["unique_insights"] = [{"model": "Z", "insight": "from nowhere"}]
    with pytest.raises(AnalysisError, match="unique_insights/0/model"):
        parse_analysis(json.dumps(bad), ["A", "B"])


def test_truncated_output_keeps_the_whole_items_and_drops_the_half_written_one():
    text = json.dumps(analysis_for(["A", "B"]))
    cut = text[: text.index('"point"') + 3]  # inside partial_coverage's only item
    parsed = parse_analysis(cut, ["A", "B"])
    assert parsed.repaired
    assert parsed.analysis["consensus"] == ["the sky scatters blue light"]
    assert parsed.analysis["partial_coverage"] == []


def test_the_validator_is_built_once_per_panel_shape():
    assert _validators(("A", "B"), ()) is _validators(("A", "B"), ())
    assert _validators(("A", "B"), ()) is not _validators(("A", "B", "C"), ())


def _mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    # One in 20 bad (one_of would pick each branch equally often; 7 is a value integers() does not favour).
    return st.tuples(good, bad, st.integers(0, 19)).map(lambda t: t[1] if t[2] == 7 else t[0])


# Analyses near the schema: each leaf now and then out of bounds (an unknown label, an empty or long
# text, a number), so both valid and invalid ones come up.
_label = _mostly(st.sampled_from(["A", "B", "C"]), st.sampled_from(["Z", "", 1, None, "\ud800"]))
_text = _mostly(st.text(min_size=1, max_size=4), st.sampled_from(["", "x" * 201, "é" * 200, 7, None, "\udfff"]))


def _obj(**fields: st.SearchStrategy) -> st.SearchStrategy:
    odd = st.sampled_from(["extra", "\ud800"])  # an unknown key, or one Rust cannot hold
    return _mostly(
        st.fixed_dictionaries(fields), st.fixed_dictionaries(fields).flatmap(lambda d: odd.map(lambda k: {**d, k: "x"}))
    )


def _list(items: st.SearchStrategy, max_size: int = 2) -> st.SearchStrategy:
    return st.lists(items, max_size=max_size)


_analyses = st.fixed_dictionaries(
    {
        "consensus": _list(_text),
        "contradictions": _list(_obj(topic=_text, stances=_list(_obj(model=_label, stance=_text), 4))),
        "partial_coverage": _list(_obj(models=_list(_label, 4), point=_text)),
        "unique_insights": _list(_obj(model=_label, insight=_text)),
        "blind_spots": _mostly(_list(_text), _text),
        "anomalies": _list(_obj(model=_label, reason=_text), 4),
    },
    optional={"risks": _list(_text)},
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_analyses, st.sampled_from([(("A", "B", "C"), ()), (("A", "B"), ("risks",))]))
def test_the_fast_check_and_the_full_one_agree(data, shape):
    checks = _validators(*shape)
    valid = checks.full.is_valid(data)
    event(f"valid: {valid}")  # both kinds come up (`pytest --hypothesis-show-statistics`)
    try:
        assert checks.fast.is_valid(data) == valid
    except ValueError:  # a lone surrogate where Rust needs a str (a label, a key): parse_analysis asks `full`
        event("fast check refused the input")
        assert not valid
    text = json.dumps({k: v for k, v in data.items()})
    try:
        parse_analysis(text, list(shape[0]), shape[1])
    except AnalysisError:
        pass  # the one error parse_analysis raises, whatever the verdict's source


@pytest.mark.parametrize("value", ["1" + "0" * 30, "NaN", "1e400", '"\\ud800 x"'])
def test_values_json_allows_but_rust_may_not_hold_are_checked_without_a_crash(value):
    text = (
        '{"consensus": ['
        + value
        + '], "contradictions": [], "partial_coverage": [], '
        + ('"unique_insights": [], "blind_spots": []}')
    )
    try:
        parsed = parse_analysis(text, ["A", "B"])
    except AnalysisError:
        return  # a number where a string belongs: the analysis is invalid, said the usual way
    assert parsed.analysis["consensus"] == [json.loads(value)]  # the lone surrogate is still a string


@pytest.mark.parametrize(
    "item", ['{"model": "\\ud800", "insight": "x"}', '{"model": "A", "insight": "x", "\\ud800": 1}']
)
def test_a_lone_surrogate_where_rust_needs_a_string_is_an_analysis_error(item):
    text = '{"consensus": [], "contradictions": [], "partial_coverage": [], "blind_spots": [], '
    with pytest.raises(AnalysisError, match="unique_insights/0"):
        parse_analysis(text + '"unique_insights": [' + item + "]}", ["A", "B"])
