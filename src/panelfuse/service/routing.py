"""Which path a chat-shaped request takes: a fusion, a plain model given the fusion server tool, or a
plain model proxied. One decision for every wire format (chat completions and the Responses API read
it the same way); the routes only dispatch on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from panelfuse.pipeline.modes import mode_for
from panelfuse.providers.registry import Providers
from panelfuse.providers.resolve import FusionRoute, UnknownModelError
from panelfuse.service.errors import ServiceError
from panelfuse.service.requests import ChatCompletionRequest, FusionPlugin
from panelfuse.service.server_tool import FUSION_TOOL_TYPES, split_tools, without_fusion
from panelfuse.service.specs import fusion_spec, validation_error, with_tool_parameters


@dataclass(frozen=True)
class Route:
    path: Literal["fusion", "server_tool", "proxy"]
    chat: ChatCompletionRequest  # the request as that path reads it
    plugin: FusionPlugin | None = None  # fusion: the plugin, or the server tool's parameters over it
    tool_params: FusionPlugin | None = None  # server_tool: the tool's parameters, the plugin under them
    own_tools: tuple[dict[str, Any], ...] = ()  # the caller's own tools (server_tool)
    alias_preset: str | None = None  # fusion: the alias's preset (None: the default)


def check_fusion_tool(tools: list[dict[str, Any]] | None) -> None:
    """The fusion server tool's `parameters` is an object (or absent): anything else is a 400."""
    for i, tool in enumerate(tools or []):
        if tool.get("type") in FUSION_TOOL_TYPES and not isinstance(tool.get("parameters"), dict | None):
            raise ServiceError(
                400,
                f"tools[{i}].parameters: the fusion tool's parameters must be an object",
                param=f"tools[{i}].parameters",
                code="invalid_value",
            )


def route_chat(
    chat: ChatCompletionRequest,
    providers: Providers,
    presets: dict[str, dict[str, Any]],
    default_preset: str,
    *,
    at_fusion_depth: bool,
) -> Route:
    """The path for `chat`, or a 4xx naming the field. `at_fusion_depth`: the request was made on behalf
    of a fusion (it carries a depth header)."""
    try:
        plugin = chat.fusion_plugin()
    except ValidationError as exc:
        raise validation_error(exc, "plugins[0]") from exc
    check_fusion_tool(chat.tools)
    tool_params, own_tools = split_tools(chat.tools)
    if tool_params is not None:
        # As on OpenRouter: the plugin fills the tool's parameters; the tool's own fields win.
        tool_params = with_tool_parameters(plugin, tool_params)
    try:
        resolved = providers.route(chat.model, list(presets))
    except UnknownModelError as exc:
        raise ServiceError(404, str(exc), param="model", code="model_not_found") from exc
    alias_preset = resolved.preset if isinstance(resolved, FusionRoute) else None
    is_fusion = isinstance(resolved, FusionRoute)
    if (is_fusion or tool_params is not None or (plugin is not None and plugin.enabled)) and at_fusion_depth:
        # Made on behalf of a fusion (our depth header or OpenRouter's): no fusion starts here. As on
        # OpenRouter, which then does not inject the fusion tool, the request is served without it: the
        # outer model runs with the caller's own tools only, a fusion alias is its answer model called
        # directly, and a fusion plugin is ignored.
        model = chat.model
        if is_fusion:
            bare = chat.model_copy(update={"tools": None, "n": None})
            spec = fusion_spec(bare, tool_params or plugin, alias_preset, default_preset, presets)
            model = mode_for(spec.mode).answer_model(spec)
        tools, choice = without_fusion(own_tools, chat.tool_choice)
        return Route("proxy", chat.model_copy(update={"model": model, "tools": tools, "tool_choice": choice}))
    if tool_params is not None and not is_fusion:
        return Route("server_tool", chat, tool_params=tool_params, own_tools=tuple(own_tools))
    if not is_fusion:
        if plugin is not None and plugin.enabled:
            raise ServiceError(
                400,
                f"the fusion plugin needs a fusion model (panelfuse/fusion); '{chat.model}' is a plain model",
                param="plugins",
                code="fusion_plugin_on_plain_model",
            )
        return Route("proxy", chat)
    if tool_params is not None:
        # The fusion server tool on a fusion alias configures the alias's fusion (OpenRouter's alias is
        # a model given that tool): its parameters act as the plugin, field by field over it.
        return Route(
            "fusion",
            chat.model_copy(update={"tools": own_tools or None}),
            plugin=tool_params,
            alias_preset=alias_preset,
        )
    return Route("fusion", chat, plugin=plugin, alias_preset=alias_preset)
