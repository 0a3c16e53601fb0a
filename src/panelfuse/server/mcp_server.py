"""panelfuse as an MCP server (the official `mcp` SDK): the tools `fusion`, `fusion_result`,
`fusion_estimate` and `fusion_runs`, over stdio (`panelfuse mcp`) and streamable HTTP (`/mcp` on
`panelfuse serve`). Another entry point like the HTTP routes, and as thin: each tool translates its
arguments onto `FusionService` (plan → start → wait) and the run's result back into a tool result.

- Long runs: MCP clients give up on a tool call after about a minute, so `fusion` waits at most
  `mcp_wait_s` and then answers with the run's id; the run goes on in the background and
  `fusion_result` returns it when done (or its progress so far).
- Progress: one `notifications/progress` per stage event while the call waits, when the client sent
  a progressToken (the SDK sends nothing otherwise).
- Caps: a session may start `mcp_max_fusions_per_session` fusions, `mcp_max_fusions_per_minute` a
  minute. A session is the stdio process, an HTTP session (`Mcp-Session-Id`), or, for a client on
  the sessionless 2026-07-28 protocol, the caller's key until it has been idle for SESSION_IDLE_S.
- Errors are tool results with `isError` and a message (a 402/429 from the service too).
- HTTP: `/mcp` is behind the gateway's keys, budgets and allowlist: `McpHttp` resolves the caller
  with the gateway's `Authenticator` (a 401 in OpenAI's shape without a valid key) and hands the
  `Principal` to the tools; the app's HostCheck middleware applies as to every route.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from panelfuse import __version__
from panelfuse.pipeline.result import FusionResult
from panelfuse.providers.http import close_shared_client
from panelfuse.providers.resolve import FUSION_PRESET_PREFIX, FusionRoute, UnknownModelError
from panelfuse.server.errors import ApiError
from panelfuse.server.state import GatewayState
from panelfuse.service.cache import cache_directive
from panelfuse.service.caller import Principal
from panelfuse.service.errors import ServiceError
from panelfuse.service.fusion import FusionService, PlannedFusion
from panelfuse.service.requests import ChatCompletionRequest, FusionPlugin, Identifier
from panelfuse.service.runs import ActiveRun
from panelfuse.service.session_caps import SessionCaps
from panelfuse.service.specs import fusion_spec, validation_error
from panelfuse.settings import ServerSettings
from panelfuse.spec import MAX_MEMBERS, ModeSynonym, PublicMode
from panelfuse.store import RunStore

SCOPE_PRINCIPAL = "panelfuse.principal"  # where McpHttp leaves the caller for the tools
SESSION_IDLE_S = 30 * 60.0  # the SDK's own idle timeout for HTTP sessions
MAX_QUESTION = 200_000  # characters
FUSION_MODEL = "panelfuse/fusion"


# ---- results -------------------------------------------------------------------------------------


class FusionOutcome(BaseModel):
    """`fusion` / `fusion_result` structured content."""

    status: str = Field(description="completed | failed | cancelled | interrupted | running")
    run_id: str
    answer: str | None = None
    analysis: dict[str, Any] | None = None
    cost: float | None = None
    degraded: bool = False
    failed_models: list[dict[str, Any]] = Field(default_factory=list)
    error: str | None = None
    progress: list[str] = Field(default_factory=list, description="stages done so far (while running)")


class EstimateOutcome(BaseModel):
    total: float = Field(description="worst-case cost in USD")
    by_stage: dict[str, float]
    unpriced: list[str]
    prices_as_of: str | None = None


class RunSummary(BaseModel):
    id: str
    status: str
    created_at: str
    preset: str | None = None
    mode: str
    question: str | None = None
    cost: float | None = None
    degraded: bool = False


class RunList(BaseModel):
    runs: list[RunSummary]


def describe_event(kind: str, data: dict[str, Any]) -> str | None:
    """One line of progress for a stage event; None for the events that are not a step."""
    who = f"{data.get('member') or '?'} ({data.get('model') or '?'})"
    member = data.get("member") or "?"
    switch = f"{data.get('from') or '?'} → {data.get('to') or '?'}"
    lines = {
        "panel.completed": f"panel: {who} answered",
        "panel.failed": f"panel: {who} failed",
        "panel.cut": f"panel: {who} was cut (quorum reached)",
        "panel.fallback": f"panel: {member} fell back, {switch} ({data.get('reason') or '?'})",
        "panel.hedged": f"panel: {member} hedged after {data.get('after_ms', '?')} ms, {switch}",
        "panel.hedge_won": f"panel: {member}'s hedge answered first, {switch}",
        "analysis.fallback": f"analysis: the judge fell back, {switch}",
        "analysis.completed": "analysis: the judge compared the answers",
        "analysis.failed": "analysis: the judge failed",
        "synthesis.fallback": f"answer: the synthesizer fell back, {switch}",
        "final.completed": "answer: written",
    }
    return lines.get(kind)


def outcome_of(run_id: str, status: str, result: dict[str, Any] | None, **known: Any) -> FusionOutcome:
    """The outcome from a result's wire form (a live FusionResult's or a stored run's)."""
    result = result or {}
    return FusionOutcome(
        status=status,
        run_id=run_id,
        answer=known.get("answer", result.get("content")),
        analysis=result.get("analysis"),
        cost=known.get("cost"),
        degraded=bool(known.get("degraded", result.get("degraded", False))),
        failed_models=result.get("failed_models") or [],
        error=known.get("error", result.get("error")),
    )


def outcome_of_result(result: FusionResult) -> FusionOutcome:
    return outcome_of(result.run_id, result.status, result.to_dict(), cost=result.cost)


def analysis_summary(analysis: dict[str, Any] | None) -> str:
    if not analysis:
        return "Analysis: none (this mode has no judge, or the judge failed)."
    consensus = "; ".join(str(c) for c in (analysis.get("consensus") or [])[:3]) or "none"
    counts = ", ".join(
        f"{len(analysis.get(k) or [])} {k.replace('_', ' ')}"
        for k in ("contradictions", "unique_insights", "blind_spots")
    )
    return f"Analysis: consensus: {consensus}. {counts}."


def outcome_text(out: FusionOutcome) -> str:
    """What the calling model reads: the answer, a short analysis summary, the cost."""
    if out.status == "running":
        steps = "; ".join(out.progress) or "started"
        return (
            f"The fusion is still running (run_id {out.run_id}); it goes on in the background. "
            f"Call fusion_result with this run_id for the answer. Progress so far: {steps}."
        )
    if out.status != "completed":
        return f"The fusion {out.status}: {out.error or 'no answer'} (run_id {out.run_id})."
    cost = "unknown" if out.cost is None else f"${out.cost:.6f}"
    failed = ", ".join(str(f.get("model")) for f in out.failed_models)
    notes = f" · degraded{f' (failed: {failed})' if failed else ''}" if out.degraded else ""
    return f"{out.answer}\n\n---\n{analysis_summary(out.analysis)}\nCost: {cost} · run_id {out.run_id}{notes}"


def tool_result(out: FusionOutcome) -> CallToolResult:
    failed = out.status not in ("completed", "running")
    return CallToolResult(
        content=[TextContent(type="text", text=outcome_text(out))],
        structured_content=out.model_dump(mode="json"),
        is_error=failed,
    )


# ---- the tools -----------------------------------------------------------------------------------


@contextlib.contextmanager
def as_tool_errors() -> Iterator[None]:
    """The service's refusals (400/402/403/429 …) become a tool error the calling model can read."""
    try:
        yield
    except ServiceError as exc:
        raise ToolError(f"{exc.message} (status {exc.status}, {exc.code or 'error'})") from exc


@dataclass
class FusionTools:
    gateway: GatewayState
    service: FusionService
    caps: SessionCaps
    # stdio: the local operator, one session for the process; None on HTTP (the caller comes with
    # each request, from McpHttp).
    local_caller: Principal | None = None

    @property
    def wait_s(self) -> float:
        return self.gateway.settings.mcp_wait_s

    def caller(self, ctx: Context) -> Principal:
        if self.local_caller is not None:
            return self.local_caller
        request = ctx.request_context.request
        principal = request.scope.get(SCOPE_PRINCIPAL) if isinstance(request, Request) else None
        if not isinstance(principal, Principal):  # never: McpHttp sets it on every request
            raise ToolError("unauthenticated")
        return principal

    def session(self, ctx: Context, caller: Principal) -> str:
        if self.local_caller is not None:
            return "stdio"
        # Bound to the caller: another key presenting this session's id counts against its own tally.
        who = caller.key_id or caller.passthrough_id or "local"
        session_id = (ctx.headers or {}).get("mcp-session-id")
        return f"session:{who}:{session_id}" if session_id else f"caller:{who}"

    def plan(
        self, caller: Principal, question: str, preset: str | None, options: dict[str, Any], *, enforce: bool = True
    ) -> tuple[ChatCompletionRequest, PlannedFusion]:
        """The question and options as the chat request an alias and the fusion plugin make (the same
        spec, the same checks), planned for this caller."""
        model = f"{FUSION_PRESET_PREFIX}{preset}" if preset else FUSION_MODEL
        plugin = {"id": "fusion", **{k: v for k, v in options.items() if v is not None}}
        try:
            chat = ChatCompletionRequest(model=model, messages=[{"role": "user", "content": question}])
            route = self.gateway.providers.route(model, list(self.gateway.presets))
        except ValidationError as exc:
            raise validation_error(exc, "arguments") from exc
        except UnknownModelError as exc:
            raise ServiceError(400, f"unknown preset '{preset}'", param="preset", code="unknown_preset") from exc
        if not isinstance(route, FusionRoute):
            raise ServiceError(400, f"'{preset}' is not a preset", param="preset", code="unknown_preset")
        try:
            parsed = FusionPlugin.model_validate(plugin)
        except ValidationError as exc:
            raise validation_error(exc, "arguments") from exc
        spec = fusion_spec(chat, parsed, route.preset, self.gateway.default_preset(), self.gateway.presets)
        planned = self.service.plan(
            caller, spec, chat.plain_messages(), enforce_max_cost=enforce, max_cost_param="max_cost"
        )
        return chat, planned

    async def fusion(self, ctx: Context, question: str, preset: str | None, options: dict[str, Any]) -> CallToolResult:
        with as_tool_errors():
            caller = self.caller(ctx)
            chat, planned = self.plan(caller, question, preset, options)
            session = self.session(ctx, caller)
            refusal = self.caps.take(session)
            if refusal is not None:
                raise ToolError(refusal)
            try:
                # In the background from the start: past the wait the call returns and the run goes on.
                run = await self.service.start(
                    caller,
                    planned,
                    request=chat.model_dump(mode="json", exclude_none=True),
                    request_model=chat.model,
                    background=True,
                    live=wants_progress(ctx),
                    cache=cache_directive(ctx.headers or {}),
                )
            except BaseException:
                self.caps.give_back(session)
                raise
        return tool_result(await self.await_run(ctx, run, cancel_on_leave=True))

    async def await_run(self, ctx: Context, run: ActiveRun, *, cancel_on_leave: bool) -> FusionOutcome:
        """The run's outcome, or after `mcp_wait_s` its progress so far (status "running")."""
        progress: list[str] = []
        try:
            async with asyncio.timeout(self.wait_s):
                if wants_progress(ctx):
                    async for ev in run.follow():
                        line = describe_event(ev.type, ev.data)
                        if line is not None:
                            progress.append(line)
                            await ctx.report_progress(len(progress), None, line)
                await run.done.wait()
        except TimeoutError:
            return FusionOutcome(status="running", run_id=run.run_id, progress=progress)
        except asyncio.CancelledError:
            # The client cancelled the call before the run went to the background: nobody will ask.
            if cancel_on_leave and not run.done.is_set():
                run.cancel("the MCP client cancelled the tool call")
            raise
        return outcome_of_result(run.result)

    async def result(self, ctx: Context, run_id: str) -> CallToolResult:
        caller = self.caller(ctx)
        store = self.gateway.store
        record = await store.get_run(run_id, key_id=caller.scope)  # another key's run is not found
        if record is None:
            raise ToolError(f"no run '{run_id}'")
        active = self.gateway.manager.active.get(run_id)
        if active is not None and not active.done.is_set():
            outcome = await self.await_run(ctx, active, cancel_on_leave=False)
            if outcome.status == "running":
                return tool_result(outcome)
            record = await store.get_run(run_id) or record
        if record.status == "running":  # driven by another process: its stored events so far
            events = await store.events_after(run_id, 0, limit=1000)
            steps = [line for e in events if (line := describe_event(e.type, e.data)) is not None]
            return tool_result(FusionOutcome(status="running", run_id=run_id, progress=steps))
        out = outcome_of(
            run_id, record.status, record.result, cost=record.cost, degraded=record.degraded, answer=record.content
        )
        if record.error and out.status != "completed":
            out.error = record.error
        return tool_result(out)

    def estimate(self, ctx: Context, question: str, preset: str | None, options: dict[str, Any]) -> EstimateOutcome:
        with as_tool_errors():
            _, planned = self.plan(self.caller(ctx), question, preset, options, enforce=False)
        est = planned.plan.estimate
        return EstimateOutcome(
            total=est.total, by_stage=est.by_stage(), unpriced=est.unpriced, prices_as_of=self.gateway.prices.as_of
        )

    async def runs(self, ctx: Context, limit: int, status: str | None) -> RunList:
        page = await self.gateway.store.list_runs(limit=limit, status=status, key_id=self.caller(ctx).scope)
        return RunList(
            runs=[
                RunSummary(
                    id=r.id,
                    status=r.status,
                    created_at=r.created_at.isoformat(),
                    preset=r.preset,
                    mode=r.mode,
                    question=_question(r.request),
                    cost=r.cost,
                    degraded=r.degraded,
                )
                for r in page.items
            ]
        )


def wants_progress(ctx: Context) -> bool:
    meta = ctx.request_context.meta
    return bool(meta) and meta.get("progress_token") is not None  # type: ignore[union-attr]


def _question(request: dict[str, Any]) -> str | None:
    messages = request.get("messages") or []
    content = messages[-1].get("content") if messages and isinstance(messages[-1], dict) else None
    return content[:200] if isinstance(content, str) else None


Question = Annotated[str, Field(min_length=1, max_length=MAX_QUESTION, description="the question for the panel")]
Preset = Annotated[Identifier | None, Field(description="a preset name (default: the gateway's default)")]
Panel = Annotated[
    list[Identifier] | None,
    Field(min_length=1, max_length=MAX_MEMBERS, description="panel models, e.g. ['openai/gpt-4o', ...]"),
]
Judge = Annotated[Identifier | None, Field(description="the judge's model")]
ModeArg = Annotated[PublicMode | ModeSynonym | None, Field(description="how the answer is made")]
MaxCost = Annotated[float | None, Field(ge=0, description="refuse the run if its worst case costs more (USD)")]


def build_server(tools: FusionTools) -> MCPServer:
    server: MCPServer = MCPServer("panelfuse", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool(description="Ask a panel of models, have a judge analyse their answers, get one answer.")
    async def fusion(
        question: Question,
        ctx: Context,
        preset: Preset = None,
        panel: Panel = None,
        judge: Judge = None,
        mode: ModeArg = None,
        max_cost: MaxCost = None,
    ) -> Annotated[CallToolResult, FusionOutcome]:
        options = {"analysis_models": panel, "model": judge, "mode": mode, "max_cost": max_cost}
        return await tools.fusion(ctx, question, preset, options)

    @server.tool(description="A fusion's result by run_id, when done; else its progress so far.")
    async def fusion_result(run_id: Identifier, ctx: Context) -> Annotated[CallToolResult, FusionOutcome]:
        return await tools.result(ctx, run_id)

    @server.tool(description="The worst-case cost of a fusion (USD), before running it.")
    async def fusion_estimate(
        question: Question,
        ctx: Context,
        preset: Preset = None,
        panel: Panel = None,
        judge: Judge = None,
        mode: ModeArg = None,
    ) -> EstimateOutcome:
        return tools.estimate(ctx, question, preset, {"analysis_models": panel, "model": judge, "mode": mode})

    @server.tool(description="Your recent fusion runs, newest first.")
    async def fusion_runs(
        ctx: Context,
        limit: Annotated[int, Field(ge=1, le=100)] = 10,
        status: Annotated[Identifier | None, Field(description="running, completed, failed, …")] = None,
    ) -> RunList:
        return await tools.runs(ctx, limit, status)

    return server


INSTRUCTIONS = (
    "panelfuse runs a fusion: several models answer the question, a judge analyses their answers, and "
    "one answer is written. A long fusion returns a run_id with status 'running': call fusion_result "
    "with it later. Use fusion_estimate to see the worst-case cost first."
)


# ---- transports ----------------------------------------------------------------------------------


class McpHttp:
    """The ASGI app at /mcp: authenticates each request like the HTTP API, then hands it to the SDK's
    streamable HTTP session manager, which lives as long as the app (`start` in its lifespan)."""

    def __init__(self) -> None:
        self.manager: StreamableHTTPSessionManager | None = None

    async def start(self, gateway: GatewayState, service: FusionService) -> contextlib.AsyncExitStack:
        """Run the session manager until the returned stack is closed (after the runs are drained)."""
        server = build_server(FusionTools(gateway, service, SessionCaps.of(gateway.settings, SESSION_IDLE_S)))
        # The Host check is the gateway's (HostCheck middleware, --allowed-hosts), not the SDK's own.
        server.streamable_http_app(transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(server.session_manager.run())
        self.manager = server.session_manager
        stack.callback(self._stopped)
        return stack

    def _stopped(self) -> None:
        self.manager = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.manager is None:
            await ApiError(503, "the MCP endpoint is not running", code="unavailable").response()(scope, receive, send)
            return
        gateway: GatewayState = scope["app"].state.gateway
        try:
            principal = await gateway.auth(Request(scope, receive))
        except ApiError as exc:
            await exc.response()(scope, receive, send)
            return
        await self.manager.handle_request({**scope, SCOPE_PRINCIPAL: principal}, receive, send)


async def serve_stdio(settings: ServerSettings, config: Any) -> None:
    """`panelfuse mcp`: the gateway's state (store, keys, budgets, limits) built as `serve` builds it,
    the tools served over stdin/stdout for one local client, the operator."""
    store = await RunStore.open(settings.db_url or RunStore.default_url(), schema=settings.db_schema)
    gateway = GatewayState.build(config, store, settings)
    try:
        await gateway.manager.sweep_abandoned(settings.stale_after_s)
        local = Principal(is_admin=True, policy=gateway.auth.policy)
        tools = FusionTools(
            gateway, FusionService(gateway), SessionCaps.of(settings, SESSION_IDLE_S), local_caller=local
        )
        await build_server(tools).run_stdio_async()
    finally:
        await _close(
            [
                lambda: gateway.manager.shutdown(settings.shutdown_grace_s),
                gateway.limiter.close,
                store.close,
                close_shared_client,
            ]
        )


async def _close(steps: Iterable[Callable[[], Awaitable[Any]]]) -> None:
    for step in steps:
        with contextlib.suppress(Exception):
            await step()
