"""The Responses API, outbound: one `ResponseBuilder` builds a `response` object and its stream
events (sequence-numbered) for every path; usage and the fusion item's fields. Pure."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from typing import Any

from panelfuse.pipeline.events import TERMINAL, Event
from panelfuse.pipeline.result import FusionResult
from panelfuse.providers.base import ToolCall
from panelfuse.service.errors import ServiceError
from panelfuse.service.responses_input import new_id
from panelfuse.service.responses_requests import ResponsesRequest
from panelfuse.service.server_tool import failure_reason

FUSION_ITEM_TYPE = "openrouter:fusion"  # the one fusion output item type OpenRouter's SDKs read
TERMINAL_EVENTS = ("response.completed", "response.failed", "response.incomplete")


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
