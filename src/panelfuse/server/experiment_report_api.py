"""`GET /v1/experiments/{name}/report`: an experiment's report (evals/experiment_report.py), for admins,
as JSON (the typed report), Markdown, CSV or a PNG plot. It reads the store and calls no model: the
rubric scores are those of the grades already stored (`panelfuse experiments report --grade`)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, Response

from panelfuse.evals.experiment_render import NO_MATPLOTLIB, markdown, plot_png, to_csv, to_json
from panelfuse.evals.experiment_report import ExperimentDefinitionError, experiment_report
from panelfuse.experiment_spec import NAME
from panelfuse.server.deps import Caller, State
from panelfuse.server.errors import ApiError
from panelfuse.service.caller import Principal

router = APIRouter()
ReportFormat = Literal["json", "markdown", "csv", "png"]
ExperimentName = Annotated[str, Path(min_length=1, max_length=64, pattern=NAME.pattern)]


def _admin(caller: Principal) -> None:
    if not caller.is_admin:
        raise ApiError(403, "experiment reports need the admin key", code="forbidden")


@router.get(
    "/v1/experiments/{name}/report",
    summary="An experiment's report (admin): per arm, the differences against the control, the monthly cost",
    responses={200: {"content": {"text/markdown": {}, "text/csv": {}, "image/png": {}}}},
)
async def experiment_report_route(
    name: ExperimentName,
    state: State,
    caller: Caller,
    format: Annotated[ReportFormat, Query(description="json, markdown, csv or png")] = "json",
    monthly_requests: Annotated[
        int | None, Query(ge=1, le=10**12, description="project the monthly cost at this volume")
    ] = None,
    seed: Annotated[int, Query(ge=0, le=2**32 - 1, description="the bootstrap's seed")] = 0,
) -> Response:
    _admin(caller)
    try:
        report = await experiment_report(
            state.store.database,
            name,
            state.config.experiments,
            providers=state.providers,
            monthly_requests=monthly_requests,
            seed=seed,
        )
    except ExperimentDefinitionError as exc:
        raise ApiError(500, str(exc), code="invalid_experiment_definition") from exc
    if report is None:
        raise ApiError(404, f"no experiment '{name}'", param="name", code="experiment_not_found")
    if format == "markdown":
        return Response(markdown(report), media_type="text/markdown; charset=utf-8")
    if format == "csv":
        return Response(
            to_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="experiment-{name}.csv"'},
        )
    if format == "png":
        try:
            # matplotlib's drawing is CPU work: off the event loop.
            return Response(await asyncio.to_thread(plot_png, report), media_type="image/png")
        except ImportError:
            raise ApiError(501, NO_MATPLOTLIB, param="format", code="plot_unavailable") from None
    return JSONResponse(to_json(report))
