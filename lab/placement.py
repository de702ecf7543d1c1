"""Which host runs which run, when one matrix is spread over several libvirt hosts.

Each host's room is what its own libvirt reports (getInfo's cores, getFreeMemory), never this machine's:
a run goes to the host with the most room, the first one named on a tie. A host that stops answering
is dropped: the runs it holds end as host errors, the runs not yet placed go to the others.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import libvirt

from . import budget, host
from .errors import HostError, InputError

MIB = 1 << 20


@dataclass
class Host:
    uri: str
    cores: int
    free_mib: int                  # what its libvirt reported while no run of this batch held memory there
    running: int = 0
    held_mib: int = 0
    down: str | None = None        # why it was dropped

    def room(self, need_mib: int) -> int:
        """How many more runs of `need_mib` fit now: one per core, as many as its free memory holds."""
        if self.down:
            return 0
        by_memory = (self.free_mib - self.held_mib - budget.HOST_OWN_MIB) // need_mib
        return min(self.cores - self.running, by_memory)


def _measure(uri: str) -> tuple[int, int]:
    """(cores, free MiB) as the host's own libvirt reports them."""
    conn = host.connect(uri)
    try:
        return conn.getInfo()[2], conn.getFreeMemory() // MIB
    except libvirt.libvirtError as exc:
        raise HostError("host", f"{uri} answered, then failed: {host.one_line(exc.get_error_message())}") from None
    finally:
        host.disconnect(conn)


class Placement:
    def __init__(self, hosts: list[Host], log):
        self.hosts, self.log = hosts, log
        self._changed = threading.Condition()

    @classmethod
    def open(cls, uris: list[str], log) -> "Placement":
        """Every host that answers; refused (one line) if none does, and each one dropped is named."""
        hosts, dropped = [], []
        for uri in uris:
            try:
                cores, free = _measure(uri)
            except HostError as exc:
                dropped.append(exc.message)
                continue
            hosts.append(Host(uri, cores, free))
        if not hosts:
            raise InputError("hosts", "no host answers: " + "; ".join(dropped))
        for why in dropped:
            log.write(f"lab: dropped a host: {why}\n")
        for h in hosts:
            log.write(f"lab: host {h.uri}: {h.cores} cores, {h.free_mib} MiB free\n")
        log.flush()
        return cls(hosts, log)

    def capacity(self, need_mib: int) -> int:
        """Runs at once across every host, for `need_mib` each."""
        return max(1, sum(max(0, h.room(need_mib)) for h in self.hosts))

    def take(self, need_mib: int, cancelled: threading.Event) -> Host | None:
        """The host with the most room for one more run (waits while every live host is full); None once
        no host is left."""
        with self._changed:
            while True:
                if cancelled.is_set():
                    raise KeyboardInterrupt("cancelled")
                live = [h for h in self.hosts if not h.down]
                if not live:
                    return None
                best = max(live, key=lambda h: (h.room(need_mib), -self.hosts.index(h)))
                if best.room(need_mib) > 0 or not any(h.running for h in live):
                    best.running += 1
                    best.held_mib += need_mib
                    return best
                self._changed.wait(1.0)

    def give_back(self, chosen: Host, need_mib: int, drop_why: str | None = None, suspect: bool = False) -> None:
        """A run on `chosen` ended. A host with `drop_why` (it refused the run, or did not answer) is dropped
        before its room is freed, so no waiting run goes there; one that holds nothing more, or whose run
        ended in a host error (`suspect`), is measured anew, and dropped if it no longer answers."""
        with self._changed:
            if drop_why:
                self._drop(chosen, drop_why)
            chosen.running -= 1
            chosen.held_mib -= need_mib
            measure = (chosen.running == 0 or suspect) and not chosen.down
            self._changed.notify_all()
        if not measure:
            return
        try:   # outside the lock: a network call
            measured = _measure(chosen.uri)
        except HostError as exc:
            self.drop(chosen, exc.message)
            return
        with self._changed:
            if chosen.running == 0:   # its free memory, as it is with no run of this batch there
                chosen.cores, chosen.free_mib = measured
            self._changed.notify_all()

    def drop(self, chosen: Host, why: str) -> None:
        with self._changed:
            self._drop(chosen, why)
            self._changed.notify_all()

    def _drop(self, chosen: Host, why: str) -> None:
        if chosen.down:
            return
        chosen.down = why
        left = [h.uri for h in self.hosts if not h.down]
        self.log.write(f"lab: dropped host {chosen.uri} ({why}); its runs not yet started go to "
                       f"{', '.join(left) or 'no host: none is left'}\n")
        self.log.flush()
