"""Retries for every adapter, in one place: backoff with jitter on retryable errors, honouring
Retry-After, never past the call's deadline.

Streams are retried only until their first event: once text has reached the caller, replaying it
would duplicate output, so a later failure is raised as it is.

A 402 (payment required: no credits left) is never retried, whatever the error's class says: asking
again does not add credits, and each try may be billed or counted against a limit.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from panelfuse.providers.errors import DeadlineExceeded, ProviderError, RateLimitedError

T = TypeVar("T")

NEVER_RETRIED = frozenset({402})  # HTTP statuses that no retry can fix
_JITTER = random.Random()  # one per process: seeding one per call read os.urandom every time


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # total tries, the first included
    base_delay: float = 0.25
    max_delay: float = 8.0
    jitter: float = 0.5  # fraction of the delay drawn at random, so parallel callers do not retry in step


def should_retry(error: ProviderError) -> bool:
    """Whether one more try may help: the error's class says so, and its status is not a 402."""
    return error.retryable and error.status_code not in NEVER_RETRIED


def backoff_delay(policy: RetryPolicy, attempt: int, error: ProviderError, rng: random.Random) -> float:
    """Seconds to wait before try number `attempt + 1` (attempt counts from 1). Pure apart from rng."""
    if isinstance(error, RateLimitedError) and error.retry_after is not None:
        return max(0.0, error.retry_after)
    delay = min(policy.max_delay, policy.base_delay * (2 ** (attempt - 1)))
    return delay * (1 - policy.jitter) + delay * policy.jitter * rng.random()


async def retrying_stream(
    open_stream: Callable[[], AsyncIterator[T]],
    *,
    deadline: float,
    policy: RetryPolicy,
    rng: random.Random | None = None,
) -> AsyncIterator[T]:
    """Yield from `open_stream()`, reopening it after a retryable error that came before any event.

    `deadline` is a time.monotonic() instant; the whole call, sleeps included, ends by it.
    """
    rng = rng or _JITTER
    attempt = 0
    while True:
        attempt += 1
        started = False
        stream = open_stream()
        try:
            while True:
                # The deadline is applied around each wait on the upstream, not across our yields:
                # an asyncio.timeout spanning a yield would cancel the consumer's unrelated awaits.
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeadlineExceeded("no complete answer before the deadline")
                try:
                    async with asyncio.timeout(remaining):
                        ev = await anext(stream)
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    raise DeadlineExceeded("no complete answer before the deadline") from exc
                started = True
                yield ev
        except ProviderError as exc:
            if started or not should_retry(exc) or attempt >= policy.attempts:
                raise
            wait = backoff_delay(policy, attempt, exc, rng)
            if time.monotonic() + wait >= deadline:
                # Waiting would overrun the deadline: report the real cause now rather than a timeout later.
                raise
            await asyncio.sleep(wait)
        finally:
            await _aclose(stream)


async def _aclose(stream: AsyncIterator[T]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
