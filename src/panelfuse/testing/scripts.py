"""What the fake upstream should answer: `Script`, `Failure`, and the wire-neutral `Plan` built from them.

The wire modules (`wire_openai`, `wire_anthropic`) only translate a `Plan` into bytes; every decision about
*what* to answer (text, tool calls, usage, finish reason, which failure) is made here, once, so both wires
behave identically for the same script.
"""

from __future__ import annotations

import enum
import json
import math
import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

DEFAULT_TEXT = "Hello from the fake upstream."
REFUSAL_TEXT = "I'm sorry, but I can't help with that."

# Word plus its trailing whitespace, or a whitespace-only run: joining the pieces gives the text back exactly.
_TOKEN_RE = re.compile(r"\S+\s*|\s+")


class Failure(enum.StrEnum):
    HTTP_500 = "500"
    RATE_LIMIT = "429"
    HTTP = "http"  # uses Script.status_code (default 500)
    RESET = "reset"  # abort the TCP connection before any response byte
    CUT = "cut"  # stream `cut_after_tokens` tokens, then abort (no final chunk)
    MALFORMED_SSE = "malformed_sse"  # a `data:` line that is not JSON, mid-stream
    INVALID_JSON = "invalid_json"  # 200 with a body that is not JSON
    EMPTY = "empty"  # empty content, finish "stop"
    REFUSAL = "refusal"  # OpenAI content_filter + refusal text; Anthropic stop_reason "refusal"
    # Valid JSON in the wrong shape (`Script.raw_chunk`, e.g. '{"choices": ["x"]}'), sent as one SSE
    # event after `cut_after_tokens` tokens; without streaming it is the whole response body.
    MALFORMED_CHUNK = "malformed_chunk"
    # An upstream that ignores max_tokens: `text` repeated to `oversize_tokens` tokens.
    OVERSIZE = "oversize"


MAX_CHOICES = 128


@dataclass
class Script:
    text: str = DEFAULT_TEXT
    latency: float | tuple[float, float] = 0.0  # seconds before the first byte; (median, sigma) = lognormal
    token_rate: float | None = None  # tokens/second while streaming; None = as fast as possible
    burst: bool = False  # the whole stream in one write (a fast upstream: the reader gets it in one read)
    failure: Failure | None = None
    fail_times: int | None = None  # fail only the first N requests served by this object; None = always
    retry_after: float | None = None  # Retry-After header (seconds), sent with HTTP failures
    status_code: int | None = None  # status for Failure.HTTP
    error_message: str | None = None  # the error body's message for HTTP failures (default: a fixed text)
    tool_calls: list[dict[str, Any]] | None = None  # [{"name", "arguments": dict | str, "id"?}]
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None  # OpenAI wire reports usage.cost (OpenRouter style)
    finish_reason: str | None = None
    cut_after_tokens: int = 3
    # OpenAI-wire extras (the Anthropic wire maps what it has: cached_tokens → cache_read_input_tokens).
    # Per-token logprobs: None answers as the request asks (`logprobs: true`, `top_logprobs: k`); True/False force.
    logprobs: bool | None = None
    annotations: list[dict[str, Any]] | None = None  # message annotations, e.g. url_citation objects
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens
    reasoning_tokens: int | None = None  # usage.completion_tokens_details.reasoning_tokens
    # Texts of the choices when the request asks for `n` > 1 (cycled); None: every choice says `text`.
    choice_texts: list[str] | None = None
    raw_chunk: str = '{"choices": ["x"]}'  # the data of Failure.MALFORMED_CHUNK's event
    oversize_tokens: int = 10_000  # Failure.OVERSIZE's answer length
    # How many requests this object has failed so far (for fail_times); not part of equality or repr.
    _failures_served: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.failure is not None and not isinstance(self.failure, Failure):
            self.failure = Failure(self.failure)
        if isinstance(self.latency, tuple | list):
            if len(self.latency) != 2 or self.latency[0] <= 0 or self.latency[1] < 0:
                raise ValueError("latency tuple must be (median > 0, sigma >= 0)")
            self.latency = (float(self.latency[0]), float(self.latency[1]))
        elif self.latency < 0:
            raise ValueError("latency must be >= 0")
        if self.token_rate is not None and self.token_rate <= 0:
            raise ValueError("token_rate must be > 0 or None")

    def draw_latency(self, rng: random.Random) -> float:
        if isinstance(self.latency, tuple):
            median, sigma = self.latency
            return rng.lognormvariate(math.log(median), sigma)
        return float(self.latency)

    def take_failure(self) -> Failure | None:
        """The failure to apply to this request, honouring fail_times (consumes one failure if so)."""
        if self.failure is None:
            return None
        if self.fail_times is not None:
            if self._failures_served >= self.fail_times:
                return None
            self._failures_served += 1
        return self.failure


ScriptLike = Script | Callable[[dict[str, Any]], Script]

# Failures that are answered with an HTTP error status instead of a completion.
HTTP_FAILURES = (Failure.HTTP_500, Failure.RATE_LIMIT, Failure.HTTP)


def tokenize(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


def _text_len(content: Any) -> int:
    """Characters of text in a message content (str, list of parts, tool_result blocks...)."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(_text_len(part) for part in content)
    if isinstance(content, dict):
        total = 0
        for key in ("text", "content", "refusal"):
            if key in content:
                total += _text_len(content[key])
        return total
    return 0


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    chars = sum(_text_len(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict))
    chars += _text_len(body.get("system"))  # Anthropic keeps the system prompt outside `messages`
    return max(1, chars // 4)


@dataclass
class ToolCallOut:
    id: str
    name: str
    arguments: str  # JSON text exactly as sent

    def input(self) -> dict[str, Any]:
        """Arguments as an object (Anthropic `tool_use.input`); unparseable text is kept under "_raw"."""
        try:
            value = json.loads(self.arguments)
        except ValueError:
            return {"_raw": self.arguments}
        return value if isinstance(value, dict) else {"_raw": self.arguments}

    def argument_pieces(self) -> list[str]:
        """Split the arguments into 2+ pieces (when possible) so clients must accumulate deltas."""
        a = self.arguments
        if len(a) < 2:
            return [a] if a else []
        n = min(3, len(a))
        step = math.ceil(len(a) / n)
        return [a[i : i + step] for i in range(0, len(a), step)]


# Canonical finish reasons are OpenAI's; Anthropic's equivalents are mapped both ways.
_TO_ANTHROPIC = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_TO_OPENAI = {v: k for k, v in _TO_ANTHROPIC.items()} | {"stop_sequence": "stop"}


def openai_finish(reason: str) -> str:
    return _TO_OPENAI.get(reason, reason)


def anthropic_stop(reason: str) -> str:
    return _TO_ANTHROPIC.get(reason, reason)


@dataclass
class Plan:
    """Everything one response needs, independent of the wire format."""

    model: str
    stream: bool
    failure: Failure | None
    script: Script
    text: str  # visible text (refusal text for REFUSAL, "" for EMPTY)
    tokens: list[str]
    tool_calls: list[ToolCallOut]
    prompt_tokens: int
    completion_tokens: int
    finish: str  # OpenAI vocabulary; wires map it
    include_usage: bool = True
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    # One text per choice (`n`); the first is `text`. A wire without `n` (Anthropic) answers the first only.
    choice_texts: list[str] = field(default_factory=list)
    top_logprobs: int | None = None  # None: no logprobs; else the alternatives per token (0 = the token only)

    @property
    def refusal(self) -> bool:
        return self.failure is Failure.REFUSAL

    @property
    def n(self) -> int:
        return max(1, len(self.choice_texts))

    def choices(self) -> list[Plan]:
        """This plan once per choice: each with its own text and tokens (tool calls and finish shared)."""
        if self.n == 1:
            return [self]
        return [replace(self, text=t, tokens=tokenize(t), choice_texts=[t]) for t in self.choice_texts]

    def logprobs(self) -> list[dict[str, Any]] | None:
        """OpenAI's per-token logprob entries for this plan's tokens, or None when none were asked for."""
        if self.top_logprobs is None:
            return None
        return [token_logprob(i, tok, self.top_logprobs) for i, tok in enumerate(self.tokens)]


def token_logprob(i: int, token: str, top: int) -> dict[str, Any]:
    """A deterministic logprob entry for the i-th token, with `top` alternatives (the token first)."""
    logprob = -round(0.05 * (i % 7 + 1), 4)

    def entry(tok: str, lp: float) -> dict[str, Any]:
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode())}

    alternatives = [entry(token, logprob)] + [entry(f"alt{j}", logprob - j) for j in range(1, top)]
    return {**entry(token, logprob), "top_logprobs": alternatives[:top]}


def build_plan(script: Script, body: dict[str, Any], failure: Failure | None, id_prefix: str) -> Plan:
    text = script.text
    tool_calls: list[ToolCallOut] = []
    if failure is Failure.EMPTY:
        text = ""
    elif failure is Failure.OVERSIZE:
        words = tokenize(script.text) or [DEFAULT_TEXT]
        text = "".join(words[i % len(words)].rstrip() + " " for i in range(script.oversize_tokens))
    elif failure is Failure.REFUSAL:
        text = script.text if script.text != DEFAULT_TEXT else REFUSAL_TEXT
    else:
        for tc in script.tool_calls or []:
            args = tc.get("arguments", {})
            tool_calls.append(
                ToolCallOut(
                    id=tc.get("id") or f"{id_prefix}{uuid.uuid4().hex[:24]}",
                    name=tc["name"],
                    arguments=args if isinstance(args, str) else json.dumps(args),
                )
            )
        # A tool-calling turn usually has no prose; only keep text the script set explicitly.
        if tool_calls and text == DEFAULT_TEXT:
            text = ""
    n = body.get("n")
    n = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    n = min(n, MAX_CHOICES)  # generated requests may ask for billions; OpenAI's own ceiling is 128
    if script.choice_texts and failure not in (Failure.EMPTY, Failure.REFUSAL):
        texts = [script.choice_texts[i % len(script.choice_texts)] for i in range(n)]
        text = texts[0]
    else:
        texts = [text] * n
    tokens = tokenize(text)
    if failure is Failure.REFUSAL:
        finish = "content_filter"
    elif script.finish_reason and failure is not Failure.EMPTY:
        finish = openai_finish(script.finish_reason)
    else:
        finish = "tool_calls" if tool_calls else "stop"
    pieces = sum(len(tc.argument_pieces()) for tc in tool_calls)
    streamed = sum(len(tokenize(t)) + pieces for t in texts)
    wants_logprobs = script.logprobs if script.logprobs is not None else body.get("logprobs") is True
    top = body.get("top_logprobs")
    return Plan(
        model=str(body.get("model") or ""),
        stream=bool(body.get("stream")),
        failure=failure,
        script=script,
        text=text,
        tokens=tokens,
        tool_calls=tool_calls,
        prompt_tokens=script.prompt_tokens if script.prompt_tokens is not None else estimate_prompt_tokens(body),
        completion_tokens=script.completion_tokens if script.completion_tokens is not None else streamed,
        finish=finish,
        choice_texts=texts,
        top_logprobs=(top if isinstance(top, int) and top > 0 else 0) if wants_logprobs else None,
    )


@dataclass
class Frame:
    """One SSE frame. `token` frames carry content (paced, counted for CUT); `tail` frames end the stream."""

    data: bytes
    token: bool = False
    tail: bool = False


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
