"""How the lab stops on a signal. SIGINT, SIGTERM and SIGHUP (a closed terminal, a dropped ssh session)
all unwind the same way, as KeyboardInterrupt in the main thread, so every run's teardown still runs.

Two windows must not be cut short:
- `held()`: a few calls whose result must be kept before anything else happens (libvirt's createXML
  returns a domain that exists; a signal between that return and keeping its handle would leak it). A
  signal that arrives inside is raised as soon as the block ends.
- the cleanup: once the lab is unwinding (a first signal), or inside `teardown()`, the next signal is
  reported and ignored; only the one after it abandons the cleanup (`lab clean` picks up what is left).
Worker threads never see signals (Python delivers them to the main thread), so both are no-ops there.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

UNWIND = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
ABANDON_HINT = "cleaning up, Ctrl-C again to abandon"


class _State:
    mode: list[str] = []       # innermost last: "held" or "teardown"
    deferred: list[str] = []   # signals that arrived inside a held block
    unwinding = False          # a signal has already been raised: the lab is on its way out
    warned = False


def _unwind(signum, _frame) -> None:
    name = signal.Signals(signum).name
    if _State.mode and _State.mode[-1] == "held":
        _State.deferred.append(name)
        return
    if (_State.unwinding or "teardown" in _State.mode) and not _State.warned:
        _State.warned = True
        print(f"lab: {name}: {ABANDON_HINT}", file=sys.stderr, flush=True)
        return
    _State.unwinding = True
    raise KeyboardInterrupt(name)


def install() -> None:
    """Route the unwinding signals through the lab's handler (from the main thread, at start-up)."""
    for sig in UNWIND:
        signal.signal(sig, _unwind)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def held():
    if not _main_thread():
        yield
        return
    _State.mode.append("held")
    try:
        yield
    finally:
        _State.mode.pop()
        if _State.deferred and "held" not in _State.mode:
            name = _State.deferred[0]
            _State.deferred.clear()
            _unwind(signal.Signals[name], None)   # as if it arrived now


@contextlib.contextmanager
def teardown():
    if not _main_thread():
        yield
        return
    _State.mode.append("teardown")
    try:
        yield
    finally:
        _State.mode.pop()
