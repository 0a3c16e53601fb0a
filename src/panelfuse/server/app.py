"""The FastAPI gateway: create_app() for tests and embedding; app_factory() for uvicorn workers."""

from __future__ import annotations

import asyncio
import contextlib
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

from panelfuse import __version__
from panelfuse.config import Config, load_config
from panelfuse.providers.http import close_shared_client
from panelfuse.providers.registry import Providers
from panelfuse.server import (
    chat,
    chatroom,
    experiments_api,
    messages_api,
    models_api,
    openrouter_api,
    responses_api,
    runs_api,
)
from panelfuse.server.collector import restore_collector, tune_collector
from panelfuse.server.deps import State
from panelfuse.server.draining import on_termination
from panelfuse.server.errors import (
    ServiceError,
    api_error_handler,
    http_handler,
    store_error_handler,
    unexpected_handler,
    validation_handler,
)
from panelfuse.server.experiment_report_api import router as experiment_report_router
from panelfuse.server.mcp_server import McpHttp
from panelfuse.server.middleware import ApiPrefix, BodyLimit, CountRequests, HostCheck
from panelfuse.server.state import GatewayState
from panelfuse.service import metrics
from panelfuse.service.carry import carried_work_done
from panelfuse.service.experiments import Experiments
from panelfuse.service.fusion import FusionService
from panelfuse.service.shadows import Shadows
from panelfuse.settings import ServerSettings
from panelfuse.store import CacheStore, ExperimentStore, GenerationStore, RunStore, StoreError

log = logging.getLogger("panelfuse.server")
RETENTION_INTERVAL = 3600.0  # seconds between retention passes


async def retain(store: RunStore, days: float) -> None:
    """Blank the content of runs, and the bodies kept with generations, older than `days`, at start
    and every hour (costs and ids stay); delete the response cache's entries that old, and the expired."""
    while True:
        try:
            cutoff = datetime.now(UTC) - timedelta(days=days)
            purged = await store.purge_content(cutoff)
            if purged:
                log.info("retention: purged the content of %d run(s)", purged)
            blanked = await GenerationStore(store.database).purge_content(cutoff)
            if blanked:
                log.info("retention: blanked the kept bodies of %d generation(s)", blanked)
            forgotten = await CacheStore(store.database).purge(created_before=cutoff)
            if forgotten:
                log.info("retention: deleted %d response cache entr(ies)", forgotten)
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
        app.state.experiments = experiments = Experiments(ExperimentStore(store.database), cfg.experiments)
        Shadows(experiments, app.state.fusion_service)
        await experiments.declare_configured()
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
        # What start-up built is frozen out of the collector's full scans, and young passes are rarer
        # (about 3 ms and 0.7 ms of CPU per fusion at C=8; docs/performance.md).
        tune_collector()
        try:
            yield
        finally:
            restore_collector()
            sweeper.cancel()
            restore_signals()
            if retention is not None:
                retention.cancel()
            await state.manager.shutdown(settings.shutdown_grace_s)
            await experiments.wait_idle(within=5)  # the records of the runs that just ended
            await mcp_sessions.aclose()  # after the drain: MCP calls waiting on runs have their outcome
            # Settling and recording that departed clients left running finish before the store closes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(carried_work_done(), timeout=10)
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
    app.include_router(experiments_api.router)
    app.include_router(models_api.router)
    app.include_router(openrouter_api.router)
    app.include_router(experiment_report_router)
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
