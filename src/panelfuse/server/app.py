"""The FastAPI gateway: create_app() for tests and embedding; app_factory() for uvicorn workers."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from panelfuse import __version__
from panelfuse.config import Config, load_config
from panelfuse.providers.http import close_shared_client
from panelfuse.providers.registry import Providers
from panelfuse.server import chat, chatroom, messages_api, models_api, openrouter_api, responses_api, runs_api
from panelfuse.server.access import host_allowed
from panelfuse.server.deps import State
from panelfuse.server.draining import on_termination
from panelfuse.server.errors import (
    ApiError,
    ServiceError,
    api_error_handler,
    http_handler,
    store_error_handler,
    unexpected_handler,
    validation_handler,
)
from panelfuse.server.mcp_server import McpHttp
from panelfuse.server.state import GatewayState
from panelfuse.service import metrics
from panelfuse.service.fusion import FusionService
from panelfuse.settings import ServerSettings
from panelfuse.store import GenerationStore, RunStore, StoreError

log = logging.getLogger("panelfuse.server")


class BodyLimit:
    """413 for bodies over the limit, by Content-Length or by counting a chunked body as it arrives.

    A chunked body is only known to be too large while the route reads it; an exception raised there
    would become FastAPI's 400 ("error parsing the body"). So the 413 is sent from here, the route is
    told the client left, and whatever it answers after that is dropped."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def too_big(self) -> ApiError:
        return ApiError(413, f"the request body is larger than {self.max_bytes} bytes", code="body_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self.too_big().response()(scope, receive, send)
            return
        seen, started, refused = 0, False, False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 is the answer
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def counting_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if started:  # a route that answered before reading all of it: nothing left to say
                        raise self.too_big()
                    await _send_error(send, self.too_big())
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise  # after the 413, the route's complaint about the missing body is expected


async def _send_error(send: Send, error: ApiError) -> None:
    response = error.response()
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


class HostCheck:
    """With auth off, only requests whose Host names this machine (or an allowed host) are served: a
    web page whose name the attacker re-points at 127.0.0.1 (DNS rebinding) sends its own name as Host.
    With auth on, any Host is accepted (a token is needed anyway)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = getattr(scope["app"].state, "gateway", None) if scope["type"] in ("http", "websocket") else None
        if state is None or await self._allowed(scope, state):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        error = ApiError(
            403,
            "this host name is not allowed while auth is off: use localhost, or start the server with "
            "--allowed-hosts (or turn auth on)",
            code="host_not_allowed",
        )
        await _send_error(send, error)

    @staticmethod
    async def _allowed(scope: Scope, state: GatewayState) -> bool:
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        return host_allowed(host, state.allowed_hosts) or await state.auth.is_on(state.store)


class ApiPrefix:
    """`/api/v1/...` is `/v1/...`: OpenRouter's users have `https://openrouter.ai/api/v1` as their base
    URL, so changing only the host must work. The path is rewritten before routing, so every /v1 route,
    including any added later, answers under both; only `/v1/...` is in the OpenAPI schema."""

    PREFIX = "/api/v1/"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] in ("http", "websocket") and (path.startswith(self.PREFIX) or path == "/api/v1"):
            scope = dict(scope)
            scope["path"] = path.removeprefix("/api")
            raw = scope.get("raw_path")
            if isinstance(raw, bytes) and raw.startswith(b"/api/"):
                scope["raw_path"] = raw.removeprefix(b"/api")
        await self.app(scope, receive, send)


class CountRequests:
    """Counts requests by route template and status. Pure ASGI (not BaseHTTPMiddleware, which hides
    client disconnects from the endpoints)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = "000"

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.REQUESTS.labels(scope.get("method", "?"), route, status).inc()


RETENTION_INTERVAL = 3600.0


async def retain(store: RunStore, days: float) -> None:
    """Blank the content of runs, and the bodies kept with generations, older than `days`, at start
    and every hour (costs and ids stay)."""
    while True:
        try:
            cutoff = datetime.now(UTC) - timedelta(days=days)
            purged = await store.purge_content(cutoff)
            if purged:
                log.info("retention: purged the content of %d run(s)", purged)
            blanked = await GenerationStore(store.database).purge_content(cutoff)
            if blanked:
                log.info("retention: blanked the kept bodies of %d generation(s)", blanked)
        except Exception:
            log.exception("retention pass failed")
        await asyncio.sleep(RETENTION_INTERVAL)


def create_app(
    settings: ServerSettings | None = None, config: Config | None = None, providers: Providers | None = None
) -> FastAPI:
    settings = settings or ServerSettings()
    mcp_http = McpHttp()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cfg = config or load_config(settings.config_path)
        store = await RunStore.open(settings.db_url or RunStore.default_url(), schema=settings.db_schema)
        app.state.gateway = state = GatewayState.build(cfg, store, settings, providers)
        app.state.fusion_service = FusionService(state)
        mcp_sessions = await mcp_http.start(state, app.state.fusion_service)  # /mcp's sessions live with the app
        # Runs a dead process left 'running' are interrupted, not lost: at once for a process of this
        # host that is gone (a restart after a crash), and by any replica once their heartbeat stops.
        await state.manager.sweep_abandoned(settings.stale_after_s)
        sweeper = asyncio.create_task(state.manager.sweep_forever(settings.stale_after_s), name="run-sweeper")
        draining: list[asyncio.Task[None]] = []

        def begin_draining() -> None:  # SIGTERM: runs get the grace now, before connections are closed
            if not draining:
                draining.append(asyncio.create_task(state.manager.drain(settings.shutdown_grace_s), name="drain"))

        restore_signals = on_termination(begin_draining)
        retention = None
        if settings.retain_days is not None:
            retention = asyncio.create_task(retain(store, settings.retain_days))
        # What startup built (modules, the app, the config) lives as long as the process: keep it out
        # of the cyclic collector's full scans, which otherwise walk it again and again under load
        # (about 3 ms of CPU per fusion at C=8 before, under 1 ms after; docs/performance.md).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()  # what this app froze can be collected once it is gone (tests start many)
            sweeper.cancel()
            restore_signals()
            if retention is not None:
                retention.cancel()
            await state.manager.shutdown(settings.shutdown_grace_s)
            await mcp_sessions.aclose()  # after the drain: MCP calls waiting on runs have their outcome
            await state.limiter.close()
            await store.close()
            await close_shared_client()

    app = FastAPI(
        title="panelfuse",
        version=__version__,
        summary="An open, self-hosted Fusion API (OpenAI-compatible).",
        lifespan=lifespan,
    )
    app.add_exception_handler(RequestValidationError, validation_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_handler)  # type: ignore[arg-type]
    app.add_exception_handler(ServiceError, api_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StoreError, store_error_handler)
    app.add_exception_handler(Exception, unexpected_handler)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HostCheck)  # before the body is read: a refused host never sends it
    app.add_middleware(CountRequests)
    app.add_middleware(ApiPrefix)  # outermost: everything inside sees the /v1 path
    app.include_router(chat.router)
    app.include_router(responses_api.router)
    app.include_router(messages_api.router)
    app.include_router(runs_api.router)
    app.include_router(models_api.router)
    app.include_router(openrouter_api.router)
    app.include_router(chatroom.router)
    app.router.routes.append(Route("/mcp", mcp_http, include_in_schema=False))  # MCP over HTTP (mcp_server.py)

    @app.get("/healthz", summary="Liveness and store check")
    async def healthz(state: State) -> JSONResponse:
        try:
            await state.store.list_runs(limit=1)
        except Exception as exc:
            return JSONResponse({"status": "degraded", "store": f"error: {type(exc).__name__}"}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "store": "ok",
                "version": __version__,
                "pid": os.getpid(),
                "active_runs": len(state.manager.active),
                "tasks": len(asyncio.all_tasks()),  # the reliability load test checks they return to baseline
            }
        )

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return app


def app_factory() -> FastAPI:
    """uvicorn's entry for each worker: the settings come from the environment `panelfuse serve` set."""
    return create_app(ServerSettings.load())
