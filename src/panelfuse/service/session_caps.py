"""How many fusions an MCP session may start, in all and per minute: a looping agent cannot spend
without bound. Pure bookkeeping with an injectable clock."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from panelfuse.settings import ServerSettings


@dataclass
class _Tally:
    started: int = 0
    recent: deque[float] = field(default_factory=deque)  # when the last minute's fusions started
    seen: float = 0.0


@dataclass
class SessionCaps:
    """Fusions per session, in all and per minute. `take` counts one or says why not."""

    per_session: int
    per_minute: int
    idle_s: float = 30 * 60.0  # a session idle this long is forgotten
    clock: Callable[[], float] = time.monotonic
    _tallies: dict[str, _Tally] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: ServerSettings, idle_s: float) -> SessionCaps:
        return cls(settings.mcp_max_fusions_per_session, settings.mcp_max_fusions_per_minute, idle_s)

    def take(self, session: str) -> str | None:
        now = self.clock()
        self._forget_idle(now)
        tally = self._tallies.setdefault(session, _Tally())
        tally.seen = now
        while tally.recent and tally.recent[0] <= now - 60:
            tally.recent.popleft()
        if tally.started >= self.per_session:
            return (
                f"this MCP session has started its {self.per_session} fusions (the per-session cap); "
                "start a new session to run more"
            )
        if len(tally.recent) >= self.per_minute:
            return f"at most {self.per_minute} fusions a minute per MCP session; wait a minute and call again"
        tally.started += 1
        tally.recent.append(now)
        return None

    def give_back(self, session: str) -> None:
        """A fusion counted by `take` that never started."""
        tally = self._tallies.get(session)
        if tally is not None and tally.started:
            tally.started -= 1
            if tally.recent:
                tally.recent.pop()

    def _forget_idle(self, now: float) -> None:
        for key in [k for k, t in self._tallies.items() if now - t.seen > self.idle_s]:
            del self._tallies[key]
