"""Fusion as a server tool: `tools: [{"type": "panelfuse:fusion", "parameters": {...}}]` on any model.

The outer model sees a function tool; when it calls it, the gateway runs panel + analysis (mode
`analyze`; `mode: "fast"`/`"single"` runs the first member alone and hands back its answer), hands the
result back in OpenRouter's tool-result shape, and calls the outer model again, until it answers or
calls one of the caller's own tools (returned to the caller as usual). At most one fusion per request.

Recursion: every upstream call made for a fusion carries our depth header (`X-Panelfuse-Fusion-Depth`).
A request that carries it, or OpenRouter's `X-OpenRouter-Fusion-Depth`, never starts a fusion; as on
OpenRouter, where the tool is then simply not injected, it is served without one: the outer model runs
without the fusion tool, a fusion alias is its answer model called directly, a fusion plugin is ignored.

Failure reasons (OpenRouter's): when no member answered, `insufficient_credits` if every member that
failed got a 402, `rate_limited` if every one got a 429, otherwise (a mix of those, or any other error)
`all_panels_failed`; any other failure of the run is `unexpected_error`.
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
from panelfuse.tools.records import url_annotations

FUSION_TOOL_TYPES = ("panelfuse:fusion", "openrouter:fusion")
FUSION_FUNCTION = "panelfuse_fusion"
OPENROUTER_DEPTH_HEADER = "X-OpenRouter-Fusion-Depth"  # recognised on requests; ours is what we send
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
    """The request's fusion depth: the larger of ours and OpenRouter's header (0 when neither is set)."""
    depth = 0
    for name in (DEPTH_HEADER, OPENROUTER_DEPTH_HEADER):
        value = headers.get(name.lower()) or headers.get(name)
        if not value:
            continue
        try:
            depth = max(depth, int(value))
        except (TypeError, ValueError):
            depth = max(depth, 1)  # an unreadable depth is treated as nested: the safe side
    return depth


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


def without_fusion(tools: list[dict[str, Any]], choice: Any) -> tuple[list[dict[str, Any]] | None, Any]:
    """The caller's own tools and tool_choice once the fusion tool is left out (a request at fusion
    depth): a choice that forced the fusion, or `required` with no tool left, is dropped."""
    if not tools:
        return None, None
    if isinstance(choice, dict) and choice.get("type") in FUSION_TOOL_TYPES:
        return tools, None
    return tools, choice


def failure_reason(result: FusionResult | None) -> str:
    """OpenRouter's `failure_reason` for a run that failed (see the module's docstring)."""
    if result is None or not result.panel or any(m.status == "ok" for m in result.panel):
        return "unexpected_error"
    failed = [m for m in result.panel if m.status not in ("cut", "cancelled")]
    codes = {m.status_code for m in failed}
    if failed and codes == {402}:
        return "insufficient_credits"
    if failed and codes == {429}:
        return "rate_limited"
    return "all_panels_failed"


def tool_result(result: FusionResult | None, error: str | None = None) -> dict:
    """OpenRouter's tool-result shape. A judge failure keeps status ok without `analysis`; in `single`
    mode (`fast`) there is no analysis and `responses` holds the one answer."""
    if result is None or result.status != "completed":
        out_error: dict[str, Any] = {
            "status": "error",
            "error": error or (result.error if result else "fusion failed"),
            "failure_reason": failure_reason(result),
        }
        if result is not None and result.failed_models:
            out_error["failed_models"] = [
                {"model": f.model, "error": f.error, "status_code": f.status_code} for f in result.failed_models
            ]
        return out_error
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
    tool_calls_requested: int = 0  # fusion calls the outer model made (a capped second one included)
    tool_calls_executed: int = 0  # fusions run (at most one)

    def usage_dict(self) -> dict[str, Any]:
        """OpenAI's usage with the inner costs folded in: `cost` (USD), `cost_details` (the outer
        model's calls as `outer`, then the fusion's stages as on the alias), `tools` (the fusion's tool
        use) and OpenRouter's `server_tool_use_details` (`web_search_requests`: the fusion's searches)."""
        usage = Usage(self.outer_usage.prompt_tokens, self.outer_usage.completion_tokens)
        cost = self.outer_cost
        details: dict[str, Any] = {"outer": self.outer_cost}
        searches = 0
        result = self.fusion_result
        if result is not None:
            inner = result.usage
            usage.prompt_tokens += inner.prompt_tokens
            usage.completion_tokens += inner.completion_tokens
            cost += result.cost or 0.0
            details.update(result.cost_details())
            searches = result.tool_usage.search_requests
        out = usage.to_dict()
        out["cost"] = cost
        out["cost_details"] = details
        if result is not None:
            out["tools"] = result.tool_usage.to_dict()
        out["server_tool_use_details"] = {
            "tool_calls_requested": self.tool_calls_requested,
            "tool_calls_executed": self.tool_calls_executed,
            "web_search_requests": searches,
        }
        return out

    def annotations(self, text: str) -> list[dict[str, Any]]:
        """The fusion's sources as `url_citation` annotations of the outer model's answer `text`
        (indices locate a URL the answer quotes, else 0): what `message.annotations` carries."""
        if self.fusion_result is None:
            return []
        return url_annotations(text, self.fusion_result.citations())


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
                self.state.tool_calls_requested += 1
                content = capped() if self.state.tool_calls_executed else None
                if content is None:
                    self.state.tool_calls_executed += 1
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
    """A tool_choice that forces a tool call: our function by name, or `required` (OpenRouter's way to
    force fusion). Either applies to the first outer call only."""
    if choice == "required":
        return True
    return isinstance(choice, dict) and (choice.get("function") or {}).get("name") == FUSION_FUNCTION
