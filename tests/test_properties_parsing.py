"""Property tests (hypothesis) of what reads upstream output: the SSE decoder and event parsing
(providers/sse.py), the adapters' chunk reading, and the judge's JSON extraction
(pipeline/analysis.py). Whatever the input, each raises only its documented error."""

from __future__ import annotations

import itertools
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panelfuse.pipeline.analysis import (
    ANALYSIS_KEYS,
    AnalysisError,
    best_of_choice,
    extract_json,
    parse_analysis,
)
from panelfuse.providers.errors import BadResponseError
from panelfuse.providers.openai_compat import OpenAICompatProvider, ToolCallAccumulator
from panelfuse.providers.sse import DONE, SSEDecoder, SSEError, parse_events

# --- the SSE decoder -----------------------------------------------------------------------------------

json_objects = st.dictionaries(
    st.text(max_size=8),
    st.one_of(st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.text(max_size=20)),
    max_size=4,
)
event_names = st.sampled_from(["", "message_start", "content_block_delta", "ping"])


def encode(events: list[tuple[str, dict]]) -> bytes:
    out = []
    for name, obj in events:
        head = f"event: {name}\n" if name else ""
        out.append(f"{head}data: {json.dumps(obj)}\n\n")
    return "".join(out).encode() + b"data: [DONE]\n\n"


def decode_in(stream: bytes, cuts: list[int]) -> list:
    decoder = SSEDecoder()
    bounds = [0, *sorted(set(cuts)), len(stream)]
    events = []
    for start, end in itertools.pairwise(bounds):
        events += parse_events(decoder.feed(stream[start:end]), provider="p", model="m")
    return events


@given(st.lists(st.tuples(event_names, json_objects), max_size=12), st.data())
def test_any_split_of_a_valid_stream_decodes_to_the_same_events(events, data):
    stream = encode(events)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    expected = [(name or "message", obj) for name, obj in events] + [("message", DONE)]
    assert decode_in(stream, cuts) == expected
    assert decode_in(stream.replace(b"\n", b"\r\n"), [c * 2 for c in cuts]) == expected  # CRLF too


@given(st.lists(st.binary(max_size=64), max_size=10))
def test_arbitrary_bytes_never_raise_from_the_decoder(reads):
    decoder = SSEDecoder()
    for chunk in reads:
        for name, data in decoder.feed(chunk):
            assert isinstance(name, str) and isinstance(data, bytes)


@given(st.binary(min_size=65, max_size=200).map(lambda b: b.replace(b"\n", b"a").replace(b"\r", b"a")))
def test_a_line_past_the_cap_is_the_decoders_one_error(line):
    decoder = SSEDecoder(max_line=64)
    try:
        decoder.feed(line)
    except SSEError:
        return
    raise AssertionError("a line past max_line was buffered")


@given(st.lists(st.tuples(event_names, st.binary(max_size=40)), max_size=8))
def test_parsing_arbitrary_event_data_raises_only_bad_response(events):
    try:
        items = parse_events(events, provider="p", model="m")
    except BadResponseError:
        return
    assert all(isinstance(obj, dict) or obj == DONE for _, obj in items)


# --- the OpenAI adapter's reading of a chunk: any JSON object, and only BadResponseError ---------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=3)),
    max_leaves=12,
)
chunk_keys = st.sampled_from(["choices", "usage", "delta", "content", "index", "finish_reason", "tool_calls"])
chunks = st.dictionaries(chunk_keys, json_values, max_size=3)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(chunks, max_size=4))
def test_any_chunk_is_read_or_is_a_bad_response(batch):
    provider = OpenAICompatProvider("p", "http://127.0.0.1:9")
    tools: dict[int, ToolCallAccumulator] = {}
    _events, _ended, error = provider._batch_events(batch, tools, "m")
    assert error is None or "malformed response from upstream" in str(error)
    for ev in _events:
        assert isinstance(ev.text, str) and (ev.refusal is None or isinstance(ev.refusal, str))


# --- the judge's JSON ------------------------------------------------------------------------------------

LABELS = ["A", "B", "C"]
texts = st.one_of(
    st.text(max_size=300),
    st.text(alphabet='[]{}",:0123456789eE.-truefalsn \\', max_size=300),
    st.integers(1, 3000).map(lambda n: "[" * n),
    st.integers(1, 3000).map(lambda n: '{"consensus": ' + "[" * n),
    st.integers(1, 3000).map(lambda n: '"' + "{" * n),
    st.integers(1, 400).map(lambda n: "9" * (n * 20)),
    st.integers(1, 400).map(lambda n: '{"consensus": [1e' + "9" * n + "]}"),
)


@settings(max_examples=200, deadline=None)
@given(texts)
def test_any_judge_output_parses_or_is_an_analysis_error(text):
    for read in (
        lambda: parse_analysis(text, LABELS),
        lambda: extract_json(text, ANALYSIS_KEYS),
        lambda: best_of_choice(text, LABELS),
    ):
        try:
            read()
        except AnalysisError:
            pass


items = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=40)
analyses = st.fixed_dictionaries(
    {
        "consensus": st.lists(items, max_size=3),
        "contradictions": st.just([]),
        "partial_coverage": st.just([]),
        "unique_insights": st.lists(
            st.fixed_dictionaries({"model": st.sampled_from(LABELS), "insight": items}), max_size=2
        ),
        "blind_spots": st.lists(items, max_size=2),
        "anomalies": st.just([]),
    }
)
prose = st.text(alphabet=st.characters(blacklist_characters="{}`", blacklist_categories=["Cs"]), max_size=80)


@settings(max_examples=150, deadline=None)
@given(analyses, prose, prose, st.sampled_from(["plain", "fenced", "fenced-json"]), st.booleans())
def test_a_valid_analysis_in_prose_or_fences_is_found(analysis, before, after, wrap, indent):
    body = json.dumps(analysis, indent=2 if indent else None, ensure_ascii=False)
    if wrap == "fenced":
        body = f"```\n{body}\n```"
    elif wrap == "fenced-json":
        body = f"```json\n{body}\n```"
    parsed = parse_analysis(f"{before}{body}{after}", LABELS)
    assert parsed.analysis["consensus"] == analysis["consensus"]
    assert parsed.analysis["unique_insights"] == analysis["unique_insights"]


@given(analyses, st.text(alphabet="{}[] abc", max_size=30))
def test_stray_braces_in_the_prose_do_not_hide_the_analysis(analysis, noise):
    parsed = parse_analysis(f"Note {noise}.\n{json.dumps(analysis)}\nThanks", LABELS)
    assert parsed.analysis["consensus"] == analysis["consensus"]


# --- the fast paths: the same answers as the plain rules -----------------------------------------------


class _GeneralDecoder(SSEDecoder):
    """The decoder with its one-`data:`-line fast path turned off: the WHATWG rules line by line."""

    def _data_lines(self, buffer: bytes) -> None:
        return None


# Mostly whole one-line `data:` events (the fast path's case), with pieces of everything else among them.
sse_pieces = st.one_of(
    st.sampled_from([b'data: {"a": 1}\n\n', b"data: [DONE]\n\n", b'data: {"b": "cd"}\n\n']),
    st.sampled_from([b"data: ", b"data:", b'{"a": 1}', b"\n", b"\n\n", b"\r\n", b"\r", b"event: ping\n", b": hi\n"]),
)


@given(st.lists(sse_pieces, max_size=40), st.data())
def test_the_decoders_fast_path_reads_any_bytes_as_the_line_rules_do(pieces, data):
    stream = b"".join(pieces)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=8))))
    fast, general = SSEDecoder(max_line=24, fast_path_bytes=0), _GeneralDecoder(max_line=24)
    for start, end in itertools.pairwise([0, *cuts, len(stream)]):
        outcomes = []
        for decoder in (fast, general):
            try:
                outcomes.append(decoder.feed(stream[start:end]))
            except SSEError:
                outcomes.append("SSEError")
        assert outcomes[0] == outcomes[1]
        if outcomes[0] == "SSEError":
            return


def _plain_token_reference(chunk: dict) -> tuple[int, str] | None:
    """plain_token's rule written out level by level (its first version): the fast one must agree."""
    choices = chunk.get("choices")
    if chunk.get("usage") or type(choices) is not list or len(choices) != 1:
        return None
    choice = choices[0]
    if type(choice) is not dict or choice.get("finish_reason") or choice.get("logprobs"):
        return None
    delta = choice.get("delta")
    if type(delta) is not dict:
        return None
    text = delta.get("content")
    if not text or type(text) is not str:
        return None
    for key, value in delta.items():
        if value and key != "content" and key != "role":
            return None
    index = choice.get("index") or 0
    return (index, text) if type(index) is int else None


small_values = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.text(max_size=3), st.just([]), st.just({}))
deltas = st.dictionaries(st.sampled_from(["content", "role", "refusal", "tool_calls", "x"]), small_values, max_size=3)
choice_objects = st.fixed_dictionaries(
    {},
    optional={
        "delta": deltas | small_values,
        "index": small_values,
        "finish_reason": small_values,
        "logprobs": small_values,
    },
)
chunk_objects = st.fixed_dictionaries(
    {},
    optional={
        "choices": st.lists(choice_objects | small_values, max_size=2) | small_values | st.just({"a": {}}),
        "usage": small_values,
        "id": st.text(max_size=3),
    },
)


# Chunks near the plain shape: a text delta, with now and then another key, a finish, a second choice…
near_plain = st.fixed_dictionaries(
    {
        "choices": st.lists(
            st.fixed_dictionaries(
                {
                    "delta": st.fixed_dictionaries(
                        {"content": st.text(max_size=3)}, optional={"role": small_values, "refusal": small_values}
                    )
                },
                optional={"index": small_values, "finish_reason": small_values, "logprobs": small_values},
            ),
            min_size=1,
            max_size=2,
        )
    },
    optional={"usage": small_values},
)


@given(chunk_objects | near_plain)
def test_plain_token_agrees_with_its_rule_written_out(chunk):
    from panelfuse.providers.openai_compat import plain_token

    assert plain_token(chunk) == _plain_token_reference(chunk)
