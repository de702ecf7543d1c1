"""The net under restored domains. libvirt destroys a domain started with VIR_DOMAIN_START_AUTODESTROY when
the lab's connection closes, but its restore takes no such flag. So the first restore starts a small
watcher, in a session of its own (a terminal's Ctrl-C or hang-up does not reach it), which reads the lab's
instructions from a pipe. If the pipe ends before the lab says "done" (kill -9, a crash), the watcher
destroys each domain still watched whose metadata names the dead lab as its owner, and exits.

Usage (by the lab only): python -m lab.reaper OWNER_PID   (instructions on stdin)
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading

_lock = threading.Lock()
_watcher: subprocess.Popen | None = None


def _send(line: str) -> None:
    try:
        _watcher.stdin.write(line + "\n")
        _watcher.stdin.flush()
    except (BrokenPipeError, OSError):   # the watcher died: the lab's own teardown still runs
        pass


def watch(uri: str, name: str) -> None:
    """Destroy `name` if this process dies before `release(name)` or a normal exit."""
    global _watcher
    with _lock:
        if _watcher is None:
            _watcher = subprocess.Popen([sys.executable, "-m", "lab.reaper", str(os.getpid())], text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
            atexit.register(_done)
        _send(f"watch {uri} {name}")


def release(name: str) -> None:
    """`name` is destroyed, or kept on purpose: no longer the watcher's."""
    with _lock:
        if _watcher is not None:
            _send(f"release - {name}")


def _done() -> None:
    global _watcher
    with _lock:
        if _watcher is None:
            return
        _send("done")
        try:
            _watcher.stdin.close()
        except OSError:
            pass
        try:
            _watcher.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _watcher.kill()
        _watcher = None


def _reap(owner: int, watched: dict[str, str]) -> None:
    import libvirt

    from . import kept
    for name, uri in watched.items():
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError:
            continue
        try:
            dom = conn.lookupByName(name)
            if kept.lab_run(dom)[1] == owner and dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            pass   # gone already
        finally:
            conn.close()


def main(argv: list[str]) -> int:
    owner = int(argv[1])
    watched: dict[str, str] = {}
    for line in sys.stdin:
        word, _, rest = line.strip().partition(" ")
        if word == "done":
            return 0
        uri, _, name = rest.partition(" ")
        if word == "watch":
            watched[name] = uri
        elif word == "release":
            watched.pop(name, None)
    _reap(owner, watched)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
