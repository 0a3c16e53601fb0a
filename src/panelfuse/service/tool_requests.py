"""One request to a plain model given the fusion server tool, set up the same way for every wire format
(chat completions, the Responses API): the outer model resolved and allowed, the fusion planned once on
the caller's conversation, the outer calls and the fusion admitted together, and the session that
sequences them (service/server_tool.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from panelfuse.pipeline.events import Event
from panelfuse.pipeline.result import FusionResult
from panelfuse.providers.errors import ProviderError
from panelfuse.service.admission import Admission
from panelfuse.service.caller import Principal, providers_for
from panelfuse.service.errors import from_provider_error
from panelfuse.service.fusion import FusionService, PlannedFusion
from panelfuse.service.requests import ChatCompletionRequest, FusionPlugin, upstream_request
from panelfuse.service.runs import ActiveRun
from panelfuse.service.server_tool import FUSION_FUNCTION_DEF, FusionToolSession, outer_tool_choice, outer_worst_case
from panelfuse.service.specs import fusion_spec


@dataclass
class ToolRequest:
    session: FusionToolSession
    admission: Admission
    conversation: list[dict[str, Any]]
    runs: list[ActiveRun] = field(default_factory=list)  # the fusion run, once the outer model asked for it

    @property
    def fusion_run_id(self) -> str | None:
        return self.runs[-1].run_id if self.runs else None

    async def settle(self) -> None:
        """Charge what the outer calls and the fusion cost, whatever way the request ended."""
        await self.admission.release_shielded(self.session.state.usage_dict()["cost"])


async def open_tool_request(
    service: FusionService,
    caller: Principal,
    chat: ChatCompletionRequest,
    params: FusionPlugin,
    own_tools: list[dict[str, Any]],
    *,
    admission_id: str,
    stored_request: dict[str, Any],
) -> ToolRequest:
    """Raises ServiceError (unknown model 404, allowlist 403, rate limit 429, budget 402, …) before any
    upstream call. `stored_request`: what the fusion's run records beside its messages."""
    gateway = service.gateway
    try:
        provider, route = providers_for(caller, gateway.providers).for_model(chat.model)
    except ProviderError as exc:
        raise from_provider_error(exc) from exc
    caller.check_models([route.qualified])
    if params.model is None:
        # As on OpenRouter: without `parameters.model` the judge is the model handling the request.
        params = params.model_copy(update={"model": chat.model})
    # The request's own max_tokens, temperature, stop, seed, reasoning and response_format are the outer
    # model's (it writes the answer): none of them reaches the fusion.
    bare = ChatCompletionRequest(model=chat.model, messages=chat.messages)
    spec = fusion_spec(bare, params, None, gateway.default_preset(), gateway.presets)
    conversation = chat.plain_messages()
    # `mode: "fast"` (single) runs the first member alone and its answer is the tool result; every other
    # mode runs panel + analysis for the outer model to answer from.
    mode = "single" if spec.mode == "single" else "analyze"
    # Planned once, on the caller's conversation; the fusion itself runs the same plan on the question
    # the outer model asks. Its max_cost verdict is the fusion's own (a refused fusion is a tool error).
    planned = service.plan(caller, spec.model_copy(update={"mode": mode}), conversation, enforce_max_cost=False)
    base = replace(
        upstream_request(chat, route.model),
        tools=[*own_tools, FUSION_FUNCTION_DEF],
        tool_choice=outer_tool_choice(chat.tool_choice),
    )
    outer, unpriced = outer_worst_case(gateway.prices, route.qualified, base)
    est = planned.plan.estimate
    admission = await service.admit(caller, admission_id, est.total + outer, est.unpriced + unpriced)
    runs: list[ActiveRun] = []

    async def run_fusion(messages: list[dict[str, Any]]) -> AsyncIterator[Event | FusionResult]:
        asked = PlannedFusion(planned.fusion, planned.plan.with_messages(messages))
        run = await service.start(
            caller,
            asked,
            request={"messages": messages, **stored_request},
            request_model=chat.model,
            settle=False,  # this request's admission covers the fusion
        )
        runs.append(run)
        try:
            async for ev in run.follow():
                yield ev
            await run.done.wait()
        finally:
            run.cancel("the request ended")  # a no-op once done; stops the fusion if the caller left
            session.state.fusion_result = run.result  # its cost counts, also when the caller left
        yield run.result

    session = FusionToolSession(provider, route, base, gateway.prices, run_fusion)
    return ToolRequest(session, admission, conversation, runs)
