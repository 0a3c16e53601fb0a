"""The analysis schema and parser: the schema is checked against the metaschema here, once, so the
parser can use a validator built once per panel shape."""

from __future__ import annotations

import json

import jsonschema
import pytest

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
