"""The OpenAI adapter's fast reading of a network read's chunks (providers/openai_chunks.py): whatever
the chunks, it gives the events the general reading (parse_events, then each chunk as a dict) gives."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panelfuse.providers.base import StreamEvent
from panelfuse.providers.errors import BadResponseError
from panelfuse.providers.openai_chunks import read_chunks
from panelfuse.providers.openai_compat import OpenAICompatProvider, ToolCallAccumulator
from panelfuse.providers.sse import DONE, parse_events

PROVIDER = OpenAICompatProvider("p", "http://127.0.0.1:9")

small = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.text(max_size=3), st.just([]), st.just({}))
deltas = st.dictionaries(
    st.sampled_from(["content", "role", "refusal", "tool_calls", "annotations", "reasoning"]),
    small | st.text(min_size=1, max_size=4),
    max_size=3,
)
choices = st.fixed_dictionaries(
    {},
    optional={"delta": deltas | small, "index": small, "finish_reason": small, "logprobs": small},
)
# A text piece beside a key the adapter never reads, with an odd finish_reason or refusal: the general
# path fails on those, so the fast one must send the read there too.
odd_text_choice = st.fixed_dictionaries(
    {
        "delta": st.fixed_dictionaries(
            {"content": st.just("hi"), "reasoning": st.just("r")}, optional={"refusal": small}
        )
    },
    optional={"finish_reason": small, "index": small},
)
text_choice = st.fixed_dictionaries(
    {"delta": st.fixed_dictionaries({"content": st.text(max_size=4)}, optional={"role": small})},
    optional={"index": st.integers(0, 2), "finish_reason": st.none(), "logprobs": st.none()},
)
chunks = st.fixed_dictionaries(
    {"id": st.just("chatcmpl-1"), "object": st.just("chat.completion.chunk")},
    optional={
        "choices": st.lists(text_choice, min_size=1, max_size=1)
        | st.lists(odd_text_choice, min_size=1, max_size=1)
        | st.lists(choices | small, max_size=2)
        | small,
        "usage": small | st.just({"prompt_tokens": 3, "completion_tokens": 4}),
        "error": st.none() | st.just({"message": "boom"}),
    },
)


def merged(events: list[StreamEvent]) -> list[StreamEvent]:
    """Adjacent text-only events of one choice as one: how text is cut into events is not a difference."""
    out: list[StreamEvent] = []
    for ev in events:
        text_only = replace(ev, text="") == StreamEvent(index=ev.index)
        if out and text_only and replace(out[-1], text="") == StreamEvent(index=ev.index):
            out[-1] = replace(out[-1], text=out[-1].text + ev.text)
        elif not text_only or ev.text:
            out.append(ev)
    return out


def read(items: list) -> tuple[list[StreamEvent], bool, str | None]:
    tools: dict[int, ToolCallAccumulator] = {}
    events, ended, error = PROVIDER._batch_events(items, tools, "m")
    return merged(events), ended, None if error is None else str(error)


def general(events: list[tuple[str, bytes]]) -> list:
    return [item for _, item in parse_events(events, provider="p", model="m")]


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(st.lists(chunks, max_size=6), st.booleans())
def test_the_fast_reading_gives_the_events_of_the_general_one(batch, done):
    events = [("message", json.dumps(c).encode()) for c in batch] + ([("message", b"[DONE]")] if done else [])
    assert read(read_chunks(events, provider="p", model="m")) == read(general(events))


def _chunk(delta: dict, **extra: object) -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return json.dumps({**body, "choices": [{"index": 0, "delta": delta, "finish_reason": None}], **extra}).encode()


def test_a_streamed_answer_reads_as_text_pieces_and_only_the_rest_as_objects():
    events = [("message", _chunk({"role": "assistant", "content": ""}))]
    events += [("message", _chunk({"content": f" t{i}"})) for i in range(200)]
    events += [("message", json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).encode())]
    usage = {"prompt_tokens": 5, "completion_tokens": 200}
    events += [("message", json.dumps({"choices": [], "usage": usage}).encode())]
    events += [("message", b"[DONE]")]
    items = read_chunks(events, provider="p", model="m")
    assert items[1] == (0, "".join(f" t{i}" for i in range(200)))  # the pieces, joined
    assert [type(i) for i in (items[0], items[2], items[3])] == [dict, dict, dict] and items[4:] == [DONE]
    out, ended, error = PROVIDER._batch_events(items, {}, "m")
    assert ended and error is None
    assert out[0].text == "".join(f" t{i}" for i in range(200))
    assert out[1].finish_reason == "stop" and out[2].usage is not None and out[2].usage.completion_tokens == 200


def test_an_error_field_even_null_takes_the_general_path():
    items = read_chunks([("message", _chunk({"content": "x"}, error=None))], provider="p", model="m")
    assert isinstance(items[0], dict)
    _out, _ended, error = PROVIDER._batch_events(items, {}, "m")
    assert error is not None


@pytest.mark.parametrize(
    "datas",
    [
        [_chunk({"content": "a"}), b'{"b": 2}, {"c": 3}'],  # two values in one event
        [_chunk({"content": "a"}), b"[1]"],  # not an object
        [_chunk({"content": "a"}), b'{"choices": '],  # cut
        # a number orjson refuses, in a field the fast reading skips, in a chunk that is not a text piece
        [_chunk({"content": "a"}), b'{"choices": [], "created": 1e400}'],
        # nesting msgspec gives up on (past about 1,000 levels), in a field it would skip
        [_chunk({"content": "a"}), b'{"choices": [], "x": ' + b"[" * 1100 + b"]" * 1100 + b"}"],
    ],
)
def test_a_bad_chunk_is_a_bad_response(datas):
    with pytest.raises(BadResponseError):
        read_chunks([("message", d) for d in datas], provider="p", model="m")


def test_empty_data_is_left_out():
    events = [("message", _chunk({"content": "a"})), ("message", b"  "), ("message", _chunk({"content": "b"}))]
    items = read_chunks(events, provider="p", model="m")
    assert read(items) == ([StreamEvent(text="ab")], False, None)


@pytest.mark.parametrize("odd", [b'"finish_reason": false', b'"finish_reason": 0', b'"finish_reason": null, "x": 1'])
def test_a_text_piece_beside_an_unread_key_with_an_odd_field_is_malformed_as_before(odd):
    data = _chunk({"content": "a", "reasoning": "r", "refusal": False}).replace(b'"finish_reason": null', odd)
    fast = read(read_chunks([("message", data)], provider="p", model="m"))
    assert fast == read(general([("message", data)]))
    assert fast[2] is not None and "malformed" in fast[2]
