"""The one small interface every provider adapter implements.

Requests and messages use the OpenAI chat-completions shapes (the lingua franca); adapters for other
wire formats translate at their edge. Both `stream` and `complete` give text, tool calls, the finish
reason and usage; `complete` is the fold of `stream` unless an adapter has a cheaper path.
"""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from panelfuse.providers.errors import RefusedError
from panelfuse.providers.retry import RetryPolicy, retrying_stream


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # What the provider itself reported as cost (OpenRouter's usage.cost), in USD; None when it said nothing.
    cost: float | None = None
    # OpenAI's breakdowns as the upstream sent them ({"cached_tokens": …}, {"reasoning_tokens": …}); None
    # when it sent none. Passed on by the proxy; sums of usages (a fusion's) leave them out.
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cost is not None:
            out["cost"] = self.cost
        if self.prompt_tokens_details is not None:
            out["prompt_tokens_details"] = self.prompt_tokens_details
        if self.completion_tokens_details is not None:
            out["completion_tokens_details"] = self.completion_tokens_details
        return out


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ChatRequest:
    """One upstream call. `model` is the provider's own id (after resolution)."""

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    tools: list[dict[str, Any]] | None = None  # OpenAI function-tool definitions
    tool_choice: Any = None
    # OpenAI style: {"type": "json_schema", "json_schema": {"name", "schema", "strict"}} or {"type": "json_object"}
    response_format: dict[str, Any] | None = None
    # Seconds for the whole call, retries included. None means the provider's default deadline.
    timeout: float | None = None
    # Provider-specific body fields passed through unchanged (e.g. OpenRouter's `provider`, `reasoning`).
    extra_body: dict[str, Any] = field(default_factory=dict)
    # Choices to generate (OpenAI's `n`); only adapters with `supports_n` send it. None: the upstream's default (1).
    n: int | None = None


@dataclass
class StreamEvent:
    """One piece of a streamed completion. Text arrives in pieces; tool calls arrive whole.

    `index` is the choice the piece belongs to (always 0 unless the request asked for `n` > 1);
    `logprobs` and `annotations` are OpenAI's, as the upstream sent them for this piece (the choice's
    `{"content": [...], "refusal": [...]}` and the message's url_citation list). Folding into a
    Completion (`StreamFold`) ignores these and `more`: they are for the proxy, which passes them on."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    refusal: str | None = None
    index: int = 0
    logprobs: dict[str, Any] | None = None
    annotations: list[dict[str, Any]] | None = None
    # Another event of the same network read follows at once: what a consumer writes to its client
    # for this one can wait for the next and go out in the same write (the proxy's frames). A hint
    # about delivery, not content: equality ignores it.
    more: bool = field(default=False, compare=False)


class TextRun:
    """Joins the text pieces of one choice that arrived together (one network read) into one
    StreamEvent, appended to `out` when another choice's piece or anything else comes (`close`).
    The adapters use it so a burst of tokens travels the pipeline as one event."""

    __slots__ = ("index", "out", "parts")

    def __init__(self, out: list[StreamEvent]) -> None:
        self.out = out
        self.index = 0
        self.parts: list[str] = []

    def add(self, index: int, text: str) -> None:
        if self.parts and index != self.index:
            self.close()
        self.index = index
        self.parts.append(text)

    def close(self) -> None:
        if self.parts:
            self.out.append(StreamEvent(text="".join(self.parts), index=self.index))
            self.parts = []


@dataclass
class Completion:
    model: str
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    refusal: str | None = None
    latency_ms: int = 0


class StreamFold:
    """Accumulates stream events into a Completion, for callers that also pass the events on."""

    def __init__(self, model: str) -> None:
        self.started = time.monotonic()
        self.out = Completion(model=model)
        self.parts: list[str] = []

    def add(self, ev: StreamEvent) -> None:
        if ev.text:
            self.parts.append(ev.text)
        self.out.tool_calls.extend(ev.tool_calls)
        if ev.finish_reason:
            self.out.finish_reason = ev.finish_reason
        if ev.usage is not None:
            self.out.usage = ev.usage
        if ev.refusal:
            self.out.refusal = (self.out.refusal or "") + ev.refusal

    def result(self) -> Completion:
        self.out.text = "".join(self.parts)
        self.out.latency_ms = int((time.monotonic() - self.started) * 1000)
        return self.out


# The oversize cap: an upstream that ignores max_tokens must not make us buffer without bound. A
# token is rarely longer than a dozen characters, so 32 per token of max_tokens is never hit by an
# upstream that honours it; without max_tokens, MAX_ANSWER_CHARS.
CAP_CHARS_PER_TOKEN = 32
MAX_ANSWER_CHARS = 4_000_000


def answer_cap(req: ChatRequest) -> int:
    """Characters of text (and refusal) one choice of `req` may carry before it is cut."""
    if req.max_tokens:
        return min(MAX_ANSWER_CHARS, req.max_tokens * CAP_CHARS_PER_TOKEN)
    return MAX_ANSWER_CHARS


async def capped(events: AsyncIterator[StreamEvent], req: ChatRequest) -> AsyncIterator[StreamEvent]:
    """`events` until a choice's text passes `answer_cap(req)`: then that text is cut at the cap, the
    call ends with finish_reason "length" (usage: max_tokens completion tokens, what the upstream
    was allowed) and the upstream is closed."""
    cap = answer_cap(req)
    sizes: dict[int, int] = {}
    try:
        async for ev in events:
            size = sizes.get(ev.index, 0) + len(ev.text) + len(ev.refusal or "")
            sizes[ev.index] = size
            if size <= cap:
                yield ev
                continue
            room = max(0, cap - (size - len(ev.text) - len(ev.refusal or "")))
            if ev.text[:room]:
                yield StreamEvent(text=ev.text[:room], index=ev.index)
            yield StreamEvent(
                finish_reason="length", index=ev.index, usage=Usage(completion_tokens=req.max_tokens or cap // 4)
            )
            return
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def fold_stream(model: str, events: AsyncIterator[StreamEvent], *, raise_refusal: bool = True) -> Completion:
    """Accumulate a stream into one Completion; raise RefusedError on the provider's refusal signal
    (unless `raise_refusal` is off, for a proxy that passes the refusal on as it came)."""
    fold = StreamFold(model)
    async for ev in events:
        fold.add(ev)
    out = fold.result()
    if raise_refusal:
        raise_if_refused(out)
    return out


def raise_if_refused(c: Completion) -> None:
    if c.finish_reason == "content_filter" or c.refusal:
        raise RefusedError(c.refusal or "the provider stopped the answer (content_filter)", model=c.model)


class Provider(abc.ABC):
    """An upstream that answers chat requests. Knows nothing of fusion.

    Adapters implement one attempt (`_open_stream`, optionally `_open_complete`); this class adds the
    deadline and the retries, so every adapter behaves the same way under failure.
    """

    name: str = "provider"
    default_timeout: float = 120.0
    retry_policy: RetryPolicy = RetryPolicy()
    # Whether the upstream enforces a JSON schema itself (so callers need not repair output).
    supports_json_schema: bool = True
    supports_tools: bool = True
    # OpenRouter's unified `reasoning` request field ({"effort": …} / {"max_tokens": …}).
    accepts_reasoning: bool = False
    # Several choices in one call (OpenAI's `n`), reported with their `StreamEvent.index`.
    supports_n: bool = False

    @abc.abstractmethod
    def _open_stream(self, req: ChatRequest) -> AsyncIterator[StreamEvent]:
        """One streaming attempt. Raises ProviderError subclasses."""

    def _open_complete(self, req: ChatRequest) -> AsyncIterator[StreamEvent]:
        """One non-streaming attempt, as a stream of (usually) one event. Default: stream."""
        return self._open_stream(req)

    def _deadline(self, req: ChatRequest) -> float:
        return time.monotonic() + (req.timeout if req.timeout is not None else self.default_timeout)

    def stream(self, req: ChatRequest) -> AsyncIterator[StreamEvent]:
        """Yield the completion as it is produced, with retries before the first event, cut at the
        answer's size cap (`answer_cap`)."""
        events = retrying_stream(lambda: self._open_stream(req), deadline=self._deadline(req), policy=self.retry_policy)
        return capped(events, req)

    def complete_events(self, req: ChatRequest) -> AsyncIterator[StreamEvent]:
        """The non-streaming call (with its deadline and retries) as its events, unfolded: for a proxy
        that passes every choice on as the upstream answered it."""
        events = retrying_stream(
            lambda: self._open_complete(req), deadline=self._deadline(req), policy=self.retry_policy
        )
        return capped(events, req)

    async def complete(self, req: ChatRequest) -> Completion:
        return await fold_stream(req.model, self.complete_events(req))

    async def list_models(self) -> list[str]:
        return []

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources held by this provider (not the shared HTTP client)."""
