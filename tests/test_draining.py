"""server/draining.py: the gateway hears SIGTERM first, then the server's own handler still runs."""

from __future__ import annotations

import asyncio
import os
import signal

from panelfuse.server.draining import on_termination


async def test_sigterm_reaches_the_callback_then_the_previous_handler():
    heard: list[str] = []
    before = signal.signal(signal.SIGTERM, lambda sig, frame: heard.append("server"))
    try:
        restore = on_termination(lambda: heard.append("gateway"))
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.05)  # the callback runs in the loop, the server's handler at once
        assert heard == ["server", "gateway"]
        restore()
        os.kill(os.getpid(), signal.SIGTERM)
        assert heard == ["server", "gateway", "server"]  # ours is gone after restore
    finally:
        signal.signal(signal.SIGTERM, before)


async def test_off_the_main_thread_nothing_is_installed():
    before = signal.getsignal(signal.SIGTERM)
    restore = await asyncio.to_thread(lambda: on_termination(lambda: None))
    assert signal.getsignal(signal.SIGTERM) is before
    restore()
