"""The response cache (docs/cache.md): a fusion asked again, by the same caller, with the same spec and
the same conversation, is answered from the store without calling anyone, at cost 0.

`FusionService.start` asks `ResponseCache.lookup` before admitting a run: a hit is started as a replay
(pipeline/replay.py), admitted for the key's rate limits but not its budget; a miss runs as usual and
`remember` stores its result when it completed without degradation. The request's headers can skip
the read (`no-cache`) or the write (`no-store`). Entries live in the database (store/cache.py), so
every replica sharing it serves them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from panelfuse.pipeline.plan import RunPlan
from panelfuse.pipeline.prompts import PROMPT_VERSION
from panelfuse.pipeline.result import FusionResult
from panelfuse.service import metrics
from panelfuse.service.cache_key import cache_key, cache_scope
from panelfuse.store import CacheEntry, CacheStore, Database

log = logging.getLogger("panelfuse.server")

CACHE_HEADER = "X-Panelfuse-Cache"  # request: no-cache / no-store; response: hit / miss
CacheStatus = Literal["hit", "miss"]
CacheScope = Literal["key", "gateway"]


@dataclass(frozen=True)
class CacheDirective:
    """What the request allows: reading a cached answer, storing this one."""

    read: bool = True
    write: bool = True


def cache_directive(headers: Mapping[str, str]) -> CacheDirective:
    """The request's wishes from `X-Panelfuse-Cache` and `Cache-Control` (comma-separated directives,
    case-insensitive): `no-cache` skips the read, `no-store` the write. Pure."""
    tokens: set[str] = set()
    for name, value in headers.items():
        if name.lower() in (CACHE_HEADER.lower(), "cache-control"):
            tokens |= {t.strip().split("=", 1)[0].lower() for t in value.split(",")}
    return CacheDirective(read="no-cache" not in tokens, write="no-store" not in tokens)


def cache_headers(status: CacheStatus | None) -> dict[str, str]:
    """The response header telling whether the answer came from the cache (none when it was off)."""
    return {CACHE_HEADER: status} if status is not None else {}


@dataclass(frozen=True)
class CacheDefaults:
    """The gateway's settings (PANELFUSE_CACHE_TTL_S, PANELFUSE_CACHE_SCOPE)."""

    ttl_s: int | None = None  # for specs that do not say; None or 0: off
    scope: CacheScope = "key"


def ttl_for(spec_ttl: int | None, default: int | None) -> int:
    """Seconds an answer is kept: the spec's, else the gateway's; 0 is off. Pure."""
    ttl = spec_ttl if spec_ttl is not None else default
    return ttl if ttl is not None and ttl > 0 else 0


def storable(result: FusionResult) -> bool:
    """Only answers worth serving again: completed, not degraded (a member failed, the analysis is
    missing, max_cost stopped it), and not themselves served from the cache."""
    return result.status == "completed" and not result.degraded and not result.cached


@dataclass(frozen=True)
class CacheTicket:
    """One run's dealings with the cache: its key, the hit if one was found, whether to store its result."""

    key: str
    ttl_s: int
    key_id: str | None
    hit: CacheEntry | None
    store: bool

    @property
    def status(self) -> CacheStatus:
        return "hit" if self.hit is not None else "miss"


class ResponseCache:
    def __init__(
        self,
        database: Database,
        defaults: CacheDefaults | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = CacheStore(database)
        self.defaults = defaults or CacheDefaults()
        self.clock = clock  # injectable: tests age entries without waiting

    async def lookup(self, key_id: str | None, plan: RunPlan, directive: CacheDirective) -> CacheTicket | None:
        """None when the cache is off for this run (no TTL, or a re-synthesis, whose answer depends on a
        stored panel the key does not cover); else its ticket, with the entry found when reading is
        allowed. A store that cannot be read is a miss, never a failed request."""
        ttl = ttl_for(plan.spec.cache_ttl_s, self.defaults.ttl_s)
        if ttl == 0 or plan.reuse_panel is not None:
            return None
        scope = cache_scope(key_id, shared=self.defaults.scope == "gateway")
        key = cache_key(scope, plan.spec, plan.messages, PROMPT_VERSION)
        hit = None
        if directive.read:
            try:
                hit = await self.store.get(key, now=self.clock())
            except Exception:
                log.warning("response cache: lookup failed; running the fusion", exc_info=True)
        metrics.CACHE_LOOKUPS.labels("hit" if hit is not None else "miss" if directive.read else "skipped").inc()
        return CacheTicket(key, ttl, key_id, hit, store=directive.write and hit is None)

    async def remember(self, ticket: CacheTicket, result: FusionResult | None) -> None:
        """Store a run's result under its ticket's key when it may be served again. Never raises: a
        store that cannot be written loses the entry, not the answer."""
        if result is None or not ticket.store or not storable(result):
            return
        now = self.clock()
        entry = CacheEntry(
            key=ticket.key,
            key_id=ticket.key_id,
            run_id=result.run_id,
            finish_reason=result.finish_reason,
            result=result.to_dict(),
            created_at=now,
            expires_at=now + timedelta(seconds=ticket.ttl_s),
        )
        try:
            await self.store.put(entry, now=now)
        except Exception:
            log.warning("response cache: could not store run %s", result.run_id, exc_info=True)
