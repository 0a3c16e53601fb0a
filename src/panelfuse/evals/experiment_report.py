"""An experiment's report from the store: its definition (the store's, else the config file's, for an
experiment the gateway has not declared yet), its recorded requests and its stored grades, handed to
the arithmetic (`experiment_stats.build_report`). Used by `panelfuse experiments report` and by
`GET /v1/experiments/{name}/report`; neither calls a model unless the CLI is asked to `--grade`."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from panelfuse.evals.experiment_grading import ArmScores, stored_scores
from panelfuse.evals.experiment_stats import ExperimentReport, build_report
from panelfuse.experiment_spec import ExperimentSpec
from panelfuse.providers.registry import Providers
from panelfuse.providers.resolve import ProviderRoute
from panelfuse.store.database import Database
from panelfuse.store.experiments import ExperimentRequest, ExperimentRow, ExperimentStore


class ExperimentDefinitionError(ValueError):
    """The stored definition no longer validates (written by an older version, or by hand)."""


@dataclass(frozen=True)
class ExperimentInputs:
    name: str
    spec: ExperimentSpec
    state: ExperimentRow | None  # None: declared in the config file only
    rows: list[ExperimentRequest]


async def load_inputs(
    database: Database, name: str, configured: Mapping[str, ExperimentSpec]
) -> ExperimentInputs | None:
    """The experiment's definition, state and requests; None when neither the store nor the config
    knows the name."""
    store = ExperimentStore(database)
    state = await store.get(name)
    if state is not None:
        try:
            spec = ExperimentSpec.model_validate(state.definition)
        except ValidationError as exc:
            raise ExperimentDefinitionError(f"experiment '{name}': the stored definition is invalid: {exc}") from exc
    elif name in configured:
        spec = configured[name]
    else:
        return None
    return ExperimentInputs(name, spec, state, await store.requests(name))


def grader_id(providers: Providers, model: str) -> str:
    """The grader's qualified id, as the grades store it (`grader` → `openrouter/grader`); the id as
    written when the config cannot resolve it (the report then finds no grades)."""
    try:
        route = providers.route(model)
    except Exception:  # an unknown provider or a malformed id: nothing was graded under it either
        return model
    return route.qualified if isinstance(route, ProviderRoute) else model


def assemble(
    inputs: ExperimentInputs,
    scores: ArmScores | None,
    *,
    monthly_requests: int | None = None,
    seed: int = 0,
) -> ExperimentReport:
    state = inputs.state
    return build_report(
        inputs.name,
        inputs.spec,
        inputs.rows,
        rubric_scores=scores.scores if scores is not None else None,
        rubric_samples=scores.samples if scores is not None else None,
        monthly_requests=monthly_requests,
        status=state.status if state is not None else None,
        chosen_arm=state.chosen_arm if state is not None else None,
        paused_arms=state.paused_arms if state is not None else (),
        seed=seed,
    )


async def experiment_report(
    database: Database,
    name: str,
    configured: Mapping[str, ExperimentSpec],
    *,
    providers: Providers | None = None,
    monthly_requests: int | None = None,
    seed: int = 0,
) -> ExperimentReport | None:
    """The report of `name`, None when there is no such experiment. `providers` resolve the grader's
    model id to the qualified one its grades are stored under."""
    inputs = await load_inputs(database, name, configured)
    if inputs is None:
        return None
    scores = None
    if inputs.spec.grader is not None:
        written = inputs.spec.grader.model
        model = grader_id(providers, written) if providers is not None else written
        scores = await stored_scores(database, name, inputs.spec, inputs.rows, model)
    # The bootstraps are CPU work (seconds on a large experiment): off the event loop.
    return await asyncio.to_thread(assemble, inputs, scores, monthly_requests=monthly_requests, seed=seed)
