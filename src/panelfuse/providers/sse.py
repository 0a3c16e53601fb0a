"""Reading an upstream's SSE stream of JSON objects: shared by every HTTP adapter, so connection
errors, error statuses, malformed lines and non-SSE answers map to the same typed errors.

The stream is read a network read at a time: every event that arrived in one read is parsed and
handed on as one batch, so an adapter can join the text of tokens that arrived together (a hosted API
under load, or a fast local one, sends dozens per read) instead of passing each through the pipeline
on its own. Tokens that arrive one per read still go on one at a time, with no added wait.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from itertools import repeat
from operator import itemgetter
from typing import Any

import orjson

from panelfuse.providers.errors import BadResponseError, ProviderError
from panelfuse.providers.http import TRANSPORT_ERRORS, encode_json, shared_session

DONE = "[DONE]"
_DONE = DONE.encode()
SSEItem = tuple[str, dict[str, Any] | str]  # (event name, parsed JSON object) or (event name, DONE)
# A line (and so an event) longer than this is not an answer's chunk: the upstream is broken, and
# buffering it whole would let one upstream take the gateway's memory.
MAX_LINE_BYTES = 8 * 1024 * 1024
# Below this, a read holds a few events at most and the line-by-line rules are as fast as the C split.
FAST_PATH_BYTES = 1024
# What reading a well-formed JSON object of the wrong shape raises (a list where an object belongs,
# "abc" where a number does…): an adapter turns these into BadResponseError (`malformed`).
SHAPE_ERRORS = (TypeError, ValueError, AttributeError, KeyError, IndexError)


class SSEError(ValueError):
    """The byte stream cannot be an event stream (a line past MAX_LINE_BYTES). The decoder's only error."""


def malformed(item: Any, exc: BaseException, *, provider: str, model: str) -> BadResponseError:
    """The typed error of a chunk that parsed as JSON but is not in the wire's shape."""
    shown = repr(item)[:200]
    return BadResponseError(
        f"malformed response from upstream: {shown} ({type(exc).__name__}: {str(exc)[:100]})",
        provider=provider,
        model=model,
    )


class SSEDecoder:
    """An incremental text/event-stream parser (the WHATWG rules): `feed` bytes as they arrive, get
    back the (event, data) of every event completed by them. Pure: no I/O. Raises only SSEError (a
    line longer than `max_line` bytes), whatever the bytes."""

    __slots__ = ("_buffer", "_data", "_event", "_fast_path_bytes", "_max_line")

    def __init__(self, max_line: int = MAX_LINE_BYTES, fast_path_bytes: int = FAST_PATH_BYTES) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[bytes] = []
        self._max_line = max_line
        self._fast_path_bytes = fast_path_bytes

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        buffer = self._buffer + chunk
        if not self._data and not self._event:
            fast = self._data_lines(buffer)
            if fast is not None:
                return fast
        if b"\r" in buffer:
            # A CR at the very end may be the first half of a CRLF: keep it for the next read.
            held = buffer.endswith(b"\r")
            if held:
                buffer = buffer[:-1]
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held:
                buffer += b"\r"
        lines = buffer.split(b"\n")
        self._buffer = lines.pop()  # the unfinished line (empty when the chunk ended on a newline)
        out: list[tuple[str, bytes]] = []
        for line in lines:
            if not line:
                if self._data:
                    data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                    out.append((self._event or "message", data))
                self._event, self._data = "", []
                continue
            field, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if field == b"data":
                self._data.append(value)
            elif field == b"event":
                self._event = value.decode("utf-8", "replace")
            # comments (":…"), id and retry do not concern a one-shot completion stream
        if len(self._buffer) > self._max_line or (self._data and sum(map(len, self._data)) > self._max_line):
            raise SSEError(f"an SSE line or event longer than {self._max_line} bytes")
        return out

    def _data_lines(self, buffer: bytes) -> list[tuple[str, bytes]] | None:
        """The common case of a read with many events, split in C rather than line by line: complete
        events that are each one `data: ` line, then at most an unfinished line. None when the bytes
        hold anything else (CRs, other fields, multi-line data, comments), which the line rules take,
        and for a short read, which they take as fast. A JSON payload holds no raw newline, so
        counting newlines proves the shape."""
        if len(buffer) < self._fast_path_bytes:
            return None
        end = buffer.rfind(b"\n\n")
        rest = buffer[end + 2 :]
        if end < 0 or b"\n" in rest or b"\r" in buffer or not buffer.startswith(b"data: "):
            return None
        payloads = buffer[6:end].split(b"\n\ndata: ")
        if buffer.count(b"\n", 0, end) != 2 * (len(payloads) - 1) or len(rest) > self._max_line:
            return None
        if end > self._max_line and max(map(len, payloads)) > self._max_line:
            return None
        self._buffer = rest
        return list(zip(repeat("message"), payloads))  # in C: this runs once per token


def parse_data(data: bytes, *, provider: str, model: str) -> dict[str, Any] | str | None:
    """One event's data: its JSON object, DONE, or None for an empty data field."""
    try:
        parsed = orjson.loads(data)  # orjson skips surrounding whitespace itself
    except orjson.JSONDecodeError as exc:
        data = data.strip()
        if not data:
            return None
        if data == _DONE:
            return DONE
        text = data[:200].decode("utf-8", "replace")
        raise BadResponseError(f"malformed SSE data: {text!r}", provider=provider, model=model) from exc
    if not isinstance(parsed, dict):
        raise BadResponseError("SSE data is not an object", provider=provider, model=model)
    return parsed


_name_of, data_of = itemgetter(0), itemgetter(1)
_DICT = {dict}


def trailing_done(events: list[tuple[str, bytes]]) -> int:
    """How many of the events at the end are `[DONE]`: parsed apart, so the objects before them still
    go in one call."""
    done = 0
    while done < len(events) and events[len(events) - 1 - done][1].strip() == _DONE:
        done += 1
    return done


def parse_events(events: list[tuple[str, bytes]], *, provider: str, model: str) -> list[SSEItem]:
    """The (event name, parsed data) of events that arrived together, in order; events with empty data
    are left out. Their JSON objects are parsed in one call (a streamed answer's chunks arrive by the
    dozen), and one by one only when that fails, to name the bad one. Pure."""
    done = trailing_done(events)
    head = events[: len(events) - done]
    out: list[SSEItem] | None = None
    if len(head) > 1:
        try:
            values = orjson.loads(b"[" + b",".join(map(data_of, head)) + b"]")
        except orjson.JSONDecodeError:
            values = None
        # One value per event, each an object: otherwise an event held two values, or none, or a non-object.
        if values is not None and len(values) == len(head) and set(map(type, values)) == _DICT:
            out = list(zip(map(_name_of, head), values, strict=True))
    if out is None:
        out = []
        for name, data in head:
            parsed = parse_data(data, provider=provider, model=model)
            if parsed is not None:
                out.append((name, parsed))
    out.extend((name, DONE) for name, _ in events[len(events) - done :])
    return out


async def event_batches(
    url: str,
    body: dict[str, Any],
    headers: Mapping[str, str],
    *,
    provider: str,
    model: str,
    on_status: Any,
    on_transport: Any,
) -> AsyncGenerator[list[tuple[str, bytes]], None]:
    """POST `body` and yield, per network read, the (SSE event name, data) of every event it completed,
    for the adapter to parse (`parse_events`, or its own faster reading). `on_status(status, body,
    headers)` and `on_transport(exc)` turn HTTP failures into the adapter's typed errors."""
    decoder = SSEDecoder()
    try:
        async with shared_session().post(url, data=encode_json(body), headers=dict(headers)) as resp:
            if resp.status >= 400:
                raise on_status(resp.status, await resp.read(), resp.headers)
            if resp.content_type != "text/event-stream":
                raise BadResponseError(
                    f"expected an event stream, got {resp.content_type or 'no content type'}",
                    provider=provider,
                    model=model,
                )
            async for chunk in resp.content.iter_any():
                try:
                    events = decoder.feed(chunk)
                except SSEError as exc:
                    raise BadResponseError(str(exc), provider=provider, model=model) from exc
                if events:
                    yield events
    except ProviderError:
        raise
    except TRANSPORT_ERRORS as exc:
        raise on_transport(exc) from exc
