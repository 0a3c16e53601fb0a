"""Anthropic Messages API adapter: translates OpenAI-shaped requests at the edge."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from panelfuse.providers.base import ChatRequest, Provider, StreamEvent, TextRun, ToolCall, Usage
from panelfuse.providers.errors import AuthError, BadResponseError, ProviderError, UpstreamError
from panelfuse.providers.http import TRANSPORT_ERRORS, request
from panelfuse.providers.openai_compat import count as _count
from panelfuse.providers.openai_compat import (
    error_from_status,
    error_message,
    fetch_model_ids,
    oversize_answer,
    transport_error,
)
from panelfuse.providers.sse import SHAPE_ERRORS, event_batches, malformed, parse_events

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # the Messages API requires max_tokens

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if url.startswith("data:") and ";base64," in url:
                media, data = url[5:].split(";base64,", 1)
                blocks.append({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}})
            else:
                blocks.append({"type": "image", "source": {"type": "url", "url": url}})
    return blocks


def to_anthropic_messages(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI chat messages → (system prompt, Anthropic messages). Pure."""
    system: list[str] = []
    out: list[dict[str, Any]] = []

    def append(role: str, blocks: list[dict[str, Any]]) -> None:
        # Anthropic wants alternating roles: merge consecutive same-role messages.
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for m in messages:
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend(b["text"] for b in _content_blocks(m.get("content")) if b["type"] == "text")
        elif role == "tool":
            result = m.get("content")
            if not isinstance(result, str):
                result = "".join(b.get("text", "") for b in _content_blocks(result))
            append("user", [{"type": "tool_result", "tool_use_id": m.get("tool_call_id", ""), "content": result}])
        elif role == "assistant":
            blocks = _content_blocks(m.get("content"))
            for tc in m.get("tool_calls") or []:
                fn = tc.get("function") or {}
                try:
                    args = json.loads(fn.get("arguments") or "{}")
                except ValueError:
                    args = {"_raw": fn.get("arguments")}
                blocks.append({"type": "tool_use", "id": tc.get("id", ""), "name": fn.get("name", ""), "input": args})
            append("assistant", blocks)
        else:
            append("user", _content_blocks(m.get("content")))
    return ("\n\n".join(system) or None), out


def to_anthropic_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    out = []
    for t in tools:
        fn = t.get("function", t)
        out.append(
            {
                "name": fn["name"],
                "description": fn.get("description", ""),
                "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
            }
        )
    return out


def to_anthropic_tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": choice["function"]["name"]}
    return None


class _StreamState:
    """What a streamed message has said so far: usage, content blocks, the stop reason, the end.
    `read` raises one of SHAPE_ERRORS on an event not in Anthropic's shape."""

    def __init__(self) -> None:
        self.usage = Usage()
        self.blocks: dict[int, dict[str, Any]] = {}
        self.stop_reason: str | None = None
        self.finished = False

    def read(self, event_name: str, data: dict[str, Any], text: TextRun) -> None:
        kind = data.get("type", event_name)
        if kind == "message_start":
            u = _object((_object(data.get("message"))).get("usage"))
            self.usage.prompt_tokens = _count(u.get("input_tokens"))
            self.usage.completion_tokens = _count(u.get("output_tokens"))
        elif kind == "content_block_start":
            block = dict(_object(data.get("content_block")))
            block["partial_json"] = ""
            self.blocks[int(data.get("index", 0))] = block
            if block.get("type") == "text" and block.get("text"):
                text.add(0, _text(block["text"]))
        elif kind == "content_block_delta":
            delta = _object(data.get("delta"))
            if delta.get("type") == "text_delta" and delta.get("text"):
                text.add(0, _text(delta["text"]))
            elif delta.get("type") == "input_json_delta":
                block = self.blocks.setdefault(int(data.get("index", 0)), {"partial_json": ""})
                block["partial_json"] += _text(delta.get("partial_json", ""))
        elif kind == "message_delta":
            self.stop_reason = _text(_object(data.get("delta")).get("stop_reason") or "") or self.stop_reason
            u = _object(data.get("usage"))
            if u.get("output_tokens") is not None:
                self.usage.completion_tokens = _count(u["output_tokens"])
        elif kind == "message_stop":
            self.finished = True

    def last_event(self) -> StreamEvent:
        calls = [
            ToolCall(id=str(b.get("id", "")), name=str(b.get("name", "")), arguments=b["partial_json"] or "{}")
            for _, b in sorted(self.blocks.items())
            if b.get("type") == "tool_use"
        ]
        stop = self.stop_reason
        return StreamEvent(
            tool_calls=calls,
            finish_reason=STOP_REASONS.get(stop or "end_turn", stop or "stop"),
            usage=self.usage,
            refusal="the model refused (stop_reason: refusal)" if stop == "refusal" else None,
        )


def _message_event(data: Any) -> StreamEvent:
    """A whole (non-streamed) message as one event; raises one of SHAPE_ERRORS when it is not one."""
    content = [_object(b) for b in data["content"]]
    u = _object(data.get("usage"))
    stop = _text(data.get("stop_reason") or "end_turn")
    return StreamEvent(
        text="".join(_text(b.get("text", "")) for b in content if b.get("type") == "text"),
        tool_calls=[
            ToolCall(id=str(b.get("id", "")), name=str(b.get("name", "")), arguments=json.dumps(b.get("input") or {}))
            for b in content
            if b.get("type") == "tool_use"
        ],
        finish_reason=STOP_REASONS.get(stop, stop),
        usage=Usage(prompt_tokens=_count(u.get("input_tokens")), completion_tokens=_count(u.get("output_tokens"))),
        refusal="the model refused (stop_reason: refusal)" if stop == "refusal" else None,
    )


def _object(value: Any) -> dict[str, Any]:
    """An object (None reads as empty); anything else raises TypeError (a malformed event)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


class AnthropicProvider(Provider):
    # The Messages API has no response_format here: callers parse JSON leniently.
    supports_json_schema = False

    def __init__(
        self,
        name: str,
        base_url: str = "https://api.anthropic.com",
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        api_key_env: str | None = None,
        default_timeout: float | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[:-3]
        self.api_key = api_key
        self.api_key_env = api_key_env
        self.headers = dict(headers or {})
        if default_timeout is not None:
            self.default_timeout = default_timeout

    def _request_headers(self) -> dict[str, str]:
        if not self.api_key:
            raise AuthError(f"no API key: set {self.api_key_env or 'ANTHROPIC_API_KEY'}", provider=self.name)
        return {
            "content-type": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
            **self.headers,
            "x-api-key": self.api_key,
        }

    def body(self, req: ChatRequest, *, stream: bool) -> dict[str, Any]:
        system, messages = to_anthropic_messages(req.messages)
        body: dict[str, Any] = {
            "model": req.model,
            "messages": messages,
            "max_tokens": req.max_tokens or DEFAULT_MAX_TOKENS,
            "stream": stream,
        }
        optional = {
            "system": system,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "stop_sequences": req.stop,
            "tools": to_anthropic_tools(req.tools),
            "tool_choice": to_anthropic_tool_choice(req.tool_choice),
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        body.update(req.extra_body)
        return body

    def _error(self, status: int, body: bytes, headers: Mapping[str, str], model: str) -> ProviderError:
        # Anthropic's 529 "overloaded" is a 5xx: error_from_status makes it a retryable UpstreamError.
        return error_from_status(status, error_message(body), headers, provider=self.name, model=model)

    async def _open_stream(self, req: ChatRequest) -> AsyncIterator[StreamEvent]:
        url = f"{self.base_url}/v1/messages"
        state = _StreamState()
        async with contextlib.aclosing(
            event_batches(
                url,
                self.body(req, stream=True),
                self._request_headers(),
                provider=self.name,
                model=req.model,
                on_status=lambda status, body, headers: self._error(status, body, headers, req.model),
                on_transport=lambda exc: transport_error(exc, provider=self.name, model=req.model),
            )
        ) as batches:
            async for events in batches:
                batch = parse_events(events, provider=self.name, model=req.model)
                out: list[StreamEvent] = []
                text = TextRun(out)  # only text goes out per read; tool calls and the end come after
                error: ProviderError | None = None
                for event_name, data in batch:
                    if not isinstance(data, dict):
                        continue  # Anthropic sends no [DONE]; ignore one if a proxy adds it
                    if data.get("type", event_name) == "error":
                        message = error_message(json.dumps(data, default=str).encode())
                        error = UpstreamError(message, provider=self.name, model=req.model)
                        break
                    try:
                        state.read(event_name, data, text)
                    except SHAPE_ERRORS as exc:
                        error = malformed(data, exc, provider=self.name, model=req.model)
                        break
                    if state.finished:
                        break
                text.close()
                for ev in out:  # what came before an error still reaches the caller
                    yield ev
                if error is not None:
                    raise error
                if state.finished:
                    break
        if not state.finished:
            raise UpstreamError("stream ended before the answer finished", provider=self.name, model=req.model)
        yield state.last_event()

    async def _open_complete(self, req: ChatRequest) -> AsyncIterator[StreamEvent]:
        url = f"{self.base_url}/v1/messages"
        try:
            resp = await request("POST", url, body=self.body(req, stream=False), headers=self._request_headers())
        except TRANSPORT_ERRORS as exc:
            raise transport_error(exc, provider=self.name, model=req.model) from exc
        if resp.status >= 400:
            raise self._error(resp.status, resp.body, resp.headers, req.model)
        if resp.oversize:
            raise oversize_answer(self.name, req.model)
        try:
            event = _message_event(resp.json())
        except SHAPE_ERRORS as exc:
            raise BadResponseError(
                f"malformed response from upstream: unreadable message {resp.text[:200]!r}",
                provider=self.name,
                model=req.model,
            ) from exc
        yield event

    async def list_models(self) -> list[str]:
        return await fetch_model_ids(f"{self.base_url}/v1/models", self._request_headers(), provider=self.name)
