"""Builds provider adapters from the config and resolves model ids to (provider, model id)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from panelfuse.config import Config, ProviderConfig, active_providers
from panelfuse.providers.anthropic import AnthropicProvider
from panelfuse.providers.base import Provider
from panelfuse.providers.errors import NotFoundError
from panelfuse.providers.local import LocalProvider
from panelfuse.providers.openai_compat import OpenAICompatProvider
from panelfuse.providers.resolve import FusionRoute, ProviderRoute, resolve_model


def build_provider(name: str, pc: ProviderConfig, env: Mapping[str, str]) -> Provider:
    if pc.kind == "local":
        return LocalProvider(name, pc.models)
    key = pc.resolved_api_key(env)
    if pc.kind == "anthropic":
        return AnthropicProvider(
            name,
            pc.base_url or "https://api.anthropic.com",
            key,
            pc.headers,
            api_key_env=pc.api_key_env,
            default_timeout=pc.timeout,
        )
    if not pc.base_url:
        raise NotFoundError(f"provider '{name}' has no base_url", provider=name)
    return OpenAICompatProvider(
        name, pc.base_url, key, pc.headers, api_key_env=pc.api_key_env, default_timeout=pc.timeout
    )


class Providers:
    """The configured providers of one process, built lazily and kept (adapters are cheap but the
    local one holds loaded models through its module)."""

    def __init__(self, config: Config | None = None, env: Mapping[str, str] | None = None) -> None:
        self.config = config or Config()
        self.env = dict(os.environ if env is None else env)
        self.configs = active_providers(self.config, self.env)
        self._built: dict[str, Provider] = {}

    @property
    def names(self) -> list[str]:
        return list(self.configs)

    def get(self, name: str) -> Provider:
        if name not in self._built:
            pc = self.configs.get(name)
            if pc is None:
                raise NotFoundError(f"no provider named '{name}' is configured", provider=name)
            self._built[name] = build_provider(name, pc, self.env)
        return self._built[name]

    def route(self, model: str, presets: list[str] | None = None) -> FusionRoute | ProviderRoute:
        return resolve_model(model, self.configs, self.config.default_provider, presets)

    def for_model(self, model: str) -> tuple[Provider, ProviderRoute]:
        """The adapter and provider-local id for a plain (non-fusion) model id."""
        route = self.route(model)
        if isinstance(route, FusionRoute):
            raise NotFoundError(f"'{model}' is a fusion alias, not a provider model", model=model)
        return self.get(route.provider), route

    def has_key(self, name: str) -> bool:
        pc = self.configs.get(name)
        return pc is not None and bool(pc.resolved_api_key(self.env))

    def default_preset(self) -> str:
        """The configured default; else `quality` when the default provider has a key, `local` when not."""
        if self.config.default_preset:
            return self.config.default_preset
        return "quality" if self.has_key(self.config.default_provider) else "local"
