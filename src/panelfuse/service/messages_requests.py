"""The Anthropic Messages API's request (`POST /v1/messages`), checked at the edge, and its reading as
a chat-completions request: the one shape the fusion service, the routing and the proxy already
take. Pure translation, no I/O.

Extensions (documented in the README): `plugins` as on chat completions (OpenRouter's fusion plugin
configures the panel) and `fusion_events: true` (a stream carries the run's progress as `fusion`
events, which the Anthropic SDK passes through untouched)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from panelfuse.service.requests import (
    MAX_ID_LENGTH,
    MAX_MESSAGES,
    MAX_STOP,
    MAX_TOOLS,
    EdgeModel,
    Identifier,
    OutputTokens,
    Text,
)


class _Block(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)  # cache_control, citations: accepted, unused


class TextBlock(_Block):
    type: Literal["text"]
    text: str


class ImageBlock(_Block):
    type: Literal["image"]
    source: dict[str, Any]


class DocumentBlock(_Block):
    type: Literal["document"]
    source: dict[str, Any]


class ToolUseBlock(_Block):
    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    name: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    input: dict[str, Any]


class ToolResultBlock(_Block):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    content: str | list[TextBlock | ImageBlock] | None = None
    is_error: bool | None = None


class ThinkingBlock(_Block):
    """A thinking block sent back in a later turn: accepted and left out (the answer's words are the text)."""

    type: Literal["thinking", "redacted_thinking"]


ContentBlock = Annotated[
    TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock,
    Field(discriminator="type"),
]


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class AnthropicTool(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _a_tool_is_named(self) -> ToolChoice:
        if self.type == "tool" and self.name is None:
            raise ValueError("tool_choice of type 'tool' needs the tool's `name`")
        return self


class Thinking(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=1, le=1_000_000)


class MessagesRequest(EdgeModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: Identifier
    max_tokens: OutputTokens
    messages: list[AnthropicMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: str | list[TextBlock] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=1_000_000)
    stop_sequences: list[str] | None = Field(default=None, max_length=MAX_STOP)
    tools: list[AnthropicTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    metadata: dict[str, Text | None] | None = None
    # Extensions: the panel's configuration, and the run's progress in the stream.
    plugins: list[dict[str, Any]] | None = Field(default=None, max_length=16)
    fusion_events: bool = False

    def user_id(self) -> str | None:
        return (self.metadata or {}).get("user_id")

    def chat_body(self) -> dict[str, Any]:
        """This request as a chat-completions body (validated by the caller as ChatCompletionRequest)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(self.system, self.messages),
            "max_tokens": self.max_tokens,
            "stream": self.stream,
        }
        optional: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop_sequences,
            "tools": [chat_tool(t) for t in self.tools] if self.tools else None,
            "tool_choice": chat_tool_choice(self.tool_choice),
            "plugins": self.plugins,
            "user": self.user_id(),
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if self.tool_choice is not None and self.tool_choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
        return body

    def native_extra(self, anthropic_upstream: bool) -> dict[str, Any]:
        """Fields a proxied call carries beyond the chat shape: Anthropic's own to an Anthropic
        upstream; their nearest OpenAI-compatible reading (OpenRouter's `reasoning`) to any other."""
        extra: dict[str, Any] = {}
        if self.top_k is not None:
            extra["top_k"] = self.top_k
        if self.thinking is not None:
            if anthropic_upstream:
                extra["thinking"] = self.thinking.model_dump(exclude_none=True)
            elif self.thinking.type == "enabled" and self.thinking.budget_tokens:
                extra["reasoning"] = {"max_tokens": self.thinking.budget_tokens}
        if anthropic_upstream:
            if self.metadata:
                extra["metadata"] = self.metadata
            extra.update(self.model_extra or {})  # Anthropic's newer fields (service_tier, output_config, …)
        return extra


def chat_messages(system: str | list[TextBlock] | None, messages: list[AnthropicMessage]) -> list[dict[str, Any]]:
    """Anthropic's turns as chat messages: the system prompt first; tool_use blocks become the
    assistant's tool_calls; tool_result blocks become `tool` messages (before the user's own words of
    that turn, as the model called them)."""
    out: list[dict[str, Any]] = []
    if system:
        text = system if isinstance(system, str) else "\n\n".join(b.text for b in system)
        out.append({"role": "system", "content": text})
    for m in messages:
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
        elif m.role == "assistant":
            out.append(_assistant_turn(m.content))
        else:
            out.extend(_user_turn(m.content))
    return out


def _assistant_turn(blocks: list[Any]) -> dict[str, Any]:
    text = "".join(b.text for b in blocks if isinstance(b, TextBlock))
    calls = [
        {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
        for b in blocks
        if isinstance(b, ToolUseBlock)
    ]
    turn: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        turn["tool_calls"] = calls
    return turn


def _user_turn(blocks: list[Any]) -> list[dict[str, Any]]:
    results = [
        {"role": "tool", "tool_call_id": b.tool_use_id, "content": _result_text(b)}
        for b in blocks
        if isinstance(b, ToolResultBlock)
    ]
    parts = [_chat_part(b) for b in blocks if isinstance(b, TextBlock | ImageBlock | DocumentBlock)]
    if not parts:
        return results
    if all(p["type"] == "text" for p in parts):
        return [*results, {"role": "user", "content": "".join(p["text"] for p in parts)}]
    return [*results, {"role": "user", "content": parts}]


def _result_text(block: ToolResultBlock) -> str:
    content = block.content
    text = content if isinstance(content, str) else "".join(b.text for b in content or [] if isinstance(b, TextBlock))
    return f"[error] {text}" if block.is_error else text


def _chat_part(block: TextBlock | ImageBlock | DocumentBlock) -> dict[str, Any]:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    source = block.source
    if source.get("type") == "url":
        url = source.get("url")
    else:
        url = f"data:{source.get('media_type', 'application/octet-stream')};base64,{source.get('data', '')}"
    if isinstance(block, ImageBlock):
        return {"type": "image_url", "image_url": {"url": url}}
    return {"type": "file", "file": {"file_data": url}}


def chat_tool(tool: AnthropicTool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def chat_tool_choice(choice: ToolChoice | None) -> Any:
    if choice is None:
        return None
    if choice.type == "tool":
        return {"type": "function", "function": {"name": choice.name or ""}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]
