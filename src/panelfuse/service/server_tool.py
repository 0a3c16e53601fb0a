"""Fusion as a server tool: `tools: [{"type": "panelfuse:fusion", "parameters": {...}}]` on any model.

The outer model sees a function tool; when it calls it, the gateway runs panel + analysis (mode
`analyze`), hands the result back in OpenRouter's tool-result shape, and calls the outer model again,
until it answers or calls one of the caller's own tools (returned to the caller as usual). At most one
fusion per request; every upstream call made for a fusion carries a depth header, and a gateway
refuses fusion on a request that carries it, so a fusion can never call a fusion.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from panelfuse.pipeline.events import Event
from panelfuse.pipeline.result import FusionResult
from panelfuse.pricing import PriceTable, call_cost, messages_tokens, token_cost
from panelfuse.providers.base import ChatRequest, Completion, Provider, StreamEvent, StreamFold, ToolCall, Usage
from panelfuse.providers.resolve import ProviderRoute
from panelfuse.service.errors import ServiceError
from panelfuse.service.gateway import DEPTH_HEADER
from panelfuse.service.requests import FusionPlugin

FUSION_TOOL_TYPES = ("panelfuse:fusion", "openrouter:fusion")
FUSION_FUNCTION = "panelfuse_fusion"
MAX_OUTER_CALLS = 4  # the outer model: before the fusion, after it, and a little slack
OUTER_DEFAULT_MAX_TOKENS = 4096

FUSION_FUNCTION_DEF = {
    "type": "function",
    "function": {
        "name": FUSION_FUNCTION,
        "description": (
            "Ask a panel of independent models the question and get a structured analysis of their answers: "
            "consensus, contradictions, partial coverage, unique insights and blind spots. Use it for hard, "
            "open or disputed questions. It can be called once per request."
        ),
        "parameters": {
            "type": "object",
            "properties": {"question": {"type": "string", "description": "the question for the panel"}},
            "additionalProperties": False,
        },
    },
}


def fusion_depth(headers: Any) -> int:
    try:
        return int(headers.get(DEPTH_HEADER.lower()) or headers.get(DEPTH_HEADER) or 0)
    except (TypeError, ValueError):
        return 1  # an unreadable depth is treated as nested: refusing is the safe side


def split_tools(tools: list[dict[str, Any]] | None) -> tuple[FusionPlugin | None, list[dict[str, Any]]]:
    """(the fusion tool's parameters as a plugin, the caller's own tools). Two fusion tools → 400."""
    fusion = [t for t in tools or [] if isinstance(t, dict) and t.get("type") in FUSION_TOOL_TYPES]
    own = [t for t in tools or [] if not (isinstance(t, dict) and t.get("type") in FUSION_TOOL_TYPES)]
    if not fusion:
        return None, own
    if len(fusion) > 1:
        raise ServiceError(400, "at most one fusion server tool per request", param="tools", code="invalid_value")
    try:
        params = FusionPlugin.model_validate({"id": "fusion", **(fusion[0].get("parameters") or {})})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ServiceError(
            400,
            f"tools[fusion].parameters.{where}: {first.get('msg')}",
            param=f"tools.parameters.{where}",
            code="invalid_value",
        ) from exc
    if any((t.get("function") or {}).get("name") == FUSION_FUNCTION for t in own):
        raise ServiceError(
            400, f"'{FUSION_FUNCTION}' is reserved for the fusion server tool", param="tools", code="invalid_value"
        )
    return params, own


def outer_tool_choice(choice: Any) -> Any:
    """The caller's tool_choice for the outer model; forcing the fusion tool names our function."""
    if isinstance(choice, dict) and choice.get("type") in FUSION_TOOL_TYPES:
        return {"type": "function", "function": {"name": FUSION_FUNCTION}}
    return choice


def tool_result(result: FusionResult | None, error: str | None = None, reason: str = "unexpected_error") -> dict:
    """OpenRouter's tool-result shape. A judge failure keeps status ok without `analysis`."""
    if result is None or result.status != "completed":
        all_failed = result is not None and not any(m.status == "ok" for m in result.panel)
        return {
            "status": "error",
            "error": error or (result.error if result else "fusion failed"),
            "failure_reason": "all_panels_failed" if all_failed else reason,
        }
    out: dict[str, Any] = {"status": "ok"}
    if result.analysis is not None:
        out["analysis"] = result.analysis.to_dict()
    out["responses"] = [{"model": m.model, "content": m.content} for m in result.panel if m.status == "ok"]
    out["failed_models"] = [
        {"model": f.model, "error": f.error, "status_code": f.status_code} for f in result.failed_models
    ]
    return out


def capped() -> dict:
    return {
        "status": "error",
        "error": "only one fusion may run per request",
        "failure_reason": "fusion_invocation_capped",
    }


def fusion_messages(conversation: list[dict[str, Any]], call: ToolCall) -> list[dict[str, Any]]:
    """What the panel sees: the caller's conversation, plus the outer model's question if it asked one."""
    try:
        question = (json.loads(call.arguments or "{}") or {}).get("question")
    except (ValueError, AttributeError):
        question = None
    msgs = [
        m
        for m in conversation
        if m.get("role") in ("system", "developer", "user", "assistant") and not m.get("tool_calls")
    ]
    if isinstance(question, str) and question.strip():
        last_user = next((m for m in reversed(msgs) if m.get("role") == "user"), None)
        if last_user is None or last_user.get("content") != question:
            msgs.append({"role": "user", "content": question})
    return msgs


@dataclass
class ToolRun:
    """One request on the server-tool path: the outer calls and at most one fusion."""

    outer_usage: Usage = field(default_factory=Usage)
    outer_cost: float = 0.0
    fusion_result: FusionResult | None = None
    fusion_requests: int = 0

    def usage_dict(self) -> dict[str, Any]:
        usage = Usage(self.outer_usage.prompt_tokens, self.outer_usage.completion_tokens)
        cost = self.outer_cost
        if self.fusion_result is not None:
            inner = self.fusion_result.usage
            usage.prompt_tokens += inner.prompt_tokens
            usage.completion_tokens += inner.completion_tokens
            cost += self.fusion_result.cost or 0.0
        out = usage.to_dict()
        out["cost"] = cost
        out["server_tool_use_details"] = {"fusion_requests": self.fusion_requests}
        return out


def outer_worst_case(prices: PriceTable, qualified: str, req: ChatRequest) -> tuple[float, list[str]]:
    """Every outer call at its worst, each prompt grown by a fusion result (about 2,000 tokens)."""
    price = prices.lookup(qualified)
    if price is None:
        return 0.0, [qualified]
    return MAX_OUTER_CALLS * token_cost(
        messages_tokens(req.messages) + 2000, req.max_tokens or OUTER_DEFAULT_MAX_TOKENS, price
    ), []


class FusionToolSession:
    """Drives the outer model and the one fusion. `run_fusion` is given by the gateway (it stores the
    run); this class only sequences the calls."""

    def __init__(
        self,
        provider: Provider,
        route: ProviderRoute,
        base: ChatRequest,
        prices: PriceTable,
        run_fusion: Callable[[list[dict[str, Any]]], AsyncIterator[Event | FusionResult]],
    ) -> None:
        self.provider, self.route, self.prices, self.base = provider, route, prices, base
        self.messages = list(base.messages)
        self.tool_choice = base.tool_choice
        self.run_fusion = run_fusion
        self.state = ToolRun()

    def _account(self, completion: Completion) -> None:
        self.state.outer_usage.prompt_tokens += completion.usage.prompt_tokens
        self.state.outer_usage.completion_tokens += completion.usage.completion_tokens
        self.state.outer_cost += call_cost(completion.usage, self.prices.lookup(self.route.qualified)) or 0.0

    async def events(self, conversation: list[dict[str, Any]]) -> AsyncIterator[StreamEvent | Event | Completion]:
        """The outer model's text as it streams, the fusion's progress events, and last the final
        Completion (its text, or the caller's own tool calls)."""
        for _ in range(MAX_OUTER_CALLS):
            fold = StreamFold(self.route.model)
            req = replace(self.base, messages=list(self.messages), tool_choice=self.tool_choice)
            async for ev in self.provider.stream(req):
                fold.add(ev)
                if ev.text:
                    yield ev
            completion = fold.result()
            self._account(completion)
            ours = [c for c in completion.tool_calls if c.name == FUSION_FUNCTION]
            theirs = [c for c in completion.tool_calls if c.name != FUSION_FUNCTION]
            if theirs or not ours:
                completion.tool_calls = theirs  # a fusion call beside the caller's own tools is dropped
                yield completion
                return
            self.messages.append(
                {"role": "assistant", "content": completion.text or None, "tool_calls": [c.to_openai() for c in ours]}
            )
            for call in ours:
                content = capped() if self.state.fusion_requests else None
                if content is None:
                    self.state.fusion_requests += 1
                    async for item in self.run_fusion(fusion_messages(conversation, call)):
                        if isinstance(item, FusionResult):
                            self.state.fusion_result = item
                        else:
                            yield item
                    content = tool_result(self.state.fusion_result)
                self.messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(content)})
            # Forcing the fusion tool applies once: afterwards the outer model must be free to answer.
            if outer_forces_fusion(self.tool_choice):
                self.tool_choice = "auto"
        raise ServiceError(502, "the outer model kept calling the fusion tool", code="tool_loop_limit")


def outer_forces_fusion(choice: Any) -> bool:
    return isinstance(choice, dict) and (choice.get("function") or {}).get("name") == FUSION_FUNCTION
