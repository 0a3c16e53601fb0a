"""Per-key rate limits: requests per minute and concurrent runs. In-process by default; through
Redis when several gateway processes serve (`--redis URL`), so the limit holds across all of them."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Protocol


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


# One concurrency slot per field of a hash, valued with the process that holds it. Slots of a process
# whose liveness key has expired (it died: kill -9, a lost host) are dropped before counting, so a
# crash frees its slots within ALIVE_TTL, and a refused attempt renews nothing.
_ACQUIRE_SLOT = """
redis.call('SET', KEYS[2], '1', 'EX', ARGV[4])
local held = redis.call('HGETALL', KEYS[1])
for i = 1, #held, 2 do
  if redis.call('EXISTS', ARGV[5] .. held[i + 1]) == 0 then
    redis.call('HDEL', KEYS[1], held[i])
  end
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"""
ALIVE_TTL = 30  # seconds a process's slots outlive its last sign of life
REDIS_POOL_SIZE = 16  # connections per process; each command holds one for well under a millisecond
REDIS_POOL_WAIT_S = 5.0  # how long a command waits for a free one before it fails as Redis down would


class RedisLimiter:
    """A fixed one-minute window (INCR with expiry) and concurrency slots per key, shared by every
    process that points at the same Redis. Each process keeps a liveness key fresh while it runs;
    slots held by a process whose liveness key expired are taken back."""

    def __init__(self, url: str, prefix: str = "panelfuse", alive_ttl: int = ALIVE_TTL) -> None:
        import redis.asyncio as redis

        # A bounded pool: a burst of requests waits a moment for a connection instead of opening one
        # each (redis-py's default pool has no bound). Named, for CLIENT LIST.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=REDIS_POOL_SIZE, timeout=REDIS_POOL_WAIT_S, client_name=f"{prefix}-ratelimit"
        )
        self._redis = redis.Redis.from_pool(pool)
        self._prefix = prefix
        self._alive_ttl = alive_ttl
        self._instance = uuid.uuid4().hex
        self._held: dict[str, list[str]] = defaultdict(list)  # key id -> our slot ids
        self._beat: asyncio.Task[None] | None = None
        self._acquire_slot = self._redis.register_script(_ACQUIRE_SLOT)

    @property
    def _alive_key(self) -> str:
        return f"{self._prefix}:alive:{self._instance}"

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self._alive_ttl / 3)
            with contextlib.suppress(Exception):  # Redis briefly down: the next beat retries
                await self._redis.set(self._alive_key, "1", ex=self._alive_ttl)

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
            if self._beat is None or self._beat.done():
                self._beat = asyncio.create_task(self._keep_alive(), name="ratelimit-alive")
            slot = uuid.uuid4().hex
            keys = [f"{self._prefix}:slots:{key_id}", self._alive_key]
            args: list[str | int] = [max_concurrent, slot, self._instance, self._alive_ttl, f"{self._prefix}:alive:"]
            if not await self._acquire_slot(keys=keys, args=args):
                return Denied(f"rate limit: {max_concurrent} concurrent runs", retry_after=1.0)
            self._held[key_id].append(slot)
        return None

    async def release(self, key_id: str, max_concurrent: int | None) -> None:
        held = self._held.get(key_id)
        if max_concurrent is not None and held:
            await self._redis.hdel(f"{self._prefix}:slots:{key_id}", held.pop())

    async def close(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
        with contextlib.suppress(Exception):
            await self._redis.delete(self._alive_key)  # a clean stop frees its slots at once
        await self._redis.aclose()
