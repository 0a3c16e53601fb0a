"""A model of a run's plan, resolved once: its adapter, provider-local id and what it can do."""

from __future__ import annotations

from dataclasses import dataclass

from panelfuse.providers.base import Provider
from panelfuse.providers.resolve import ProviderRoute
from panelfuse.spec import MemberSpec


@dataclass(frozen=True)
class ResolvedModel:
    model: str  # as the spec names it: what events, results and prices use
    provider: Provider
    route: ProviderRoute
    tools: tuple[str, ...] = ()  # tools offered to it through function calling in its role

    @property
    def qualified(self) -> str:
        """`provider/model`: what a key's allowlist is checked against."""
        return self.route.qualified

    @property
    def enforces_schema(self) -> bool:
        return self.provider.supports_json_schema


@dataclass(frozen=True)
class MemberChain:
    """One panel member: its label, its spec, and its model followed by its fallbacks."""

    label: str
    spec: MemberSpec
    chain: tuple[ResolvedModel, ...]
