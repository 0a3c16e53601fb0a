"""A re-synthesis: a stored run's spec with a new judge, synthesizer, mode or criteria (pure)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from panelfuse.pipeline.modes import mode_for
from panelfuse.service.errors import ServiceError
from panelfuse.service.requests import ResynthesizeRequest
from panelfuse.service.specs import refuse_fusion_models, validation_error
from panelfuse.spec import FusionSpec


def resynthesis_spec(stored: dict[str, Any], body: ResynthesizeRequest) -> FusionSpec:
    """The new spec, or a 400 naming the field. Its mode must use a judge: the panel is not re-run."""
    data = dict(stored)
    data["judge"] = dict(data["judge"])
    if body.model:
        data["judge"].update(model=body.model, fallbacks=[])
    if body.synthesizer:
        data["synthesizer"] = {"model": body.synthesizer, "fallbacks": []}
    for key, value in (("mode", body.mode), ("max_tokens", body.max_completion_tokens)):
        if value is not None:
            data[key] = value
    if body.criteria is not None:
        data["judge"]["criteria"] = body.criteria
    if body.dimensions is not None:
        data["judge"]["dimensions"] = body.dimensions
    try:
        spec = FusionSpec.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, "body") from exc
    refuse_fusion_models(spec)
    if not mode_for(spec.mode).uses_judge:
        raise ServiceError(400, f"mode '{spec.mode}' has no judge to re-run", param="mode", code="invalid_value")
    return spec
