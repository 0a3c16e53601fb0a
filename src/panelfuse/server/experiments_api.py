"""/v1/experiments: the admin API of A/B experiments (create, list, read, pause and resume an arm,
stop with a chosen arm, start again) and `/v1/feedback`, a score for any answer by its id.

Only the admin (or anyone while auth is off) manages experiments: a key's caller gets a 403. A config
file's experiment is managed the same way; its definition comes back from the file at every start,
its state (paused arms, stopped) is kept in the store.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from panelfuse.experiment_spec import NAME, Experiment, ExperimentSpec
from panelfuse.server.deps import Caller, State, Trials
from panelfuse.server.errors import ApiError
from panelfuse.service.caller import Principal
from panelfuse.service.requests import FeedbackRequest, FusionPlugin
from panelfuse.service.specs import validation_error
from panelfuse.store.experiments import ExperimentRow

router = APIRouter()

Name = Annotated[str, Path(pattern=NAME.pattern, description="the experiment's name")]


class StopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chosen_arm: str | None = Field(default=None, description="the arm that takes all traffic (default: the control)")


class AnswerFeedback(FeedbackRequest):
    id: str = Field(min_length=1, max_length=128, description="a run id or a completion id")


def _admin(caller: Principal) -> None:
    if not caller.is_admin:
        raise ApiError(403, "managing experiments needs the admin key", code="forbidden")


def experiment_object(row: ExperimentRow) -> dict[str, Any]:
    return {
        "object": "experiment",
        "name": row.name,
        "status": row.status,
        "chosen_arm": row.chosen_arm,
        "paused_arms": list(row.paused_arms),
        "source": row.source,
        "definition": row.definition,
        "created_at": int(row.created_at.timestamp()),
        "updated_at": int(row.updated_at.timestamp()),
    }


async def _found(trials: Trials, name: str) -> tuple[ExperimentRow, ExperimentSpec]:
    row = await trials.store.get(name)
    if row is None:
        raise ApiError(404, f"no experiment '{name}'", param="name", code="experiment_not_found")
    return row, ExperimentSpec.model_validate(row.definition)


def _arm_or_404(spec: ExperimentSpec, arm: str) -> None:
    if spec.arm(arm) is None:
        known = ", ".join(a.name for a in spec.arms)
        raise ApiError(404, f"no arm '{arm}' (arms: {known})", param="arm", code="arm_not_found")


def check_plugins(experiment: Experiment) -> None:
    """Each arm's `fusion` is the fusion plugin's fields: checked now, not on the first request."""
    for i, arm in enumerate(experiment.arms):
        if arm.fusion is None:
            continue
        try:
            FusionPlugin.model_validate(arm.plugin())
        except ValidationError as exc:
            raise validation_error(exc, f"arms[{i}].fusion") from exc


@router.get("/v1/experiments", summary="List the experiments (admin)")
async def list_experiments(trials: Trials, caller: Caller) -> dict[str, Any]:
    _admin(caller)
    return {"object": "list", "data": [experiment_object(r) for r in await trials.store.all()]}


@router.post("/v1/experiments", summary="Create an experiment (admin)", status_code=201)
async def create_experiment(body: Annotated[Experiment, Body()], trials: Trials, caller: Caller) -> dict[str, Any]:
    _admin(caller)
    check_plugins(body)
    if not await trials.create(body):
        raise ApiError(409, f"an experiment named '{body.name}' exists", param="name", code="experiment_exists")
    row, _ = await _found(trials, body.name)
    return experiment_object(row)


@router.get("/v1/experiments/{name}", summary="One experiment (admin)")
async def get_experiment(name: Name, trials: Trials, caller: Caller) -> dict[str, Any]:
    _admin(caller)
    row, _ = await _found(trials, name)
    return experiment_object(row)


@router.post("/v1/experiments/{name}/arms/{arm}/pause", summary="Pause an arm: it gets no traffic (admin)")
async def pause_arm(name: Name, arm: str, state: State, trials: Trials, caller: Caller) -> dict[str, Any]:
    _admin(caller)
    row, spec = await _found(trials, name)
    _arm_or_404(spec, arm)
    paused = {*row.paused_arms, arm}
    if all(a.name in paused for a in spec.primary_arms):
        raise ApiError(409, "pausing it would leave no arm to answer; stop the experiment instead", code="last_arm")
    updated = await trials.set_state(name, paused_arms=sorted(paused))
    trials.cancel_shadows(name, arm)
    assert updated is not None
    return experiment_object(updated)


@router.post("/v1/experiments/{name}/arms/{arm}/resume", summary="Resume a paused arm (admin)")
async def resume_arm(name: Name, arm: str, trials: Trials, caller: Caller) -> dict[str, Any]:
    _admin(caller)
    row, spec = await _found(trials, name)
    _arm_or_404(spec, arm)
    updated = await trials.set_state(name, paused_arms=[a for a in row.paused_arms if a != arm])
    assert updated is not None
    return experiment_object(updated)


@router.post("/v1/experiments/{name}/stop", summary="Stop: all traffic goes to the chosen arm (admin)")
async def stop_experiment(
    name: Name, trials: Trials, caller: Caller, body: Annotated[StopRequest | None, Body()] = None
) -> dict[str, Any]:
    _admin(caller)
    _, spec = await _found(trials, name)
    chosen = (body.chosen_arm if body else None) or spec.primary_arms[0].name
    _arm_or_404(spec, chosen)
    updated = await trials.set_state(name, status="stopped", chosen_arm=chosen)
    trials.cancel_shadows(name)
    assert updated is not None
    return experiment_object(updated)


@router.post("/v1/experiments/{name}/start", summary="Run a stopped experiment again (admin)")
async def start_experiment(name: Name, trials: Trials, caller: Caller) -> dict[str, Any]:
    _admin(caller)
    await _found(trials, name)
    updated = await trials.set_state(name, status="running")
    assert updated is not None
    return experiment_object(updated)


@router.post("/v1/feedback", summary="Score an answer (-1 … 1) by its run id or completion id")
async def answer_feedback(body: AnswerFeedback, state: State, trials: Trials, caller: Caller) -> dict[str, Any]:
    """A fusion's run takes the score (as `/v1/fusion/runs/{id}/feedback` does); a proxied answer an
    experiment recorded keeps it with the experiment's record (the report's feedback column)."""
    run_id = body.id if body.id.startswith("run_") else None
    if run_id is None and body.id.startswith("chatcmpl-"):
        candidate = "run_" + body.id.removeprefix("chatcmpl-")
        if await state.store.get_run(candidate, key_id=caller.scope) is not None:
            run_id = candidate
    took = False
    if run_id is not None:
        took = await state.store.set_feedback(run_id, body.score, body.comment, key_id=caller.scope)
    took = bool(await trials.store.set_feedback(run_id or body.id, body.score, key_id=caller.scope)) or took
    if not took:
        raise ApiError(404, f"no answer '{body.id}'", param="id", code="not_found")
    return {"id": body.id, "object": "feedback", "score": body.score, "comment": body.comment}
