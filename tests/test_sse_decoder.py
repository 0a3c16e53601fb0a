"""The upstream SSE decoder (providers/sse.py) and the joining of text that arrived together
(providers/base.py::TextRun): pure, checked on examples and with hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from panelfuse.providers.base import StreamEvent, TextRun
from panelfuse.providers.errors import BadResponseError
from panelfuse.providers.sse import DONE, SSEDecoder, parse_data, parse_events


def decode(*reads: bytes) -> list[tuple[str, str]]:
    decoder = SSEDecoder()
    return [(name, data.decode()) for r in reads for name, data in decoder.feed(r)]


def test_events_named_multiline_and_comments():
    stream = b': hello\n\nevent: message_start\ndata: {"a": 1}\n\ndata: one\ndata: two\n\ndata: [DONE]\n\n'
    assert decode(stream) == [("message_start", '{"a": 1}'), ("message", "one\ntwo"), ("message", "[DONE]")]


def test_crlf_split_across_reads():
    assert decode(b"data: x\r", b"\n\r\n") == [("message", "x")]
    # a CR alone ends a line too; a last CR waits for the next read (it may be half of a CRLF)
    assert decode(b"data: x\r\r", b"data: y\r\r") == [("message", "x")]


def test_an_unfinished_event_is_held_until_its_blank_line():
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a"') == []
    assert decoder.feed(b": 1}\n") == []
    assert decoder.feed(b"\n") == [("message", b'{"a": 1}')]


def test_parse_data():
    assert parse_data(b" [DONE] ", provider="p", model="m") == DONE
    assert parse_data(b"", provider="p", model="m") is None
    assert parse_data(b' {"x": [1]}\n', provider="p", model="m") == {"x": [1]}
    for bad in (b"{oops", b"[1, 2]", b"[" * 5000, b'"text"'):
        with pytest.raises(BadResponseError):
            parse_data(bad, provider="p", model="m")


_text = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40)
_events = st.lists(
    st.tuples(st.sampled_from(["", "delta", "ping"]), st.lists(_text, min_size=1, max_size=3)), max_size=8
)


@given(events=_events, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12), crlf=st.booleans())
def test_any_split_of_the_bytes_gives_the_same_events(events, cuts, crlf):
    nl = "\r\n" if crlf else "\n"
    text = "".join(
        (f"event: {name}{nl}" if name else "") + "".join(f"data: {line}{nl}" for line in lines) + nl
        for name, lines in events
    )
    raw = text.encode()
    expected = [(name or "message", "\n".join(lines)) for name, lines in events]
    assert decode(raw) == expected
    points = sorted({min(c, len(raw)) for c in cuts})
    pieces = [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]
    assert decode(*pieces) == expected


@given(st.lists(st.tuples(st.integers(0, 2), st.text(min_size=1, max_size=5)), max_size=20))
def test_text_run_keeps_each_choices_text_and_its_order(pieces):
    out: list[StreamEvent] = []
    run = TextRun(out)
    for index, text in pieces:
        run.add(index, text)
    run.close()
    for index in range(3):
        assert "".join(e.text for e in out if e.index == index) == "".join(t for i, t in pieces if i == index)
    # one event per run of consecutive pieces of one choice
    runs = sum(1 for k, (i, _) in enumerate(pieces) if k == 0 or pieces[k - 1][0] != i)
    assert len(out) == runs


def test_text_run_hands_on_what_it_holds_when_something_else_comes():
    out: list[StreamEvent] = []
    run = TextRun(out)
    run.add(0, "a")
    run.add(0, "b")
    run.close()
    out.append(StreamEvent(finish_reason="stop"))
    run.close()  # nothing held: nothing added
    assert [(e.text, e.finish_reason) for e in out] == [("ab", None), ("", "stop")]


def test_plain_token_takes_only_chunks_that_carry_nothing_but_text():
    from panelfuse.providers.openai_compat import plain_token

    def chunk(delta, **choice):
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": None, **choice}]}

    assert plain_token(chunk({"content": "hi"})) == (0, "hi")
    assert plain_token(chunk({"role": "assistant", "content": "hi", "refusal": None})) == (0, "hi")
    assert plain_token({"choices": [{"index": 2, "delta": {"content": "x"}}]}) == (2, "x")
    for other in (
        chunk({"content": ""}),
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "hi"}, finish_reason="stop"),
        chunk({"content": "hi"}, logprobs={"content": [{"token": "hi"}]}),
        chunk({"content": "hi", "tool_calls": [{"index": 0}]}),
        chunk({"content": "hi", "annotations": [{"type": "url_citation"}]}),
        chunk({"refusal": "no"}),
        {**chunk({"content": "hi"}), "usage": {"prompt_tokens": 1}},
        {"choices": [chunk({"content": "a"})["choices"][0], chunk({"content": "b"})["choices"][0]]},
        {"choices": ["x"]},
        {"choices": [{"delta": {"content": 5}}]},
        {"choices": [{"index": "0", "delta": {"content": "hi"}}]},
    ):
        assert plain_token(other) is None, other


_objects = st.lists(
    st.dictionaries(st.text(max_size=5), st.integers(-(2**60), 2**60) | st.text(max_size=8) | st.none(), max_size=3),
    max_size=6,
)


@given(objects=_objects, done=st.booleans())
def test_events_parsed_together_equal_events_parsed_one_by_one(objects, done):
    import orjson

    events = [("message", orjson.dumps(o)) for o in objects] + ([("message", b"[DONE]")] if done else [])
    one_by_one = [(n, parse_data(d, provider="p", model="m")) for n, d in events]
    assert parse_events(events, provider="p", model="m") == one_by_one


@pytest.mark.parametrize(
    "datas",
    [
        [b'{"a": 1}', b'{"b": 2}, {"c": 3}'],  # two values in one event
        [b'{"a": 1}', b"[1]"],  # not an object
        [b'{"a": 1}', b'{"b": '],  # cut
        [b'{"a": 1}', b"oops", b"[DONE]"],
    ],
)
def test_a_bad_event_among_good_ones_is_named(datas):
    with pytest.raises(BadResponseError):
        parse_events([("message", d) for d in datas], provider="p", model="m")


def test_empty_data_is_left_out():
    events = [("message", b'{"a": 1}'), ("message", b"  "), ("message", b'{"b": 2}')]
    assert parse_events(events, provider="p", model="m") == [("message", {"a": 1}), ("message", {"b": 2})]
