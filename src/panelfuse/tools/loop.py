"""The tool loop: call the model, run the tools it asks for, give it the results, until it answers.

Bounded three ways: at most `max_tool_calls` executed calls, at most `max_tool_calls + 1` model calls
(the estimate in panelfuse.pricing counts exactly these), and a deadline after which tools are refused.
Once a bound is hit, the next model call is the answer round (`tool_choice: "none"`). Calls to a tool
that was not offered, or past a bound, are refused to the model with the reason. The tool list and
tool_choice are fixed here, so nothing a tool returns can change them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from panelfuse.providers.base import ChatRequest, Completion, ToolCall
from panelfuse.tools.records import Citation, ToolUsage
from panelfuse.tools.toolbox import Toolbox, ToolOutcome, limit_reached, not_offered, out_of_time, refusal

# Below this many seconds before the deadline no tool is started: it could not finish usefully.
MIN_TOOL_SECONDS = 0.05
ModelCall = Callable[[ChatRequest], Awaitable[Completion]]
# (tool name, its arguments as the model wrote them (parsed when JSON), why it was refused or None)
OnTool = Callable[[str, Any, str | None], None]


@dataclass
class LoopResult:
    completion: Completion  # the answer round's completion (its text is the answer)
    usage: ToolUsage = field(default_factory=ToolUsage)
    citations: list[Citation] = field(default_factory=list)
    model_calls: int = 0


def event_args(arguments: str) -> Any:
    try:
        return json.loads(arguments) if arguments else {}
    except ValueError:
        return arguments


def assistant_turn(completion: Completion) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": completion.text or None,
        "tool_calls": [tc.to_openai() for tc in completion.tool_calls],
    }


async def run_tool_loop(
    call: ModelCall,
    request: ChatRequest,
    toolbox: Toolbox,
    offered: Sequence[str],
    *,
    max_tool_calls: int,
    deadline: float,
    on_tool: OnTool | None = None,
    usage: ToolUsage | None = None,
    citations: list[Citation] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> LoopResult:
    """`call` makes one (billed) model call; `deadline` is a `clock()` time after which tools are refused.

    `usage` and `citations`, when given, are filled in place as the loop goes, so a caller still has
    them when a model call raises halfway (the searches already made are billed all the same)."""
    schemas = toolbox.schemas(offered)
    messages = list(request.messages)
    out = LoopResult(
        Completion(model=request.model),
        usage if usage is not None else ToolUsage(),
        citations if citations is not None else [],
    )
    executed = 0

    def notify(tc: ToolCall, outcome: ToolOutcome | None) -> None:
        if on_tool is not None:
            on_tool(tc.name, event_args(tc.arguments), outcome.content if outcome and outcome.refused else None)

    for round_no in range(max_tool_calls + 1):
        answer_round = executed >= max_tool_calls or round_no == max_tool_calls or deadline - clock() < MIN_TOOL_SECONDS
        req = replace(request, messages=list(messages), tools=schemas, tool_choice="none" if answer_round else "auto")
        completion = await call(req)
        out.completion, out.model_calls = completion, out.model_calls + 1
        if not completion.tool_calls:
            return out
        out.usage.requested += len(completion.tool_calls)
        if answer_round:
            # It asked again after being told to answer: the loop ends here, with whatever text it wrote.
            for tc in completion.tool_calls:
                out.usage.refused += 1
                notify(tc, refusal("no tool calls are allowed in the answer round"))
            return out
        messages.append(assistant_turn(completion))
        # Decide each call's fate in order (the limit applies in the order the model asked), then run
        # the allowed ones concurrently.
        planned: list[tuple[ToolCall, ToolOutcome | None]] = []
        for tc in completion.tool_calls:
            refused: ToolOutcome | None = None
            if tc.name not in offered:
                refused = not_offered(tc.name, offered)
            elif executed >= max_tool_calls:
                refused = limit_reached(max_tool_calls)
            elif deadline - clock() < MIN_TOOL_SECONDS:
                refused = out_of_time()
            else:
                executed += 1
            planned.append((tc, refused))
            notify(tc, refused)
        outcomes = await asyncio.gather(
            *(
                _run(toolbox, tc, offered, deadline - clock()) if refused is None else _done(refused)
                for tc, refused in planned
            )
        )
        for (tc, _), outcome in zip(planned, outcomes, strict=True):
            out.usage.add(outcome.usage)
            out.citations.extend(outcome.citations)
            messages.append({"role": "tool", "tool_call_id": tc.id, "content": outcome.content})
    return out


async def _run(toolbox: Toolbox, tc: ToolCall, offered: Sequence[str], time_left: float) -> ToolOutcome:
    return await toolbox.dispatch(tc.name, tc.arguments, offered, time_left=time_left)


async def _done(outcome: ToolOutcome) -> ToolOutcome:
    return outcome
