"""Told to stop (SIGTERM, Ctrl-C): the runs in flight get the shutdown grace to finish before the
server closes connections, then are cancelled with the reason, so a streaming client reads an error
chunk saying the gateway is shutting down instead of a bare connection drop. The server's own
handling (stop accepting, then close connections) still runs: our handler calls it after ours."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_termination(callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` in the running loop when the process is told to stop, then the previous
    handlers; returns a function that puts the previous handlers back. Off the main thread (a server
    run in a thread, as the tests do) signals are not ours to take: nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def handler(sig: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        chained = previous.get(sig)
        if callable(chained):
            chained(sig, frame)
        elif chained == signal.SIG_DFL:  # nobody else handles it: do what the signal does by default
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    for sig in SIGNALS:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
