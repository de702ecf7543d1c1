"""How the lab stops on a signal. SIGINT, SIGTERM and SIGHUP (a closed terminal, a dropped ssh session)
all unwind the same way, as KeyboardInterrupt in the main thread, so every run's teardown still runs.

Two windows must not be cut by that unwinding:
- `held()`: a few calls whose result must be recorded before anything else (libvirt's createXML returns
  a running domain; a signal between that return and keeping the handle would leak it). A signal that
  arrives inside is raised as soon as the block ends.
- `teardown()`: the cleanup itself. The first signal inside it is reported and ignored; the next one
  abandons the cleanup (`lab clean` picks up what is left).
Worker threads never see signals (Python delivers them to the main thread), so both are no-ops there.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

UNWIND = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
ABANDON_HINT = "cleaning up, Ctrl-C again to abandon"

_mode: list[str] = []         # innermost last: "held" or "teardown"
_held: list[str] = []         # signals that arrived inside a held block
_warned = False


def _unwind(signum, _frame) -> None:
    global _warned
    name = signal.Signals(signum).name
    if _mode and _mode[-1] == "held":
        _held.append(name)
        return
    if _mode and _mode[-1] == "teardown" and not _warned:
        _warned = True
        print(f"lab: {name} during cleanup: {ABANDON_HINT}", file=sys.stderr, flush=True)
        return
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
    _mode.append("held")
    try:
        yield
    finally:
        _mode.pop()
        if _held and (not _mode or _mode[-1] != "held"):
            name = _held[0]
            _held.clear()
            _unwind(signal.Signals[name], None)   # as if it arrived now


@contextlib.contextmanager
def teardown():
    global _warned
    if not _main_thread():
        yield
        return
    _mode.append("teardown")
    try:
        yield
    finally:
        _mode.pop()
        if "teardown" not in _mode:
            _warned = False
