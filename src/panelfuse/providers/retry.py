"""Retries for every adapter, in one place: backoff with jitter on retryable errors, honouring
Retry-After, never past the call's deadline.

Streams are retried only until their first event: once text has reached the caller, replaying it
would duplicate output, so a later failure is raised as it is.

A 402 (payment required: no credits left) is never retried, whatever the error's class says: asking
again does not add credits, and each try may be billed or counted against a limit.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from panelfuse.providers.errors import DeadlineExceeded, ProviderError, RateLimitedError

T = TypeVar("T")

NEVER_RETRIED = frozenset({402})  # HTTP statuses that no retry can fix
# The longest Retry-After we take: a larger one (or `inf`) is capped, so every figure stays a finite
# float that callers can round, add to clocks and put in their own Retry-After header.
MAX_RETRY_AFTER = 3600.0
_SECONDS = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")  # not `inf`, `nan`, `1_0`
_JITTER = random.Random()  # one per process: seeding one per call read os.urandom every time


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # total tries, the first included
    base_delay: float = 0.25
    max_delay: float = 8.0
    jitter: float = 0.5  # fraction of the delay drawn at random, so parallel callers do not retry in step


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds (fractions allowed) or an HTTP date,
    clamped to 0 … MAX_RETRY_AFTER; None for a missing or unreadable value (`nan`, garbage). Never raises:
    the header is the upstream's to get wrong."""
    if not value or len(value) > 100:
        return None
    text = value.strip()
    seconds = float(text) if _SECONDS.fullmatch(text) else _seconds_until(text, now)
    if seconds is None or not math.isfinite(seconds):
        return None  # `1e400` reads as inf: ignored like `inf` itself
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


def _seconds_until(date: str, now: datetime | None) -> float | None:
    try:
        when = parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # HTTP dates are GMT
    return (when - (now or datetime.now(UTC))).total_seconds()


def should_retry(error: ProviderError) -> bool:
    """Whether one more try may help: the error's class says so, and its status is not a 402."""
    return error.retryable and error.status_code not in NEVER_RETRIED


def backoff_delay(policy: RetryPolicy, attempt: int, error: ProviderError, rng: random.Random) -> float:
    """Seconds to wait before try number `attempt + 1` (attempt counts from 1). Pure apart from rng."""
    if isinstance(error, RateLimitedError) and error.retry_after is not None and not math.isnan(error.retry_after):
        return min(MAX_RETRY_AFTER, max(0.0, error.retry_after))
    delay = min(policy.max_delay, policy.base_delay * (2 ** (attempt - 1)))
    return delay * (1 - policy.jitter) + delay * policy.jitter * rng.random()


class _Deadline:
    """One timer for a whole call. Firing while the call waits on its upstream, it cancels that wait;
    firing while the consumer holds an event (between this generator's yields), it only marks the
    call late and the next wait raises: cancelling then would hit the consumer's unrelated awaits.
    (An asyncio.timeout around each wait did the same with a timer per event, ~10 µs each.)"""

    __slots__ = ("_handle", "cancelled", "expired", "waiting")

    def __init__(self, deadline: float) -> None:
        self.expired = False
        self.waiting: asyncio.Task[object] | None = None  # the task, while it waits on the upstream
        self.cancelled: asyncio.Task[object] | None = None  # the task this cancelled, until it saw it
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(max(0.0, deadline - time.monotonic()), self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self.waiting is not None:
            self.waiting.cancel()
            self.cancelled = self.waiting

    def ours(self, task: asyncio.Task[object]) -> bool:
        """Whether this cancelled `task` and the cancel is not yet taken back; takes it back (as
        asyncio.timeout does) so the task's cancel count stays true for any other timeout in it."""
        if self.cancelled is not task:
            return False
        self.cancelled = None
        task.uncancel()
        return True

    def close(self) -> None:
        self._handle.cancel()


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
    late = _Deadline(deadline)
    attempt = 0
    try:
        while True:
            attempt += 1
            started = False
            stream = open_stream()
            try:
                while True:
                    if late.expired or deadline <= time.monotonic():
                        raise DeadlineExceeded("no complete answer before the deadline")
                    # Asked per wait: a consumer may read each event from a task of its own (a race).
                    task = asyncio.current_task()
                    assert task is not None
                    cancelling = task.cancelling()
                    late.waiting = task
                    try:
                        ev = await anext(stream)
                    except StopAsyncIteration:
                        return
                    except asyncio.CancelledError:
                        # Ours (the deadline's), unless someone else cancelled the task as well.
                        if late.ours(task) and task.cancelling() <= cancelling:
                            raise DeadlineExceeded("no complete answer before the deadline") from None
                        raise
                    except TimeoutError as exc:  # an adapter's own timeout reads as the call's
                        raise DeadlineExceeded("no complete answer before the deadline") from exc
                    finally:
                        late.waiting = None
                        late.ours(task)  # the stream turned our cancel into something else: taken back
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
    finally:
        late.close()


async def _aclose(stream: AsyncIterator[T]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
