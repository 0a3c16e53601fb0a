"""The Responses API (`POST /v1/responses`) translated onto the service, both ways.

In: a Responses request (input items, instructions, tools, text format) becomes the chat-completions
request every other path reads (`ChatCompletionRequest`), so the fusion alias, the plugin, the server
tool and the proxy run exactly as they do for chat completions. Out: what a path produces (a fusion
run's events and result, the server-tool session's items, a proxied stream) becomes a `response`
object and its stream events, built by one `ResponseBuilder` for every path. The drivers at the end
only feed the builder; the route frames what they yield. Nothing here knows HTTP.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from panelfuse.pipeline.events import TERMINAL, Event
from panelfuse.pipeline.result import FusionResult
from panelfuse.pricing import Price, call_cost
from panelfuse.providers.base import Completion, StreamEvent, ToolCall, Usage
from panelfuse.providers.errors import ProviderError
from panelfuse.service.errors import ServiceError, from_provider_error
from panelfuse.service.requests import ChatCompletionRequest
from panelfuse.service.responses_requests import ResponsesRequest
from panelfuse.service.runs import ActiveRun
from panelfuse.service.server_tool import FUSION_TOOL_TYPES, failure_reason
from panelfuse.service.specs import validation_error

FUSION_ITEM_TYPE = "openrouter:fusion"  # the one fusion output item type OpenRouter's SDKs read
TERMINAL_EVENTS = ("response.completed", "response.failed", "response.incomplete")
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


# ---- out: items, usage --------------------------------------------------------------------------------


def usage_object(usage: Mapping[str, Any]) -> dict[str, Any]:
    """A chat usage dict (prompt/completion tokens, cost, our details) in the Responses shape."""
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    out: dict[str, Any] = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
    out.update({k: v for k, v in usage.items() if k not in ("prompt_tokens", "completion_tokens", "total_tokens")})
    return out


def output_annotations(annotations: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Chat's `url_citation` annotations (nested) in the Responses shape (flat)."""
    out = []
    for a in annotations or []:
        cite = a.get("url_citation")
        if a.get("type") == "url_citation" and isinstance(cite, Mapping):
            out.append({"type": "url_citation", **cite})
        else:
            out.append(dict(a))
    return out


def fusion_fields(
    result: FusionResult | None,
    *,
    failed: bool = False,
    error: str | None = None,
    analysis: dict[str, Any] | None = None,
    include_panel: bool = True,
) -> dict[str, Any]:
    """The fusion item's content from the run's result. `failed`: the run ended before the fusion call
    (panel and analysis) finished. A judge that failed leaves the call completed without `analysis`
    (OpenRouter's rule); no successful panel answer fails it (`all_panels_failed`)."""
    if result is None:
        return {"status": "failed", "error": error or "the fusion did not run", "failure_reason": "unexpected_error"}
    ok = [m for m in result.panel if m.status == "ok"]
    out: dict[str, Any] = {
        "status": "completed",
        "analysis": result.analysis.to_dict() if result.analysis is not None else analysis,
        "responses": [{"model": m.model, **({"content": m.content} if include_panel else {})} for m in ok],
        "failed_models": [
            {"model": f.model, "error": f.error, "status_code": f.status_code} for f in result.failed_models
        ],
        "failure_reason": None,
        "error": None,
    }
    if failed or not ok:
        out["status"] = "failed"
        out["error"] = error or result.error or "every panel model failed"
        out["failure_reason"] = failure_reason(result)
    elif out["analysis"] is None and result.expects_analysis:
        out["error"] = (result.judge.error if result.judge else None) or "the judge produced no analysis"
    return out


# ---- out: the response object and its events ---------------------------------------------------------


class ResponseBuilder:
    """One `response` being built: its output items in order and the stream events that build them.

    Every method returns the events it made (sequence-numbered); a non-streaming path calls the same
    methods and keeps only `response()`. Open items are closed in order: a message closes before a
    fusion item or a function call starts."""

    def __init__(
        self,
        response_id: str,
        model: str,
        body: ResponsesRequest,
        *,
        include_panel: bool = True,
        created_at: int | None = None,
    ) -> None:
        self.id, self.model, self.body = response_id, model, body
        self.include_panel = include_panel
        self.created_at = created_at or int(time.time())
        self.completed_at: int | None = None
        self.seq = 0
        self.status = "in_progress"
        self.output: list[dict[str, Any]] = []
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.incomplete_details: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self._message: int | None = None  # the open message item's index
        self._fusion: int | None = None  # the open fusion item's index
        self._fusion_item: int | None = None  # the fusion item's index, open or done (one per response)
        self._members: dict[str, str] = {}  # member label → model (panel events name the label)
        self._analysis: dict[str, Any] | None = None

    # -- the object

    def response(self) -> dict[str, Any]:
        body = self.body
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "status": self.status,
            "model": self.model,
            "output": copy.deepcopy(self.output),
            "error": self.error,
            "incomplete_details": self.incomplete_details,
            "instructions": body.instructions,
            "metadata": body.metadata or {},
            "temperature": body.temperature,
            "top_p": body.top_p,
            "max_output_tokens": body.max_output_tokens,
            "previous_response_id": body.previous_response_id,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
            "tools": body.tools or [],
            "text": {"format": (body.text or {}).get("format") or {"type": "text"}},
            "reasoning": body.reasoning,
            "store": body.stored,
            "background": False,
            "truncation": "disabled",
            "user": body.user,
            "usage": self.usage,
        }

    @property
    def output_text(self) -> str:
        return "".join(
            part.get("text", "")
            for item in self.output
            if item["type"] == "message"
            for part in item["content"]
            if part["type"] == "output_text"
        )

    def _ev(self, kind: str, **fields: Any) -> dict[str, Any]:
        ev = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return ev

    def _add(self, item: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.output.append(item)
        index = len(self.output) - 1
        return index, self._ev("response.output_item.added", output_index=index, item=copy.deepcopy(item))

    def _done(self, index: int) -> dict[str, Any]:
        return self._ev("response.output_item.done", output_index=index, item=copy.deepcopy(self.output[index]))

    def start(self) -> list[dict[str, Any]]:
        return [
            self._ev("response.created", response=self.response()),
            self._ev("response.in_progress", response=self.response()),
        ]

    # -- the message

    def _part(self, kind: str) -> list[dict[str, Any]]:
        """Make sure the open message's last content part is of `kind` (opening the message too)."""
        events: list[dict[str, Any]] = []
        if self._message is None:
            item = {"type": "message", "id": new_id("msg"), "status": "in_progress", "role": "assistant", "content": []}
            self._message, added = self._add(item)
            events.append(added)
        message = self.output[self._message]
        if message["content"] and message["content"][-1]["type"] == kind:
            return events
        events += self._close_part()
        part: dict[str, Any] = (
            {"type": "output_text", "text": "", "annotations": []}
            if kind == "output_text"
            else {"type": kind, kind: ""}
        )
        message["content"].append(part)
        events.append(
            self._ev(
                "response.content_part.added",
                item_id=message["id"],
                output_index=self._message,
                content_index=len(message["content"]) - 1,
                part=copy.deepcopy(part),
            )
        )
        return events

    def _close_part(self, annotations: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        if self._message is None or not self.output[self._message]["content"]:
            return []
        message = self.output[self._message]
        index = len(message["content"]) - 1
        part = message["content"][index]
        if part.get("closed"):
            return []
        where = {"item_id": message["id"], "output_index": self._message, "content_index": index}
        if part["type"] == "output_text":
            if annotations:
                part["annotations"] = annotations
            done = self._ev("response.output_text.done", **where, text=part["text"], logprobs=[])
        else:
            done = self._ev("response.refusal.done", **where, refusal=part["refusal"])
        part["closed"] = True
        shown = {k: v for k, v in part.items() if k != "closed"}
        return [done, self._ev("response.content_part.done", **where, part=shown)]

    def text(self, delta: str) -> list[dict[str, Any]]:
        if not delta:
            return []
        events = self._part("output_text")
        assert self._message is not None
        message = self.output[self._message]
        message["content"][-1]["text"] += delta
        index = len(message["content"]) - 1
        return [
            *events,
            self._ev(
                "response.output_text.delta",
                item_id=message["id"],
                output_index=self._message,
                content_index=index,
                delta=delta,
                logprobs=[],
            ),
        ]

    def refusal(self, delta: str) -> list[dict[str, Any]]:
        if not delta:
            return []
        events = self._part("refusal")
        assert self._message is not None
        message = self.output[self._message]
        message["content"][-1]["refusal"] += delta
        index = len(message["content"]) - 1
        where = {"item_id": message["id"], "output_index": self._message, "content_index": index}
        return [*events, self._ev("response.refusal.delta", **where, delta=delta)]

    def close_message(
        self, annotations: list[dict[str, Any]] | None = None, status: str = "completed"
    ) -> list[dict[str, Any]]:
        if self._message is None:
            return []
        events = self._close_part(annotations)
        index, self._message = self._message, None
        message = self.output[index]
        for part in message["content"]:
            part.pop("closed", None)
        message["status"] = status
        return [*events, self._done(index)]

    # -- function calls

    def function_call(self, call: ToolCall) -> list[dict[str, Any]]:
        events = self.close_message()
        item: dict[str, Any] = {
            "type": "function_call",
            "id": new_id("fc"),
            "call_id": call.id,
            "name": call.name,
            "arguments": "",
            "status": "in_progress",
        }
        index, added = self._add(item)
        where = {"item_id": item["id"], "output_index": index}
        events += [added, self._ev("response.function_call_arguments.delta", **where, delta=call.arguments)]
        item.update(arguments=call.arguments, status="completed")
        done = self._ev("response.function_call_arguments.done", **where, name=call.name, arguments=call.arguments)
        return [*events, done, self._done(index)]

    # -- the fusion call

    @property
    def fusion_open(self) -> bool:
        return self._fusion is not None

    def open_fusion(self) -> list[dict[str, Any]]:
        if self._fusion is not None or self._fusion_item is not None:
            return []
        events = self.close_message()
        item: dict[str, Any] = {
            "type": FUSION_ITEM_TYPE,
            "id": new_id("fusion"),
            "status": "in_progress",
            "analysis": None,
            "responses": [],
            "failed_models": [],
            "failure_reason": None,
            "error": None,
        }
        self._fusion, added = self._add(item)
        self._fusion_item = self._fusion
        where = {"item_id": item["id"], "output_index": self._fusion}
        return [*events, added, self._ev("response.fusion_call.in_progress", **where)]

    def fusion_event(self, ev: Event) -> list[dict[str, Any]]:
        """A run's progress event as `response.fusion_call.*` (events with no Responses meaning, and
        those after the fusion call closed, make none)."""
        kind, data = ev.type, ev.data
        if kind in TERMINAL or kind.startswith(("final.", "synthesis.")):
            return []
        if self._fusion is None:
            if self._fusion_item is not None:
                # The fusion call is over (the answer is being written). In `judge-writes` the analysis
                # is read only after the answer streamed: it still fills the item of the final response.
                item = self.output[self._fusion_item]
                if kind == "analysis.completed" and item.get("analysis") is None:
                    item.update(analysis=data["analysis"], error=None)
                return []
            events = self.open_fusion()
        else:
            events = []
        assert self._fusion is not None
        where = {"item_id": self.output[self._fusion]["id"], "output_index": self._fusion}
        member = str(data.get("member") or "")
        if kind == "panel.started":
            self._members[member] = data["model"]
            events.append(self._ev("response.fusion_call.panel.added", **where, model=data["model"], member=member))
        elif kind == "panel.delta" and self.include_panel:
            model = self._members.get(member, "")
            events.append(
                self._ev("response.fusion_call.panel.delta", **where, model=model, member=member, delta=data["text"])
            )
        elif kind == "panel.completed":
            content = {"content": data["content"]} if self.include_panel else {}
            events.append(
                self._ev("response.fusion_call.panel.completed", **where, model=data["model"], member=member, **content)
            )
        elif kind == "panel.failed":
            model = data.get("model") or self._members.get(member, "")
            # OpenRouter names the reason `error`; the OpenAI SDK raises on any stream event with a
            # top-level `error`, so it goes out as `message` (with the member's status beside it).
            failed = {"message": data["error"], "status": data.get("status") or "failed"}
            events.append(self._ev("response.fusion_call.panel.failed", **where, model=model, member=member, **failed))
        elif kind == "analysis.started":
            events.append(self._ev("response.fusion_call.analysis.in_progress", **where, judge_model=data["model"]))
        elif kind == "analysis.completed":
            self._analysis = data["analysis"]
            events.append(self._ev("response.fusion_call.analysis.completed", **where, analysis=data["analysis"]))
        return events

    def close_fusion(
        self, result: FusionResult | None, *, failed: bool = False, error: str | None = None
    ) -> list[dict[str, Any]]:
        if self._fusion is None:
            return []
        index, self._fusion = self._fusion, None
        item = self.output[index]
        item.update(
            fusion_fields(result, failed=failed, error=error, analysis=self._analysis, include_panel=self.include_panel)
        )
        where = {"item_id": item["id"], "output_index": index}
        return [self._ev("response.fusion_call.completed", **where), self._done(index)]

    # -- the end

    def complete(
        self,
        usage: dict[str, Any] | None,
        finish_reason: str | None = None,
        annotations: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Close what is open (the message with `annotations`) and finish: `completed`, or `incomplete`
        when the answer was cut (length, content filter)."""
        reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(finish_reason or "")
        events = self.close_message(annotations, status="incomplete" if reason else "completed")
        events += self.close_fusion(None, failed=True, error="the fusion did not finish")
        self.usage, self.finish_reason = usage, finish_reason or "stop"
        self.completed_at = int(time.time())
        if reason:
            self.status, self.incomplete_details = "incomplete", {"reason": reason}
            return [*events, self._ev("response.incomplete", response=self.response())]
        self.status = "completed"
        return [*events, self._ev("response.completed", response=self.response())]

    def fail(self, error: ServiceError, usage: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Close what is open and end as `failed`, with the error (OpenAI's `code`, our details beside)."""
        events = self.close_message(status="incomplete")
        events += self.close_fusion(None, failed=True, error=error.message)
        self.status, self.usage, self.finish_reason = "failed", usage, "error"
        self.error = {"code": "server_error", "message": error.message, "metadata": error.error_object()["metadata"]}
        return [*events, self._ev("response.failed", response=self.response())]


# ---- drivers: what each path produces → builder events ---------------------------------------------------


def fusion_failure(result: FusionResult, run_id: str, message: str | None = None) -> ServiceError:
    """A fusion that did not complete, as chat completions reports it (502; 499 when cancelled)."""
    return ServiceError(
        499 if result.status == "cancelled" else 502,
        f"fusion failed: {message or result.error}",
        code="fusion_failed",
        extra={
            "run_id": run_id,
            "failed_models": [f.to_dict() for f in result.failed_models],
            "failure_reason": failure_reason(result),
        },
    )


def fusion_result_events(builder: ResponseBuilder, result: FusionResult) -> list[dict[str, Any]]:
    """A finished, completed fusion as a whole response (the non-streaming alias)."""
    events = [*builder.open_fusion(), *builder.close_fusion(result), *builder.text(result.content)]
    notes = output_annotations(result.annotations)
    return [*events, *builder.complete(usage_object(result.usage_dict()), result.finish_reason, notes)]


async def fusion_run_events(run: ActiveRun, builder: ResponseBuilder) -> AsyncGenerator[dict[str, Any], None]:
    """A fusion alias's live run as Responses events: the fusion call's progress in the fusion item,
    closed when the answer starts, then the answer as `output_text` deltas."""
    for e in [*builder.start(), *builder.open_fusion()]:
        yield e
    notes: list[dict[str, Any]] = []
    async for ev in run.follow():
        kind, result = ev.type, run.result
        events: list[dict[str, Any]] = []
        if kind in ("final.delta", "final.completed", "run.completed"):
            events += builder.close_fusion(result)
        if kind == "final.delta":
            events += builder.text(ev.data["text"])
        elif kind == "final.completed":
            if not builder.output_text:
                events += builder.text(ev.data["content"])
            notes = output_annotations(ev.data.get("annotations"))
        elif kind == "run.completed":
            builder.model = result.model or builder.model
            events += builder.complete(usage_object(result.usage_dict()), result.finish_reason, notes)
        elif kind in ("run.failed", "run.cancelled"):
            message = ev.data.get("error") or ev.data.get("reason") or "the fusion failed"
            events += builder.close_fusion(result, failed=True, error=message)
            events += builder.fail(fusion_failure(result, run.run_id, message), usage_object(result.usage_dict()))
        else:
            events += builder.fusion_event(ev)
        for e in events:
            yield e
        if kind in TERMINAL:
            return


async def tool_session_events(
    items: AsyncIterator[StreamEvent | Event | Completion],
    builder: ResponseBuilder,
    fusion_result: Callable[[], FusionResult | None],
    usage: Callable[[], dict[str, Any]],
    annotations: Callable[[str], list[dict[str, Any]]],
    *,
    raise_errors: bool,
) -> AsyncGenerator[dict[str, Any], None]:
    """The server-tool session (outer model + one fusion) as Responses events: the outer model's text
    as a message (the fusion's sources as its annotations), the fusion as its item, and the caller's
    own tool calls as `function_call` items.
    With `raise_errors` a failure raises (a non-streaming answer gets its HTTP status); otherwise it
    ends the stream with `response.failed`."""
    for e in builder.start():
        yield e
    try:
        async for item in items:
            if isinstance(item, StreamEvent):
                events = builder.text(item.text)
            elif isinstance(item, Event):
                if item.type in TERMINAL:
                    message = item.data.get("error") or item.data.get("reason")
                    failed = item.type != "run.completed"
                    events = builder.close_fusion(fusion_result(), failed=failed, error=message)
                else:
                    events = builder.fusion_event(item)
            else:
                events = builder.refusal(item.refusal or "")
                notes = output_annotations(annotations(item.text))
                if item.tool_calls:
                    events += builder.close_message(notes)
                for call in item.tool_calls:
                    events += builder.function_call(call)
                finish = "tool_calls" if item.tool_calls else item.finish_reason
                events += builder.complete(usage_object(usage()), finish, notes)
            for e in events:
                yield e
    except (ProviderError, ServiceError) as exc:
        err = from_provider_error(exc) if isinstance(exc, ProviderError) else exc
        if raise_errors:
            raise err from exc
        for e in builder.fail(err, usage_object(usage())):
            yield e


async def proxy_events(
    upstream: AsyncIterator[StreamEvent], builder: ResponseBuilder, price: Price | None, *, raise_errors: bool
) -> AsyncGenerator[dict[str, Any], None]:
    """A proxied model's stream as Responses events: text and refusal as the message (with the
    upstream's annotations), tool calls as `function_call` items, the usage (with its cost) at the end."""
    usage = Usage()
    finish: str | None = None
    annotations: list[dict[str, Any]] = []
    for e in builder.start():
        yield e
    try:
        async for ev in upstream:
            events = [*builder.text(ev.text), *builder.refusal(ev.refusal or "")]
            for call in ev.tool_calls:
                events += builder.function_call(call)
            finish = ev.finish_reason or finish
            annotations += ev.annotations or []
            if ev.usage is not None:
                usage = ev.usage
            for e in events:
                yield e
    except ProviderError as exc:
        if raise_errors:
            raise from_provider_error(exc) from exc
        for e in builder.fail(from_provider_error(exc), usage_object(_usage_dict(usage, price))):
            yield e
        return
    for e in builder.complete(usage_object(_usage_dict(usage, price)), finish, output_annotations(annotations)):
        yield e


def _usage_dict(usage: Usage, price: Price | None) -> dict[str, Any]:
    out = usage.to_dict()
    cost = call_cost(usage, price)
    if cost is not None:
        out["cost"] = cost
    return out
