"""Per-key rate limits: requests per minute and concurrent runs. In-process by default; through
Redis when several gateway processes serve (`--redis URL`), so the limit holds across all of them."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Protocol

CONCURRENCY_TTL = 3600  # a crashed process's slots expire instead of leaking forever


@dataclass(frozen=True)
class Denied:
    reason: str
    retry_after: float  # seconds


class Limiter(Protocol):
    async def acquire(self, key_id: str, rpm: int | None, max_concurrent: int | None) -> Denied | None: ...
    async def release(self, key_id: str, max_concurrent: int | None) -> None: ...
    async def close(self) -> None: ...


class InProcessLimiter:
    """A sliding one-minute window and a slot counter per key, in this process only."""

    def __init__(self, clock: object = time.monotonic) -> None:
        self._clock = clock  # injectable for tests
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._active: dict[str, int] = defaultdict(int)
        self._lock = asyncio.Lock()

    async def acquire(self, key_id: str, rpm: int | None, max_concurrent: int | None) -> Denied | None:
        async with self._lock:
            now = self._clock()  # type: ignore[operator]
            hits = self._hits[key_id]
            while hits and now - hits[0] >= 60:
                hits.popleft()
            if rpm is not None and len(hits) >= rpm:
                return Denied(f"rate limit: {rpm} requests per minute", retry_after=60 - (now - hits[0]))
            if max_concurrent is not None and self._active[key_id] >= max_concurrent:
                return Denied(f"rate limit: {max_concurrent} concurrent runs", retry_after=1.0)
            hits.append(now)
            if max_concurrent is not None:
                self._active[key_id] += 1
            return None

    async def release(self, key_id: str, max_concurrent: int | None) -> None:
        if max_concurrent is not None:
            async with self._lock:
                self._active[key_id] = max(0, self._active[key_id] - 1)

    async def close(self) -> None:
        return None


class RedisLimiter:
    """A fixed one-minute window (INCR with expiry) and a slot counter per key, shared by every
    process that points at the same Redis."""

    def __init__(self, url: str, prefix: str = "panelfuse") -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url)
        self._prefix = prefix

    async def acquire(self, key_id: str, rpm: int | None, max_concurrent: int | None) -> Denied | None:
        now = time.time()
        if rpm is not None:
            window = int(now // 60)
            k = f"{self._prefix}:rpm:{key_id}:{window}"
            async with self._redis.pipeline(transaction=True) as pipe:
                # Queued commands: the pipeline's methods return it (redis-py types them as awaitables).
                pipe.incr(k)
                pipe.expire(k, 120)
                count, _ = await pipe.execute()
            if count > rpm:
                return Denied(f"rate limit: {rpm} requests per minute", retry_after=60 - (now % 60))
        if max_concurrent is not None:
            k = f"{self._prefix}:active:{key_id}"
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(k)
                pipe.expire(k, CONCURRENCY_TTL)
                count, _ = await pipe.execute()
            if count > max_concurrent:
                await self._redis.decr(k)
                return Denied(f"rate limit: {max_concurrent} concurrent runs", retry_after=1.0)
        return None

    async def release(self, key_id: str, max_concurrent: int | None) -> None:
        if max_concurrent is not None:
            await self._redis.decr(f"{self._prefix}:active:{key_id}")

    async def close(self) -> None:
        await self._redis.aclose()
