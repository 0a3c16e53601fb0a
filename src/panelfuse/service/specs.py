"""A chat-completions request (alias, plugin or server-tool parameters) → the FusionSpec it asks for."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from panelfuse.providers.resolve import FusionRoute, UnknownModelError, resolve_model
from panelfuse.service.errors import ServiceError
from panelfuse.service.plugin import spec_from_request
from panelfuse.service.requests import ChatCompletionRequest, FusionPlugin, first_problem
from panelfuse.spec import FusionSpec


def validation_error(exc: ValidationError, prefix: str) -> ServiceError:
    loc, msg = first_problem(exc.errors())
    where = ".".join(str(p) for p in loc)
    param = f"{prefix}.{where}" if where else prefix
    return ServiceError(400, f"{param}: {msg}", param=param, code="invalid_value")


def _models(spec: FusionSpec) -> Iterator[tuple[str, str]]:
    """(the field that set it, model id) for every model a spec may call."""
    for i, m in enumerate(spec.members):
        yield f"analysis_models[{i}]", m.model
        yield from ((f"analysis_models[{i}].fallbacks", f) for f in m.fallbacks)
    yield "model", spec.judge.model
    yield from (("judge_fallbacks", f) for f in spec.judge.fallbacks)
    if spec.synthesizer.model:
        yield "synthesizer", spec.synthesizer.model
    yield from (("synthesizer.fallbacks", f) for f in spec.synthesizer.fallbacks)


def _is_fusion_alias(model: str, presets: Collection[str] | None) -> bool:
    try:
        return isinstance(resolve_model(model, (), "", presets), FusionRoute)
    except UnknownModelError:  # the fusion namespace, naming no preset: no plain model either
        return True
    except ValueError:
        return False


def refuse_fusion_models(spec: FusionSpec, presets: Collection[str] | None = None) -> None:
    """A 400 naming the field when a member, the judge or the synthesizer is a fusion alias: a fusion
    inside a fusion is never planned (it would fail at plan time with a less telling error)."""
    for where, model in _models(spec):
        if _is_fusion_alias(model, presets):
            raise ServiceError(
                400,
                f"{where}: '{model}' is a fusion alias; a fusion's members, judge and synthesizer must be "
                "plain models (e.g. 'openai/gpt-4o')",
                param=where,
                code="fusion_model_not_allowed",
            )


def with_tool_parameters(plugin: FusionPlugin | None, params: FusionPlugin) -> FusionPlugin:
    """The fusion server tool's configuration when the request also carries the fusion plugin: as on
    OpenRouter, the plugin fills the tool's parameters and each field the tool's own parameters set
    overrides it. A plugin with `enabled: false` adds nothing (the tool, declared explicitly, still runs)."""
    if plugin is None or not plugin.enabled:
        return params
    merged = {**plugin.model_dump(exclude_unset=True), **params.model_dump(exclude_unset=True)}
    try:
        return FusionPlugin.model_validate(merged)
    except ValidationError as exc:
        raise validation_error(exc, "tools.parameters") from exc


def fusion_spec(
    body: ChatCompletionRequest,
    plugin: FusionPlugin | None,
    alias_preset: str | None,
    default_preset: str,
    presets: Mapping[str, Mapping[str, Any]],
) -> FusionSpec:
    """The spec, or a 400 naming the field. A disabled plugin runs the first member alone."""
    if not any(m.role == "user" for m in body.messages):
        # A plain model takes any conversation (a system prompt alone, an assistant prefill); the
        # panel answers a question, so a fusion needs one.
        raise ServiceError(
            400, "messages must contain at least one user message", param="messages", code="invalid_value"
        )
    if body.n is not None and body.n > 1:
        raise ServiceError(400, "n > 1 is not supported on a fusion model", param="n", code="unsupported_parameter")
    if body.tools:
        raise ServiceError(
            400,
            "client function tools are not supported on a fusion model; give them to a plain "
            "model that calls the fusion server tool",
            param="tools",
            code="unsupported_parameter",
        )
    try:
        spec = spec_from_request(body, plugin, alias_preset, default_preset, presets)
    except KeyError as exc:
        raise ServiceError(400, str(exc.args[0]), param="plugins[0].preset", code="unknown_preset") from exc
    except ValidationError as exc:
        raise validation_error(exc, "fusion") from exc
    refuse_fusion_models(spec, list(presets))
    if plugin is not None and not plugin.enabled:
        spec = spec.model_copy(update={"mode": "single"})
    return spec
