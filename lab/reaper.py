"""The net under restored domains. libvirt destroys a domain started with VIR_DOMAIN_START_AUTODESTROY when
the lab's connection closes, but its restore takes no such flag. So the first restore starts a small
watcher, in a session of its own (a terminal's Ctrl-C or hang-up does not reach it), which reads from a
pipe the names of the domains the lab restored, and of those it destroyed or kept. When the pipe ends
(the lab exited, was killed with -9, or crashed), the watcher destroys each name still on its list whose
metadata names the lab as its owner, and exits. After a clean teardown the list is empty.

Usage (by the lab only): python -m lab.reaper OWNER_PID   (instructions on stdin)
"""
from __future__ import annotations

import atexit
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from .errors import HostError

_lock = threading.Lock()
_watcher: subprocess.Popen | None = None
RESTORE_WAIT = 60.0   # a restore the lab was killed in may still complete in libvirtd: look this long
START_SECONDS = 30.0


def _send(line: str) -> None:
    try:
        _watcher.stdin.write(line + "\n")
        _watcher.stdin.flush()
    except (BrokenPipeError, OSError):   # the watcher died: the lab's own teardown still runs
        pass


def watch(uri: str, name: str) -> None:
    """Destroy `name` if this process ends before `release(name)`; say `restored(name)` once it exists."""
    global _watcher
    with _lock:
        if _watcher is None:
            project = Path(__file__).resolve().parent.parent   # not the caller's folder: it may hold a lab/ of its own
            _watcher = subprocess.Popen([sys.executable, "-m", "lab.reaper", str(os.getpid())], text=True, cwd=project,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
            atexit.register(_close)
            # It says "ready" once it reads its instructions; a watcher that died says nothing (end of file).
            if not select.select([_watcher.stdout], [], [], START_SECONDS)[0] or _watcher.stdout.readline() != "ready\n":
                _watcher.kill()
                _watcher.wait()
                _watcher = None
                raise HostError("snapshot", "the watcher for restored domains (python -m lab.reaper) did not start")
        _send(f"watch {uri} {name}")


def restored(name: str) -> None:
    with _lock:
        if _watcher is not None:
            _send(f"restored - {name}")


def release(name: str) -> None:
    """`name` is destroyed, or kept on purpose: no longer the watcher's."""
    with _lock:
        if _watcher is not None:
            _send(f"release - {name}")


def _close() -> None:
    """At exit: end the pipe and wait, so that nothing of the lab outlives it (the list is empty after a
    clean teardown; what a failed one left is destroyed now)."""
    global _watcher
    with _lock:
        if _watcher is None:
            return
        try:
            _watcher.stdin.close()
        except OSError:
            pass
        try:
            _watcher.wait(timeout=RESTORE_WAIT + 15)
        except subprocess.TimeoutExpired:
            _watcher.kill()
            _watcher.wait()
        _watcher = None


def _reap(owner: int, watched: dict[str, str], confirmed: set[str]) -> None:
    import libvirt

    from . import kept
    deadline = time.monotonic() + RESTORE_WAIT
    while watched:
        for name, uri in list(watched.items()):
            try:
                conn = libvirt.open(uri)
            except libvirt.libvirtError:
                watched.pop(name)
                continue
            try:
                dom = conn.lookupByName(name)
                if kept.lab_run(dom)[1] == owner and dom.isActive():
                    dom.destroy()
                watched.pop(name)
            except libvirt.libvirtError:
                if name in confirmed:   # gone already
                    watched.pop(name)
            finally:
                conn.close()
        if not watched or time.monotonic() > deadline:
            return
        time.sleep(0.5)   # a restore cut short may still be finishing in libvirtd


def main(argv: list[str]) -> int:
    owner = int(argv[1])
    print("ready", flush=True)
    watched: dict[str, str] = {}
    confirmed: set[str] = set()
    for line in sys.stdin:
        word, _, rest = line.strip().partition(" ")
        uri, _, name = rest.partition(" ")
        if word == "watch":
            watched[name] = uri
            confirmed.discard(name)
        elif word == "restored":
            confirmed.add(name)
        elif word == "release":
            watched.pop(name, None)
    _reap(owner, watched, confirmed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
