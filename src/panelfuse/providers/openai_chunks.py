"""Reading the chunks of one network read of an OpenAI chat-completions stream, fast.

A streamed answer is mostly chunks that carry one piece of one choice's text. All the chunks of a read
are decoded in one msgspec call into small typed views that keep only the fields that decide whether a
chunk is such a piece: the id, model, created… are skipped in C, nothing per chunk is left for the
garbage collector to track, and the plain pieces never become dicts. Any other chunk (a role, tool
calls, a finish, usage, an error…) is parsed again as a JSON object for the adapter's general path. A
read whose chunks do not all fit the views (a malformed one, an empty data field…) is parsed the
general way, which names the bad one. Profile and figures: docs/performance.md."""

from __future__ import annotations

from typing import Any

import msgspec

from panelfuse.providers.sse import DONE, data_of, parse_data, parse_events, trailing_done

# A chunk's reading: (choice index, text) for pieces of one choice's text (those of consecutive chunks
# joined), else the chunk's JSON object, or DONE.
ChunkItem = tuple[int, str] | dict[str, Any] | str


class _Delta(msgspec.Struct, gc=False):
    # Only what the general path reads besides the text: with any of these set, it is not a plain piece.
    # `refusal` and the choice's `finish_reason` are typed as the general path requires them, so a
    # read where one is anything else goes the general way and fails there as it always did.
    content: Any = None
    tool_calls: Any = None
    refusal: str | None = None
    annotations: Any = None


class _Choice(msgspec.Struct, gc=False):
    delta: _Delta | None = None
    index: Any = 0
    finish_reason: str | None = None
    logprobs: Any = None


class _Chunk(msgspec.Struct, gc=False):
    choices: list[_Choice] = []
    usage: Any = None
    error: Any = msgspec.UNSET  # present at all (even null) sends the chunk to the general path


_VIEWS = msgspec.json.Decoder(list[_Chunk])
UNSET = msgspec.UNSET


def read_chunks(events: list[tuple[str, bytes]], *, provider: str, model: str) -> list[ChunkItem]:
    """The events of one read as ChunkItems, in order (events with empty data are left out, as
    `parse_events` does). Raises BadResponseError as `parse_events` does. Pure."""
    done = trailing_done(events)
    head = events[: len(events) - done]
    views: list[_Chunk] | None = None
    if head:
        try:
            views = _VIEWS.decode(b"[" + b",".join(map(data_of, head)) + b"]")
        except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError: not the views' shape
            views = None  # (msgspec gives up on nesting deeper than about 1,000 levels, even where it skips)
        if views is not None and len(views) != len(head):
            views = None  # an event held no value or two: the general way finds which
    if views is None:
        return [item for _, item in parse_events(events, provider=provider, model=model)]
    # The rule of `openai_compat.plain_token`, inline (it runs once per token), except that delta fields
    # the adapter never reads are not looked at; consecutive pieces of one choice are joined here.
    out: list[ChunkItem] = []
    parts: list[str] = []
    run = 0  # the choice whose pieces `parts` holds
    for (_, data), view in zip(head, views, strict=True):
        choices = view.choices
        if len(choices) == 1 and not view.usage and view.error is UNSET:
            choice = choices[0]
            delta = choice.delta
            if delta is not None and not choice.finish_reason and not choice.logprobs:
                text = delta.content
                index = choice.index or 0
                if (
                    type(text) is str
                    and text
                    and type(index) is int
                    and not (delta.tool_calls or delta.refusal or delta.annotations)
                ):
                    if parts and index != run:
                        out.append((run, "".join(parts)))
                        parts = []
                    run = index
                    parts.append(text)
                    continue
        if parts:
            out.append((run, "".join(parts)))
            parts = []
        # parse_data, not a bare orjson call: a field the views skip is not fully checked (a number
        # past a double's range passes), and those must be a BadResponseError, not a crash. A text
        # piece is not parsed again: such a flaw in a field nobody reads no longer fails its read.
        out.append(parse_data(data, provider=provider, model=model) or {})
    if parts:
        out.append((run, "".join(parts)))
    out.extend([DONE] * done)
    return out
