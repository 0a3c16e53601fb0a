"""Concurrency slots through Redis after a crash: a process that dies holding slots (kill -9) must not
lock its key out. Real Redis (127.0.0.1:6379); under CI=true a missing server fails."""

from __future__ import annotations

import asyncio
import uuid

from conftest import require_service
from panelfuse.service.ratelimit import RedisLimiter

URL = "redis://127.0.0.1:6379/0"


async def test_slots_of_a_dead_process_are_taken_back_and_refusals_renew_nothing():
    require_service(6379, "Redis")
    prefix = f"pf_test_{uuid.uuid4().hex[:8]}"
    dead = RedisLimiter(URL, prefix=prefix, alive_ttl=1)
    live = RedisLimiter(URL, prefix=prefix, alive_ttl=1)
    try:
        assert await dead.acquire("key", None, 2) is None
        assert await dead.acquire("key", None, 2) is None
        # kill -9: no release, no clean close; its liveness beat stops with it.
        assert dead._beat is not None
        dead._beat.cancel()
        refusals = 0
        for _ in range(100):  # polls until the dead process's liveness key expires; asserts no duration
            if await live.acquire("key", None, 2) is None:
                break
            refusals += 1  # each refusal must not extend anything
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the dead process's slots were never taken back")
        assert refusals > 0  # while it was alive, its two slots held
        assert await live.acquire("key", None, 2) is None  # both slots are free again
        assert await live.acquire("key", None, 2) is not None  # and the limit still holds
        await live.release("key", 2)
        assert await live.acquire("key", None, 2) is None
    finally:
        await live.close()
        await dead._redis.aclose()


async def test_a_burst_of_requests_shares_a_bounded_pool_of_connections():
    require_service(6379, "Redis")
    import redis.asyncio as redis

    from panelfuse.service.ratelimit import REDIS_POOL_SIZE

    prefix = f"pf_test_{uuid.uuid4().hex[:8]}"
    limiter = RedisLimiter(URL, prefix=prefix)
    observer = redis.Redis.from_url(URL)
    try:
        burst = [limiter.acquire(f"key{i % 7}", 10_000, 10_000) for i in range(10 * REDIS_POOL_SIZE)]
        assert await asyncio.gather(*burst) == [None] * len(burst)
        ours = [c for c in await observer.client_list() if c.get("name") == f"{prefix}-ratelimit"]
        assert 1 <= len(ours) <= REDIS_POOL_SIZE
    finally:
        await limiter.close()
        await observer.aclose()
