"""Host memory for guests, shared by every lab process on this host.

Each run reserves twice its guest's RAM before it starts (measured under TCG: about 2 GiB of host RAM
per 1 GiB guest) in a ledger file under an flock in the cache, and gives it back when it ends. Two
`lab run`s at once therefore share one budget instead of each overbooking the host; under TCG an
overbooked host slows every guest, which can turn a deadline into a different verdict.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
import uuid
from pathlib import Path

from . import paths

HOST_MIB_PER_GUEST_MIB = 2
HOST_OWN_MIB = 2048   # left to the host itself: libvirtd, the lab, the page cache of the images
POLL_SECONDS = 1.0


def _meminfo(key: str) -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    return 0


def available_mib() -> int:
    return _meminfo("MemAvailable")


class Ledger:
    """Reservations of every lab process, as {token: {"pid", "mib"}} in one JSON file."""

    def __init__(self, path: Path | None = None, capacity_mib: int | None = None):
        self.path = path or paths.owned_cache() / "memory-ledger.json"
        forced = os.environ.get("LAB_HOST_MEMORY_MIB")
        self.forced = capacity_mib if capacity_mib is not None else (int(forced) if forced else None)

    def capacity(self, reserved: int) -> int:
        """What all lab guests together may use now: the host less its own share, and no more than is
        free plus what lab runs hold already (their guests may not have touched all of it yet)."""
        if self.forced is not None:
            return self.forced
        return min(_meminfo("MemTotal") - HOST_OWN_MIB, available_mib() + reserved)

    @contextlib.contextmanager
    def _locked(self):
        self.path.touch(exist_ok=True)
        with open(self.path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                entries = json.loads(f.read() or "{}")
            except ValueError:
                entries = {}
            # A killed lab's share returns; this process's own entries stay.
            entries = {k: v for k, v in entries.items()
                       if int(v.get("pid", 0)) == os.getpid() or paths.owner_alive(int(v.get("pid", 0)))}
            yield entries
            f.seek(0)
            f.truncate()
            f.write(json.dumps(entries))

    def try_reserve(self, mib: int) -> str | None:
        with self._locked() as entries:
            reserved = sum(int(v["mib"]) for v in entries.values())
            # A run that alone needs more than there is still runs, alone: refusing it helps nobody.
            if entries and reserved + mib > self.capacity(reserved):
                return None
            token = uuid.uuid4().hex
            entries[token] = {"pid": os.getpid(), "mib": mib}
            return token

    def release(self, token: str) -> None:
        with self._locked() as entries:
            entries.pop(token, None)

    @contextlib.contextmanager
    def reserve(self, mib: int, cancelled: threading.Event | None = None, waiting=lambda: None):
        """Block until `mib` fits in the host's budget; `waiting()` is called once if it has to wait."""
        token = self.try_reserve(mib)
        if token is None:
            waiting()
        while token is None:
            if cancelled is not None and cancelled.is_set():
                raise KeyboardInterrupt("cancelled with the other runs")
            time.sleep(POLL_SECONDS)
            token = self.try_reserve(mib)
        try:
            yield
        finally:
            self.release(token)
