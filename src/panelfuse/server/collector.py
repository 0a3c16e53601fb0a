"""The cyclic garbage collector's settings while a gateway app runs (docs/performance.md, items 7 and 12).

The collector is the process's, and a process may run several apps at once (the tests start many), so
the first app to start tunes it, and the last one to stop puts back what it found."""

from __future__ import annotations

import gc
import threading

# A young-generation pass every 10,000 net new container objects, not 700: a read of 200 chunks alone
# held more than 700, so passes ran over live objects all the time (0.7 ms of CPU per fusion at C=8,
# 0.04 ms after). Garbage cycles wait a little longer.
YOUNG_GC_THRESHOLD = 10_000

_lock = threading.Lock()
_running = 0
_found: tuple[int, ...] = ()


def tune_collector() -> None:
    """Freeze what exists now (modules, the app, the config) out of the collector's full scans, which
    otherwise walk it again and again under load, and make young passes rarer. Pair with `restore_collector`."""
    global _running, _found
    gc.collect()
    with _lock:
        gc.freeze()  # every app's start-up objects, the later ones' too
        if _running == 0:
            _found = gc.get_threshold()
            gc.set_threshold(YOUNG_GC_THRESHOLD, *_found[1:])
        _running += 1


def restore_collector() -> None:
    """One app stopped: the last one puts back the thresholds it found and unfreezes (what the apps
    froze can be collected once they are gone)."""
    global _running
    with _lock:
        _running -= 1
        if _running == 0:
            gc.set_threshold(*_found)
            gc.unfreeze()
