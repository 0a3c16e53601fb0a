"""The Responses API, inbound: a Responses request (input items, instructions, tools, text format)
becomes the chat-completions request every other path reads (`ChatCompletionRequest`), so the fusion
alias, the plugin, the server tool and the proxy run exactly as they do for chat completions. Pure."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from panelfuse.service.errors import ServiceError
from panelfuse.service.requests import ChatCompletionRequest
from panelfuse.service.responses_requests import ResponsesRequest
from panelfuse.service.server_tool import FUSION_TOOL_TYPES
from panelfuse.service.specs import validation_error

# Fields of a Responses request that a chat request carries under the same name and meaning.
PASSTHROUGH = ("parallel_tool_calls", "reasoning", "user", "provider", "transforms", "models", "route")
# Input items that carry nothing a chat model can read again: skipped when a conversation is replayed.
SKIPPED_ITEMS = ("reasoning", *FUSION_TOOL_TYPES)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def response_id_for_run(run_id: str) -> str:
    """A fusion's response id names its run (as a chat completion's does): resp_<hex> for run_<hex>."""
    return f"resp_{run_id.removeprefix('run_')}"


# ---- in: input items → chat messages ---------------------------------------------------------------


def input_items(body: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as a list of items (a string is one user message)."""
    if isinstance(body.input, str):
        return [{"type": "message", "role": "user", "content": body.input}]
    return list(body.input)


def replayed_items(request: Mapping[str, Any] | None, response: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """A stored response's conversation: its input items, then its output items (as OpenAI continues a
    `previous_response_id`; the earlier request's instructions are not carried over)."""
    items = [i for i in (request or {}).get("input") or [] if isinstance(i, dict)]
    items += [i for i in (response or {}).get("output") or [] if isinstance(i, dict)]
    return items


def _bad(where: str, message: str) -> ServiceError:
    return ServiceError(400, f"{where}: {message}", param=where, code="invalid_value")


def _unsupported(where: str, message: str) -> ServiceError:
    return ServiceError(400, f"{where}: {message}", param=where, code="unsupported_parameter")


def _text_of(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _bad(where, "expected a string")
    return value


def _content_part(part: Any, where: str) -> dict[str, Any] | None:
    """One input content part as a chat content part (None: nothing to send)."""
    if not isinstance(part, dict):
        raise _bad(where, "a content part must be an object")
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": _text_of(part.get("text"), f"{where}.text")}
    if kind == "refusal":
        return {"type": "text", "text": _text_of(part.get("refusal"), f"{where}.refusal")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise _unsupported(where, "input_image needs an image_url (file ids are not supported)")
        image: dict[str, Any] = {"url": url}
        if isinstance(part.get("detail"), str):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        data = part.get("file_data") or part.get("file_url")
        if not isinstance(data, str) or not data:
            raise _unsupported(where, "input_file needs file_data or file_url (file ids are not supported)")
        file: dict[str, Any] = {"file_data": data}
        if isinstance(part.get("filename"), str):
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    raise _unsupported(where, f"content part type {kind!r} is not supported")


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise _bad(f"{where}.role", "expected one of user, system, developer, assistant")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise _bad(f"{where}.content", "expected a string or a list of content parts")
    parts = [part for i, raw in enumerate(content) if (part := _content_part(raw, f"{where}.content[{i}]")) is not None]
    texts = [p["text"] for p in parts if p["type"] == "text"]
    if role != "user" or len(texts) == len(parts) == 1:
        if len(texts) != len(parts):
            raise _unsupported(f"{where}.content", f"only text content is supported in a {role} message")
        return {"role": role, "content": "".join(texts)}
    return {"role": role, "content": parts}


def _tool_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{where}.call_id", "expected a string")
    name = _text_of(item.get("name"), f"{where}.name")
    arguments = _text_of(item.get("arguments", "{}"), f"{where}.arguments")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_output(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{where}.call_id", "expected a string")
    output = item.get("output")
    if isinstance(output, list):
        parts = [_content_part(p, f"{where}.output[{i}]") for i, p in enumerate(output)]
        if any(p is None or p["type"] != "text" for p in parts):
            raise _unsupported(f"{where}.output", "only text output is supported")
        output = "".join(p["text"] for p in parts if p is not None)
    return {"role": "tool", "tool_call_id": call_id, "content": _text_of(output, f"{where}.output")}


def items_to_messages(
    items: Sequence[Any], instructions: str | None = None, *, index_base: int = 0
) -> list[dict[str, Any]]:
    """Input items as chat messages: `instructions` first (a system message), each message item as a
    message, consecutive `function_call` items as one assistant turn with tool calls (joined to the
    assistant message just before them), each `function_call_output` as a tool message. Reasoning and
    fusion items are skipped; anything else is a 400 naming the item (`input[i + index_base]`: a
    replayed conversation comes before the request's own input)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    for i, item in enumerate(items):
        where = f"input[{i + index_base}]"
        if not isinstance(item, dict):
            raise _bad(where, "an input item must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            call = _tool_call(item, where)
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and isinstance(last.get("content"), str | None):
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(_tool_output(item, where))
        elif kind in SKIPPED_ITEMS:
            continue
        else:
            raise _unsupported(f"{where}.type", f"input item type {kind!r} is not supported")
    return messages


# ---- in: tools, tool choice, text format -------------------------------------------------------------


def chat_tools(tools: Sequence[Any] | None) -> list[dict[str, Any]] | None:
    """Responses function tools (`{"type": "function", "name", "parameters", …}`) in chat's shape; the
    fusion server tool and any other tool type go on unchanged (as chat completions passes them)."""
    if tools is None:
        return None
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _bad(f"tools[{i}]", "a tool must be an object")
        if tool.get("type") == "function" and "function" not in tool:
            name = tool.get("name")
            if not isinstance(name, str) or not name:
                raise _bad(f"tools[{i}].name", "a function tool needs a name")
            fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
            out.append({"type": "function", "function": fn})
        else:
            out.append(tool)
    return out


def chat_tool_choice(choice: Any) -> Any:
    """`{"type": "function", "name": x}` in chat's shape; "auto"/"none"/"required" and the fusion tool
    (`{"type": "openrouter:fusion"}`) go on as they are."""
    if isinstance(choice, dict) and choice.get("type") == "function" and "function" not in choice:
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


def chat_response_format(text: Mapping[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        return {"type": "json_schema", "json_schema": schema}
    return dict(fmt)


def chat_request(body: ResponsesRequest, messages: list[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat-completions request this Responses request means (400 naming the field when it cannot
    be one)."""
    if body.background:
        raise _unsupported("background", "background responses are not supported; use the fusion plugin's background")
    data: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "stream": body.stream,
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "tools": chat_tools(body.tools),
        "tool_choice": chat_tool_choice(body.tool_choice),
        "response_format": chat_response_format(body.text),
        "plugins": body.plugins,
    }
    extra = body.model_dump(include=set(PASSTHROUGH), exclude_none=True) | {
        k: v for k, v in (body.model_extra or {}).items() if k in PASSTHROUGH
    }
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in data.items() if v is not None} | extra)
    except ValidationError as exc:
        if exc.errors()[0].get("loc", ())[:1] == ("messages",):
            raise _bad("input", "the conversation needs at least one user message") from exc
        raise validation_error(exc, "body") from exc
