"""Pure tests of the retry machinery: backoff_delay and retrying_stream (no HTTP)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import pytest

from panelfuse.providers import retry
from panelfuse.providers.errors import (
    AuthError,
    BadRequestError,
    DeadlineExceeded,
    RateLimitedError,
    UpstreamError,
)
from panelfuse.providers.retry import RetryPolicy, backoff_delay, retrying_stream

FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01, jitter=0.5)

# ---- backoff_delay -------------------------------------------------------------------------------


def test_retry_after_is_honoured_exactly() -> None:
    policy = RetryPolicy(base_delay=0.25, max_delay=8.0, jitter=0.5)
    rng = random.Random(1)
    for attempt in (1, 2, 5):
        assert backoff_delay(policy, attempt, RateLimitedError("slow down", retry_after=3.5), rng) == 3.5
    assert backoff_delay(policy, 1, RateLimitedError("now", retry_after=0), rng) == 0.0
    assert backoff_delay(policy, 1, RateLimitedError("neg", retry_after=-2), rng) == 0.0


def test_rate_limit_without_retry_after_backs_off_exponentially() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=100, jitter=0.0)
    rng = random.Random(0)
    assert backoff_delay(policy, 1, RateLimitedError("x"), rng) == 0.5
    assert backoff_delay(policy, 3, RateLimitedError("x"), rng) == 2.0


def test_exponential_growth_capped_without_jitter() -> None:
    policy = RetryPolicy(base_delay=0.25, max_delay=2.0, jitter=0.0)
    rng = random.Random(0)
    delays = [backoff_delay(policy, a, UpstreamError("boom"), rng) for a in range(1, 8)]
    assert delays == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 10])
def test_jitter_is_bounded(attempt: int) -> None:
    policy = RetryPolicy(base_delay=0.25, max_delay=8.0, jitter=0.5)
    full = min(8.0, 0.25 * 2 ** (attempt - 1))
    rng = random.Random(1234)
    draws = [backoff_delay(policy, attempt, UpstreamError("boom"), rng) for _ in range(500)]
    assert all(full * 0.5 <= d <= full for d in draws)
    assert max(draws) - min(draws) > full * 0.4  # really spread across the band, not constant


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    policy = RetryPolicy(jitter=0.5)
    err = UpstreamError("boom")
    a = [backoff_delay(policy, n, err, random.Random(7)) for n in (1, 2, 3)]
    b = [backoff_delay(policy, n, err, random.Random(7)) for n in (1, 2, 3)]
    assert a == b
    r1, r2 = random.Random(7), random.Random(8)
    assert backoff_delay(policy, 2, err, r1) != backoff_delay(policy, 2, err, r2)


def test_full_jitter_policy_still_within_delay() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=1.0, jitter=1.0)
    rng = random.Random(3)
    assert all(0.0 <= backoff_delay(policy, 1, UpstreamError("x"), rng) <= 1.0 for _ in range(200))


# ---- retrying_stream -----------------------------------------------------------------------------


class Factory:
    """Opens hand-made streams: `plan[i]` describes attempt i (a list of items or exceptions, in order)."""

    def __init__(self, *plan: list[object]) -> None:
        self.plan = list(plan)
        self.opened = 0
        self.closed = 0

    def __call__(self) -> AsyncIterator[object]:
        steps = self.plan[min(self.opened, len(self.plan) - 1)]
        self.opened += 1
        return self._gen(steps)

    async def _gen(self, steps: list[object]) -> AsyncIterator[object]:
        try:
            for step in steps:
                await asyncio.sleep(0)
                if isinstance(step, BaseException):
                    raise step
                if step == "hang":
                    await asyncio.sleep(3600)
                yield step
        finally:
            self.closed += 1


def deadline_in(seconds: float) -> float:
    return time.monotonic() + seconds


async def drain(stream: AsyncIterator[object]) -> list[object]:
    return [x async for x in stream]


async def test_passes_items_through() -> None:
    f = Factory([1, 2, 3])
    assert await drain(retrying_stream(f, deadline=deadline_in(5), policy=FAST)) == [1, 2, 3]
    assert f.opened == 1 and f.closed == 1


async def test_retries_before_the_first_event() -> None:
    f = Factory([UpstreamError("a")], [RateLimitedError("b", retry_after=0.001)], ["ok", "done"])
    assert await drain(retrying_stream(f, deadline=deadline_in(5), policy=FAST)) == ["ok", "done"]
    assert f.opened == 3
    assert f.closed == 3  # every failed attempt's stream was closed


async def test_never_retries_after_the_first_event() -> None:
    f = Factory(["partial", UpstreamError("cut")], ["should", "not", "appear"])
    got: list[object] = []
    with pytest.raises(UpstreamError, match="cut"):
        async for x in retrying_stream(f, deadline=deadline_in(5), policy=FAST):
            got.append(x)
    assert got == ["partial"] and f.opened == 1


async def test_gives_up_after_attempts() -> None:
    f = Factory([UpstreamError("down")])
    policy = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.001)
    with pytest.raises(UpstreamError, match="down"):
        await drain(retrying_stream(f, deadline=deadline_in(5), policy=policy))
    assert f.opened == 4


async def test_single_attempt_policy_does_not_retry() -> None:
    f = Factory([UpstreamError("down")], ["ok"])
    with pytest.raises(UpstreamError):
        await drain(retrying_stream(f, deadline=deadline_in(5), policy=RetryPolicy(attempts=1)))
    assert f.opened == 1


@pytest.mark.parametrize("error", [BadRequestError("bad"), AuthError("no key"), DeadlineExceeded("late")])
async def test_non_retryable_errors_are_not_retried(error: Exception) -> None:
    f = Factory([error], ["ok"])
    with pytest.raises(type(error)):
        await drain(retrying_stream(f, deadline=deadline_in(5), policy=FAST))
    assert f.opened == 1


async def test_non_provider_errors_propagate_unretried() -> None:
    f = Factory([ValueError("bug")], ["ok"])
    with pytest.raises(ValueError, match="bug"):
        await drain(retrying_stream(f, deadline=deadline_in(5), policy=FAST))
    assert f.opened == 1


async def test_deadline_while_waiting_for_the_first_event() -> None:
    f = Factory(["hang"])
    with pytest.raises(DeadlineExceeded):
        await drain(retrying_stream(f, deadline=deadline_in(0.1), policy=FAST))
    assert f.opened == 1 and f.closed == 1  # the hanging stream was cancelled and closed


async def test_deadline_while_waiting_mid_stream() -> None:
    f = Factory(["a", "hang"])
    got: list[object] = []
    with pytest.raises(DeadlineExceeded):
        async for x in retrying_stream(f, deadline=deadline_in(0.1), policy=FAST):
            got.append(x)
    assert got == ["a"] and f.opened == 1


async def test_a_deadline_passing_while_the_consumer_holds_an_event_spares_its_own_awaits() -> None:
    f = Factory(["a", "b"])
    stream = retrying_stream(f, deadline=deadline_in(0.05), policy=FAST)
    assert await anext(stream) == "a"
    await asyncio.sleep(0.2)  # the consumer's own wait, across the deadline: not cancelled
    with pytest.raises(DeadlineExceeded):
        await anext(stream)  # the next read is late
    assert f.closed == 1


async def test_the_deadline_cancels_the_task_that_waits_even_when_each_read_has_its_own() -> None:
    f = Factory(["a", "hang"])
    stream = retrying_stream(f, deadline=deadline_in(0.1), policy=FAST)
    assert await asyncio.ensure_future(anext(stream)) == "a"
    with pytest.raises(DeadlineExceeded):
        await asyncio.ensure_future(anext(stream))
    assert f.closed == 1


async def test_someone_elses_cancel_at_the_deadline_stays_a_cancel(monkeypatch) -> None:
    readers: list[asyncio.Future[object]] = []
    expire = retry._Deadline._expire

    def expire_and_cancel(self: retry._Deadline) -> None:  # both in the same turn of the loop
        expire(self)
        readers[0].cancel()

    monkeypatch.setattr(retry._Deadline, "_expire", expire_and_cancel)
    f = Factory(["a", "hang"])
    stream = retrying_stream(f, deadline=deadline_in(0.05), policy=FAST)
    assert await anext(stream) == "a"
    readers.append(asyncio.ensure_future(anext(stream)))
    with pytest.raises(asyncio.CancelledError):
        await readers[0]
    assert f.closed == 1


async def test_a_stream_that_turns_the_deadlines_cancel_into_its_own_error_leaves_no_cancel_behind() -> None:
    async def converting() -> AsyncIterator[object]:
        yield "a"
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise UpstreamError("connection closed") from None
        yield "never"

    stream = retrying_stream(converting, deadline=deadline_in(0.05), policy=FAST)
    assert await anext(stream) == "a"
    with pytest.raises(UpstreamError):
        await anext(stream)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # or the next timeout in this task misreads


async def test_one_timer_per_call_not_one_per_event(monkeypatch) -> None:
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    real_call_at = loop.call_at

    def counting_call_at(when, callback, *args, **kwargs):
        timers.append(when)
        return real_call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    f = Factory(list(range(100)))
    assert await drain(retrying_stream(f, deadline=deadline_in(5), policy=FAST)) == list(range(100))
    assert len(timers) == 1


async def test_deadline_already_passed() -> None:
    f = Factory(["never"])
    with pytest.raises(DeadlineExceeded):
        await drain(retrying_stream(f, deadline=time.monotonic() - 1, policy=FAST))
    assert f.closed == 0  # opened but never started


async def test_wait_beyond_deadline_raises_the_real_error_without_sleeping(monkeypatch) -> None:
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def spy(delay: float, *a, **kw):
        if delay > 0:
            sleeps.append(delay)
        return await real_sleep(0)

    f = Factory([RateLimitedError("slow down", retry_after=30)], ["ok"])
    monkeypatch.setattr(asyncio, "sleep", spy)
    with pytest.raises(RateLimitedError, match="slow down"):
        await drain(retrying_stream(f, deadline=deadline_in(5), policy=FAST))
    assert f.opened == 1 and 30 not in sleeps


async def test_backoff_waits_follow_the_policy_and_rng(monkeypatch) -> None:
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def spy(delay: float, *a, **kw):
        if delay > 0:
            sleeps.append(delay)
        return await real_sleep(0)

    policy = RetryPolicy(attempts=4, base_delay=0.5, max_delay=1.0, jitter=0.5)
    f = Factory([UpstreamError("1")], [UpstreamError("2")], [RateLimitedError("3", retry_after=0.125)], ["ok"])
    monkeypatch.setattr(asyncio, "sleep", spy)
    out = await drain(retrying_stream(f, deadline=deadline_in(60), policy=policy, rng=random.Random(42)))
    assert out == ["ok"]
    expected_rng = random.Random(42)
    expected = [backoff_delay(policy, n, UpstreamError("x"), expected_rng) for n in (1, 2)] + [0.125]
    assert sleeps == pytest.approx(expected)
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


async def test_consumer_closing_early_closes_the_inner_stream() -> None:
    f = Factory([1, 2, 3, 4])
    stream = retrying_stream(f, deadline=deadline_in(5), policy=FAST)
    assert await anext(stream) == 1
    await stream.aclose()
    assert f.closed == 1 and f.opened == 1


async def test_cancelling_the_consumer_closes_the_inner_stream() -> None:
    f = Factory([1, "hang"])
    got: list[object] = []

    async def consume() -> None:
        async for x in retrying_stream(f, deadline=deadline_in(30), policy=FAST):
            got.append(x)

    task = asyncio.create_task(consume())
    for _ in range(200):
        if got:
            break
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert got == [1] and f.closed == 1
