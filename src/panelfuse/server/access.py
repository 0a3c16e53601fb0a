"""Who is calling: panelfuse keys, the admin, opt-in passthrough of a caller's own provider key.

Auth is on when `--auth` is given, or when any key exists in the store; `--no-auth` turns it off.
Secrets never leave this module: runs store a key *id*, errors never echo a token.

Passthrough (`--passthrough-keys`, off by default) is the operator's explicit choice, with auth on or
off: a bearer token that is not a panelfuse key is then taken as the caller's own key for ONE provider
(by its prefix, else the default provider). The request may use that provider only; it never falls
back to the operator's keys (docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import time
from collections.abc import Collection
from typing import Any

from fastapi import Request

from panelfuse.server.errors import ApiError
from panelfuse.service.caller import ModelPolicy, Principal, providers_for
from panelfuse.store import looks_like_panelfuse_key

__all__ = [
    "Authenticator",
    "Principal",
    "bearer_token",
    "current_principal",
    "host_allowed",
    "is_loopback",
    "providers_for",
]

KEY_COUNT_TTL = 2.0  # seconds: keys created by the CLI while serving turn auth on this fast
# A passthrough token's prefix tells which provider it belongs to; anything else goes to the default one.
PASSTHROUGH_PREFIXES = {"sk-or-": "openrouter", "sk-ant-": "anthropic"}


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header, lower-cased, without port, brackets or a trailing dot."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0].rstrip(".") if header.count(":") == 1 else header.rstrip(".")


def host_allowed(header: str | None, allowed: Collection[str]) -> bool:
    """A request with auth off must name this machine (DNS rebinding: a web page's own name resolving
    to 127.0.0.1 carries that name in Host), or a host the operator allowed."""
    if not header:
        return False
    name = host_name(header)
    return bool(name) and (name == "localhost" or is_loopback(name) or name in allowed)


class Authenticator:
    def __init__(
        self,
        *,
        auth: bool | None,
        admin_key: str | None,
        passthrough: bool,
        policy: ModelPolicy | None = None,
        default_provider: str = "openrouter",
    ) -> None:
        self.auth = auth
        self.admin_key = admin_key
        self.passthrough = passthrough
        self.policy = policy or ModelPolicy()
        self.default_provider = default_provider
        self._key_count: tuple[float, int] = (0.0, 0)

    async def _keys_exist(self, store: Any) -> bool:
        checked_at, count = self._key_count
        if time.monotonic() - checked_at > KEY_COUNT_TTL:
            count = await store.keys.count_active()
            self._key_count = (time.monotonic(), count)
        return count > 0

    async def is_on(self, store: Any) -> bool:
        if self.auth is not None:
            return self.auth
        return self.admin_key is not None or await self._keys_exist(store)

    async def enabled(self, request: Request) -> bool:
        return await self.is_on(request.app.state.gateway.store)

    async def __call__(self, request: Request) -> Principal:
        token = bearer_token(request)
        if not await self.enabled(request):
            # Auth off: a passthrough token still routes the caller's own upstream key.
            return (
                self._passthrough(token)
                if token and self.passthrough and not looks_like_panelfuse_key(token)
                else Principal(is_admin=True, policy=self.policy)
            )
        if not token:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key")
        if self.admin_key is not None and hmac.compare_digest(token.encode(), self.admin_key.encode()):
            return Principal(is_admin=True, policy=self.policy)
        if looks_like_panelfuse_key(token):
            key = await request.app.state.gateway.store.keys.authenticate(token)
            if key is None:
                raise ApiError(401, "invalid or revoked API key", code="invalid_api_key")
            return Principal(key=key, is_admin=key.is_admin, policy=self.policy)
        if self.passthrough:
            return self._passthrough(token)
        raise ApiError(401, "invalid API key", code="invalid_api_key")

    def _passthrough(self, token: str) -> Principal:
        provider = next((p for prefix, p in PASSTHROUGH_PREFIXES.items() if token.startswith(prefix)), None)
        digest = hashlib.sha256(token.encode()).hexdigest()[:16]
        return Principal(
            passthrough_id=f"pt_{digest}",
            upstream_keys={provider or self.default_provider: token},
            policy=self.policy,
        )


async def current_principal(request: Request) -> Principal:
    """FastAPI dependency: the caller, or a 401 in OpenAI's error shape."""
    return await request.app.state.gateway.auth(request)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization") or ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key") or None
