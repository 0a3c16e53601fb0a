"""The Responses API request (`POST /v1/responses`) at the HTTP edge (pydantic).

Input items are kept as plain dicts here and checked by `service/responses.py` when it translates them
to chat messages (each problem is a 400 naming the item), so a request the translation cannot read is
never a 500."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field

from panelfuse.service.requests import MAX_ID_LENGTH, MAX_MESSAGES, MAX_TOOLS, EdgeModel, Identifier, OutputTokens, Text


class ResponsesRequest(EdgeModel):
    """OpenAI's Responses request, with OpenRouter's `plugins`. Fields we do not read are accepted and
    ignored (a proxied provider gets a chat request: only the fields with a chat equivalent go on)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: Identifier
    input: str | Annotated[list[dict[str, Any]], Field(max_length=MAX_MESSAGES)] = Field(
        description="a user message as text, or input items: messages (`input_text` parts), `function_call` "
        "and `function_call_output` items"
    )
    instructions: str | None = None
    stream: bool = False
    max_output_tokens: OutputTokens | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    plugins: list[dict[str, Any]] | None = Field(default=None, max_length=16)
    previous_response_id: Identifier | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    user: Text | None = Field(default=None, max_length=MAX_ID_LENGTH)
    background: bool | None = None

    @property
    def stored(self) -> bool:
        """Whether the response is kept for a later `previous_response_id` (the default, as OpenAI's)."""
        return self.store is not False
