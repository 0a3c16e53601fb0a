"""The analysis: its bounded JSON schema, lenient parsing, and mapping labels back to model ids.

Bounding every list and string and making every `model` an enum of the labels means even a 135M
model under a llama.cpp grammar can only emit valid, attributable JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import json_repair
import jsonschema
import jsonschema_rs
from pydantic import BaseModel, ConfigDict, ValidationError

from panelfuse.spec import ANALYSIS_KEYS

REQUIRED_KEYS = ANALYSIS_KEYS[:5]  # anomalies and extra dimensions may be missing (read as empty)
MAX_ITEMS = 5
MAX_TEXT = 240


class _Item(BaseModel):
    model_config = ConfigDict(frozen=True)


class Stance(_Item):
    model: str
    stance: str
    member: str | None = None  # the label beside the model id (a model may sit on the panel twice)


class Contradiction(_Item):
    topic: str
    stances: list[Stance]


class PartialCoverage(_Item):
    models: list[str]
    point: str
    members: list[str] | None = None


class UniqueInsight(_Item):
    model: str
    insight: str
    member: str | None = None


class Anomaly(_Item):
    model: str
    reason: str
    member: str | None = None


class Analysis(BaseModel):
    """The judge's analysis, labels mapped to model ids. A spec's extra `dimensions` are extra fields
    (each a list of strings), kept in `model_extra`."""

    model_config = ConfigDict(frozen=True, extra="allow")

    consensus: list[str]
    contradictions: list[Contradiction]
    partial_coverage: list[PartialCoverage]
    unique_insights: list[UniqueInsight]
    blind_spots: list[str]
    anomalies: list[Anomaly] = []

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class AnalysisError(ValueError):
    """The judge's output could not be read as an analysis."""


def _text(max_length: int = MAX_TEXT) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length}


def _list(items: dict[str, Any], max_items: int = MAX_ITEMS) -> dict[str, Any]:
    return {"type": "array", "items": items, "maxItems": max_items}


def _obj(**props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def analysis_schema(labels: Sequence[str], dimensions: Sequence[str] = ()) -> dict[str, Any]:
    label = {"type": "string", "enum": list(labels)}
    props: dict[str, Any] = {
        "consensus": _list(_text()),
        "contradictions": _list(
            _obj(topic=_text(120), stances=_list(_obj(model=label, stance=_text(160)), max_items=len(labels)))
        ),
        "partial_coverage": _list(_obj(models=_list(label, max_items=len(labels)), point=_text())),
        "unique_insights": _list(_obj(model=label, insight=_text())),
        "blind_spots": _list(_text()),
        "anomalies": _list(_obj(model=label, reason=_text(160)), max_items=len(labels)),
    }
    for d in dimensions:
        props[d] = _list(_text())
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


@dataclass(frozen=True)
class _Validators:
    """The schema's checks for one panel shape: `fast` (jsonschema-rs, in Rust) says whether an analysis
    is valid; `full` (jsonschema) names the best error of one that is not, in the words the repair
    prompt and the logs use; `items` checks one list's items."""

    fast: Any
    full: Any
    items: dict[str, Any]


@lru_cache(maxsize=256)
def _validators(labels: tuple[str, ...], dimensions: tuple[str, ...]) -> _Validators:
    """Built once per panel shape. The schema is ours (tests check it against the metaschema once):
    `jsonschema.validate` re-checked it against the metaschema on every call, which was a third of a
    fusion's CPU under load; then the check itself, in Python, was 4 % (0.5 ms an analysis, 3 µs in Rust)."""
    schema = analysis_schema(labels, dimensions)
    items = {k: jsonschema.Draft202012Validator(v["items"]) for k, v in schema["properties"].items()}
    return _Validators(jsonschema_rs.Draft202012Validator(schema), jsonschema.Draft202012Validator(schema), items)


def response_format(schema: dict[str, Any], name: str = "analysis") -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@dataclass
class ParsedAnalysis:
    analysis: dict[str, Any]
    repaired: bool  # the text was not valid JSON as written (truncated, unquoted, fenced…)


# The analysis is four levels deep: deeper output is not an analysis, and parsing it (the standard
# library and json_repair both recurse) could exhaust the stack. Brackets are counted twice: outside
# strings (MAX_DEPTH), and all of them (MAX_RAW_DEPTH), as json_repair may read an unclosed quote
# differently than we do.
MAX_DEPTH = 32
MAX_RAW_DEPTH = 128
MAX_CANDIDATES = 64  # `{` positions tried when the object sits in prose
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.DOTALL)


def nesting_depth(text: str, *, in_strings: bool = False) -> int:
    """The deepest bracket nesting in `text`: outside JSON strings, or counting every bracket with
    `in_strings`. Unbalanced closers are ignored. Pure, iterative."""
    depth = deepest = 0
    quoted = escaped = False
    for ch in text:
        if quoted and not in_strings:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
            continue
        if ch == '"':
            quoted = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}" and depth:
            depth -= 1
    return deepest


def extract_json(text: str, keys: Sequence[str] = ()) -> tuple[Any, bool]:
    """The JSON value in a judge's output, and whether it had to be repaired or dug out of prose:
    the whole text, else a fenced block, else the first object in the prose (one with any of `keys`
    when given), else json_repair's best reading. Raises AnalysisError only, whatever the text."""
    deep = max(nesting_depth(text) - MAX_DEPTH, nesting_depth(text, in_strings=True) - MAX_RAW_DEPTH)
    if deep > 0:
        raise AnalysisError(f"the judge's output is nested deeper than {MAX_DEPTH} levels")
    try:
        return _extract(text, keys)
    except RecursionError as exc:  # guarded above; a parser's own limit must still not fail the run
        raise AnalysisError("the judge's output is nested too deeply to read") from exc
    except Exception as exc:  # json_repair is third-party: whatever it raises, the output is unreadable
        raise AnalysisError(f"the judge's output is not readable JSON ({type(exc).__name__})") from exc


def _extract(text: str, keys: Sequence[str]) -> tuple[Any, bool]:
    text = text.strip()
    try:
        return json.loads(text), False
    except ValueError:
        pass
    for block in _FENCE.findall(text):
        try:
            return json.loads(block.strip()), False
        except ValueError:
            continue
    found = _object_in_prose(text, keys)
    if found is not None:
        return found, True
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    start = text.find("{")
    # json_repair closes truncated output and fixes quotes/commas; it returns "" when hopeless.
    return json_repair.loads(text[start:] if start > 0 else text), True


def _object_in_prose(text: str, keys: Sequence[str]) -> dict[str, Any] | None:
    """The first JSON object written whole inside `text` (with one of `keys`, when given)."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    for _ in range(MAX_CANDIDATES):
        if start < 0:
            return None
        try:
            value, _end = decoder.raw_decode(text, start)
        except ValueError:
            value = None
        if isinstance(value, dict) and (not keys or any(k in value for k in keys)):
            return value
        start = text.find("{", start + 1)
    return None


def parse_analysis(text: str, labels: Sequence[str], dimensions: Sequence[str] = ()) -> ParsedAnalysis:
    """Read the judge's output (repairing it when needed) and check it against the schema.

    A key the judge left out (or lost to truncation) reads as an empty list: lists may be empty.
    """
    data, repaired = extract_json(text, ANALYSIS_KEYS)
    if not isinstance(data, dict) or not data:
        raise AnalysisError("the judge's output is not a JSON object")
    if not any(k in data for k in REQUIRED_KEYS):
        raise AnalysisError("the judge's output has none of the analysis keys")
    for key in (*REQUIRED_KEYS, "anomalies", *dimensions):
        data.setdefault(key, [])
    checks = _validators(tuple(labels), tuple(dimensions))
    # Judges often exceed bounds (long strings, extra items) without being wrong: trim, then validate.
    data = {k: v for k, v in data.items() if k in checks.items}
    _trim(data)
    if repaired:
        # Output cut by max_tokens ends in a half-written item that repair closed: drop such items.
        for key, value in data.items():
            if isinstance(value, list):
                data[key] = [v for v in value if checks.items[key].is_valid(v)]
    try:
        valid = checks.fast.is_valid(data)
    except ValueError:  # a string Rust cannot hold (a lone surrogate in a label or a key): ask the full check
        valid = False
    error = None if valid else jsonschema.exceptions.best_match(checks.full.iter_errors(data))
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise AnalysisError(f"analysis invalid at {path}: {error.message[:200]}")
    return ParsedAnalysis(data, repaired)


def _trim(value: Any) -> Any:
    if isinstance(value, dict):
        for k, v in value.items():
            value[k] = _trim(v)
    elif isinstance(value, list):
        del value[MAX_ITEMS:]
        for i, v in enumerate(value):
            value[i] = _trim(v)
    elif isinstance(value, str) and len(value) > MAX_TEXT:
        return value[: MAX_TEXT - 1] + "…"
    return value


def map_labels(analysis: Mapping[str, Any], label_models: Mapping[str, str]) -> Analysis:
    """Replace labels by model ids everywhere, keeping the label beside it as `member`/`members`
    (a model may sit on the panel twice, so the label alone tells the members apart)."""

    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            out = {k: convert(v) for k, v in value.items()}
            if isinstance(value.get("model"), str) and value["model"] in label_models:
                out["member"] = value["model"]
                out["model"] = label_models[value["model"]]
            if isinstance(value.get("models"), list):
                out["members"] = list(value["models"])
                out["models"] = [label_models.get(x, x) for x in value["models"]]
            return out
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    try:
        return Analysis.model_validate(convert(dict(analysis)))
    except ValidationError as exc:  # an analysis the schema let through must still be readable
        raise AnalysisError(f"analysis unreadable: {exc.errors()[0].get('msg')}") from exc


def split_judge_writes(text: str, marker: str) -> tuple[str, str | None]:
    """Split a judge-writes output into (analysis text, answer); answer None when no marker yet."""
    head, sep, tail = text.partition(marker)
    return (head, tail.lstrip("\n")) if sep else (text, None)


BEST_OF_SCHEMA_REASON_MAX = 200


def best_of_schema(labels: Sequence[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "best": {"type": "string", "enum": list(labels)},
            "reason": {"type": "string", "maxLength": BEST_OF_SCHEMA_REASON_MAX},
        },
        "required": ["best", "reason"],
        "additionalProperties": False,
    }


def best_of_choice(text: str, labels: Sequence[str]) -> tuple[str, str]:
    """(label, reason) from a best-of judge output; falls back to the first label named in the text."""
    try:
        data, _ = extract_json(text, ("best",))
    except AnalysisError:
        data = None  # the label may still be named in free text
    if isinstance(data, dict) and data.get("best") in labels:
        return data["best"], str(data.get("reason") or "")
    for token in text.replace('"', " ").split():
        if token.strip(".,:;") in labels:
            return token.strip(".,:;"), "label found in free text"
    raise AnalysisError("the judge named no valid label")
