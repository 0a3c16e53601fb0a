"""OpenAI chat-completions wire format: OpenRouter, OpenAI, vLLM, Ollama, llama.cpp server, DeepSeek, Together."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from panelfuse.providers.base import ChatRequest, Provider, StreamEvent, TextRun, ToolCall, Usage
from panelfuse.providers.errors import (
    AuthError,
    BadRequestError,
    BadResponseError,
    DeadlineExceeded,
    NotFoundError,
    ProviderError,
    RateLimitedError,
    UpstreamError,
)
from panelfuse.providers.http import MAX_ANSWER_BYTES, TRANSPORT_ERRORS, request
from panelfuse.providers.openai_chunks import ChunkItem, read_chunks
from panelfuse.providers.retry import parse_retry_after
from panelfuse.providers.sse import SHAPE_ERRORS, event_batches, malformed


def error_from_status(
    status: int, message: str, headers: Mapping[str, str], *, provider: str, model: str
) -> ProviderError:
    """Map an HTTP error status to its typed error. Shared by every HTTP adapter."""
    kw: dict[str, Any] = {"status_code": status, "provider": provider, "model": model}
    if status in (401, 403):
        return AuthError(message, **kw)
    if status == 429:
        return RateLimitedError(message, retry_after=parse_retry_after(headers.get("retry-after")), **kw)
    if status == 404:
        return NotFoundError(message, **kw)
    if status in (400, 409, 413, 422):
        return BadRequestError(message, **kw)
    return UpstreamError(message, **kw)


def error_message(body: bytes) -> str:
    """The human message of an error body, in OpenAI's or Anthropic's shape, or the raw text."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])
    if isinstance(err, str):
        return err
    return text[:500]


def oversize_answer(provider: str, model: str) -> BadResponseError:
    return BadResponseError(
        f"malformed response from upstream: the answer is larger than {MAX_ANSWER_BYTES} bytes",
        provider=provider,
        model=model,
    )


def transport_error(exc: BaseException, *, provider: str, model: str) -> ProviderError:
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded(f"upstream timed out ({type(exc).__name__})", provider=provider, model=model)
    return UpstreamError(f"connection failed: {exc!r}", provider=provider, model=model)


MAX_TOOL_CALL_CHARS = 4 * 1024 * 1024  # one streamed choice's tool calls, names and arguments together


class ToolCallAccumulator:
    """Joins streamed tool-call fragments (keyed by index) into whole calls."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}
        self._size = 0

    def add(self, fragments: list[dict[str, Any]]) -> None:
        for frag in fragments:
            fn = frag.get("function") or {}
            self._size += len(fn.get("name") or "") + len(fn.get("arguments") or "")
            if self._size > MAX_TOOL_CALL_CHARS:  # an upstream that never ends a call must not fill the memory
                raise ValueError(f"tool calls longer than {MAX_TOOL_CALL_CHARS} characters")
            slot = self._calls.setdefault(int(frag.get("index", 0)), {"id": "", "name": "", "arguments": ""})
            if frag.get("id"):
                slot["id"] = frag["id"]
            if fn.get("name"):
                slot["name"] += fn["name"]
            if fn.get("arguments"):
                slot["arguments"] += fn["arguments"]

    def take(self) -> list[ToolCall]:
        calls = [
            ToolCall(id=c["id"] or f"call_{i}", name=c["name"], arguments=c["arguments"] or "{}")
            for i, c in sorted(self._calls.items())
        ]
        self._calls.clear()
        return calls


def parse_usage(raw: Any) -> Usage | None:
    """OpenAI's usage object; raises one of SHAPE_ERRORS when it is not one (counts that are not counts)."""
    if not raw:
        return None
    cost = raw.get("cost")
    prompt_details = raw.get("prompt_tokens_details")
    completion_details = raw.get("completion_tokens_details")
    if not isinstance(raw, dict):
        raise TypeError(f"usage is a {type(raw).__name__}, not an object")
    return Usage(
        prompt_tokens=count(raw.get("prompt_tokens")),
        completion_tokens=count(raw.get("completion_tokens")),
        cost=float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
        prompt_tokens_details=prompt_details if isinstance(prompt_details, dict) else None,
        completion_tokens_details=completion_details if isinstance(completion_details, dict) else None,
    )


def _list_of(value: Any) -> list[dict[str, Any]]:
    """A list of objects (None reads as empty); anything else raises TypeError (a malformed chunk)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise TypeError(f"expected a list of objects, got {type(value).__name__}")
    return value


def _str_or_none(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"expected a string, got {type(value).__name__}")


def count(value: Any) -> int:
    """A token count: a non-negative integer (or a whole float), None as 0; else ValueError."""
    if value is None:
        return 0
    if isinstance(value, str) and value.isdigit():  # some servers quote their numbers
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or value != int(value):
        raise ValueError(f"not a token count: {value!r}")
    return int(value)


def _logprobs(choice: dict[str, Any]) -> dict[str, Any] | None:
    value = choice.get("logprobs")
    return value if isinstance(value, dict) and value else None


def _annotations(holder: dict[str, Any]) -> list[dict[str, Any]] | None:
    value = holder.get("annotations")
    if not isinstance(value, list):
        return None
    return [a for a in value if isinstance(a, dict)] or None


def plain_token(chunk: dict[str, Any]) -> tuple[int, str] | None:
    """(choice index, text) of a chunk that carries only a piece of one choice's text, the usual
    chunk of a streamed answer; None for anything else (role only, tool calls, finish, usage, logprobs,
    annotations, refusal…), which takes the general path. Pure, and cheap: it runs once per token, so
    it indexes and lets a wrong shape raise rather than checking each level first."""
    try:
        (choice,) = chunk["choices"]  # exactly one choice (a list of one; a dict or str fails below)
        delta = choice["delta"]
        text = delta["content"]
    except (KeyError, TypeError, ValueError):
        return None
    if type(text) is not str or not text or chunk.get("usage") or choice.get("finish_reason") or choice.get("logprobs"):
        return None
    if len(delta) > 1:
        for key, value in delta.items():
            if value and key != "content" and key != "role":
                return None
    index = choice.get("index") or 0
    return (index, text) if type(index) is int else None


class OpenAICompatProvider(Provider):
    accepts_reasoning = True
    supports_n = True

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        api_key_env: str | None = None,
        default_timeout: float | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.api_key_env = api_key_env
        self.headers = dict(headers or {})
        if default_timeout is not None:
            self.default_timeout = default_timeout

    def _request_headers(self) -> dict[str, str]:
        if self.api_key_env and not self.api_key:
            # Fail before the network with the fix in the message, rather than with the upstream's 401.
            raise AuthError(f"no API key: set {self.api_key_env}", provider=self.name)
        h = {"Content-Type": "application/json", **self.headers}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def body(self, req: ChatRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": req.model, "messages": req.messages, "stream": stream}
        optional = {
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "seed": req.seed,
            "stop": req.stop,
            "tools": req.tools,
            "tool_choice": req.tool_choice,
            "response_format": req.response_format,
            "n": req.n,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if stream:
            body["stream_options"] = {"include_usage": True}
        body.update(req.extra_body)
        return body

    def _error(self, status: int, body: bytes, headers: Mapping[str, str], model: str) -> ProviderError:
        return error_from_status(status, error_message(body), headers, provider=self.name, model=model)

    async def _open_stream(self, req: ChatRequest) -> AsyncIterator[StreamEvent]:
        tools: dict[int, ToolCallAccumulator] = {}  # one per choice (n > 1 interleaves their fragments)
        finished = False
        async with contextlib.aclosing(
            event_batches(
                f"{self.base_url}/chat/completions",
                self.body(req, stream=True),
                self._request_headers(),
                provider=self.name,
                model=req.model,
                on_status=lambda status, body, headers: self._error(status, body, headers, req.model),
                on_transport=lambda exc: transport_error(exc, provider=self.name, model=req.model),
            )
        ) as batches:
            async for events in batches:
                items = read_chunks(events, provider=self.name, model=req.model)
                out, ended, error = self._batch_events(items, tools, req.model)
                for ev in out[:-1]:
                    ev.more = True
                for ev in out:  # what came before an error still reaches the caller
                    if ev.finish_reason:
                        finished = True
                    yield ev
                if error is not None:
                    raise error
                if ended:
                    finished = True
                    break
        if not finished:
            raise UpstreamError("stream ended before the answer finished", provider=self.name, model=req.model)

    def _batch_events(
        self, items: list[ChunkItem], tools: dict[int, ToolCallAccumulator], model: str
    ) -> tuple[list[StreamEvent], bool, ProviderError | None]:
        """The events of one network read (its chunks as `read_chunks` gives them), whether [DONE]
        ended the stream, and the error that ended it (OpenRouter's mid-stream error chunk, or a chunk
        not in the wire's shape). Pure."""
        out: list[StreamEvent] = []
        text = TextRun(out)
        add = text.add
        for chunk in items:
            if isinstance(chunk, tuple):  # a piece of text, already read
                add(*chunk)
                continue
            if isinstance(chunk, str):  # DONE, the one string an SSE item holds
                text.close()
                for index, acc in sorted(tools.items()):
                    pending = acc.take()
                    if pending:  # a server that ended without a finish_reason chunk
                        out.append(StreamEvent(tool_calls=pending, finish_reason="tool_calls", index=index))
                return out, True, None
            token = plain_token(chunk)
            if token is not None and "error" not in chunk:
                add(*token)
                continue
            if "error" in chunk:  # OpenRouter reports mid-stream failures this way
                text.close()
                message = error_message(json.dumps(chunk, default=str).encode())
                return out, False, UpstreamError(message, provider=self.name, model=model)
            text.close()
            try:
                out.extend(self._chunk_events(chunk, tools))
            except SHAPE_ERRORS as exc:
                return out, False, malformed(chunk, exc, provider=self.name, model=model)
        text.close()
        return out, False, None

    @staticmethod
    def _chunk_events(chunk: dict[str, Any], tools: dict[int, ToolCallAccumulator]) -> list[StreamEvent]:
        """The events of one chunk. Raises one of SHAPE_ERRORS when the chunk is not in OpenAI's shape."""
        events: list[StreamEvent] = []
        for choice in _list_of(chunk.get("choices")):
            index = int(choice.get("index") or 0)
            acc = tools.setdefault(index, ToolCallAccumulator())
            delta = choice.get("delta") or {}
            if delta.get("tool_calls"):
                acc.add(_list_of(delta["tool_calls"]))
            text = _str_or_none(delta.get("content")) or ""
            refusal = _str_or_none(delta.get("refusal")) or None
            logprobs = _logprobs(choice)
            annotations = _annotations(delta)
            finish = _str_or_none(choice.get("finish_reason"))
            if text or refusal or logprobs or annotations:
                events.append(
                    StreamEvent(text=text, refusal=refusal, index=index, logprobs=logprobs, annotations=annotations)
                )
            if finish:
                events.append(StreamEvent(finish_reason=finish, tool_calls=acc.take(), index=index))
        usage = parse_usage(chunk.get("usage"))
        if usage is not None:
            events.append(StreamEvent(usage=usage))
        return events

    async def _open_complete(self, req: ChatRequest) -> AsyncIterator[StreamEvent]:
        url = f"{self.base_url}/chat/completions"
        try:
            resp = await request("POST", url, body=self.body(req, stream=False), headers=self._request_headers())
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, provider=self.name, model=req.model) from exc
        if resp.status >= 400:
            raise self._error(resp.status, resp.body, resp.headers, req.model)
        if resp.oversize:
            raise oversize_answer(self.name, req.model)
        try:
            data = resp.json()
            choices = sorted(data["choices"], key=lambda c: int(c.get("index") or 0))
            events = [self._choice_event(choice) for choice in choices]
            if not events:
                raise IndexError("no choices")
            events[-1].usage = parse_usage(data.get("usage")) or Usage()
        except SHAPE_ERRORS as exc:
            raise BadResponseError(
                f"malformed response from upstream: unreadable completion {resp.text[:200]!r}",
                provider=self.name,
                model=req.model,
            ) from exc
        for ev in events:
            yield ev

    @staticmethod
    def _choice_event(choice: dict[str, Any]) -> StreamEvent:
        """One choice of a non-streamed completion as one event (raises on an unreadable shape)."""
        message = choice.get("message") or {}
        calls = [
            ToolCall(
                id=tc.get("id", ""), name=tc["function"]["name"], arguments=tc["function"].get("arguments") or "{}"
            )
            for tc in message.get("tool_calls") or []
        ]
        return StreamEvent(
            text=_str_or_none(message.get("content")) or "",
            tool_calls=calls,
            finish_reason=_str_or_none(choice.get("finish_reason")) or "stop",
            refusal=_str_or_none(message.get("refusal")) or None,
            index=int(choice.get("index") or 0),
            logprobs=_logprobs(choice),
            annotations=_annotations(message),
        )

    async def list_models(self) -> list[str]:
        return await fetch_model_ids(f"{self.base_url}/models", self._request_headers(), provider=self.name)


async def fetch_model_ids(url: str, headers: Mapping[str, str], *, provider: str) -> list[str]:
    """GET an OpenAI-shaped model list ({"data": [{"id": ...}]}), which Anthropic's API also returns."""
    try:
        async with asyncio.timeout(30):
            resp = await request("GET", url, headers=headers)
    except TRANSPORT_ERRORS as exc:
        raise transport_error(exc, provider=provider, model="*") from exc
    if resp.status >= 400:
        raise error_from_status(resp.status, error_message(resp.body), resp.headers, provider=provider, model="*")
    try:
        return [m["id"] for m in resp.json()["data"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadResponseError("unreadable model list", provider=provider, model="*") from exc
