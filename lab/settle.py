"""When a live run's verdict is certain: the early-verdict rules (docs/verdicts.md, "Settled").

The verdict rules (lab/verdict.py) say what a transcript shows; these say when nothing the guest can
still do would change that answer, so the live runner may stop watching. Each rule needs the guest's
own account from the pre-flight (kernel.panic, kdump armed) and what the domain has (a watchdog or a
panic device could still act on a halted guest), never the text alone.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .transcript import Event
from .verdict import Verdict, capture_boots
from .vocabulary import Outcome, Stage
from .vocabulary import GuestEvent as G

PANIC_ARG = re.compile(r"(?:^|\s)panic=(-?\d+)")


@dataclass(frozen=True)
class Guest:
    """What the live runner knows of the guest beyond its console."""
    kernel_panic: int | None     # the pre-flight's sysctl kernel.panic; None if it did not say
    armed: bool                  # a capture kernel was loaded (pre-flight: kexec_crash_loaded=1)
    rescuers: tuple[str, ...]    # domain devices that can act on a halted guest (watchdog, panic notifier)
    wait_for_login: bool = False  # the scenario wants the rebooted guest back at a login prompt


@dataclass(frozen=True)
class Settled:
    rule: str
    why: str


def settled(verdict: Verdict, events: list[Event], guest: Guest) -> Settled | None:
    """The rule that makes this verdict final, or None while the guest could still change it."""
    reached = {s.name for s in verdict.stages}
    if guest.wait_for_login:
        return None   # the scenario wants the rebooted guest itself: follow it to the login prompt
    if verdict.verdict == Outcome.DUMP and Stage.RESET in reached:
        return Settled("S1", "the vmcore was saved and the capture kernel has reset the machine")
    if verdict.verdict == Outcome.REBOOT and verdict.rule == "R2":
        return Settled("S2", "the machine was reset after the panic")
    if verdict.verdict != Outcome.HANG or guest.rescuers:
        return None
    flags = capture_boots(events)
    ends = [i for i, e in enumerate(events) if e.kind == G.PANIC_END]
    if ends and ends[-1] == _last_guest_event(events) and not flags[ends[-1]]:
        if guest.kernel_panic == 0 and not guest.armed and not _kexec_after_panic(events):
            return Settled("S3", "panic() finished with kernel.panic=0 and no capture kernel loaded: "
                                 "the kernel now spins forever")
        return None
    cmdline = _capture_cmdline(events, flags)
    panic_arg = PANIC_ARG.search(cmdline or "")
    if cmdline is None or (panic_arg and int(panic_arg.group(1)) != 0):
        return None   # a capture kernel with panic=N reboots on its own (initramfs panic() reads it too)
    i = _last_guest_event(events)
    if i is not None and flags[i]:
        if events[i].kind == G.RESCUE_SHELL:
            return Settled("S4", "the capture kernel is at a rescue shell, and its command line has no panic= "
                                 "to reboot it: nobody types at this console")
        if events[i].kind == G.PANIC_END:
            return Settled("S5", "the capture kernel panicked and its command line has no panic=: it spins forever")
    return None


def _last_guest_event(events: list[Event]) -> int | None:
    """The last event the guest printed (host annotations have line 0)."""
    for i in range(len(events) - 1, -1, -1):
        if events[i].line:
            return i
    return None


def _kexec_after_panic(events: list[Event]) -> bool:
    panics = [i for i, e in enumerate(events) if e.kind == G.PANIC]
    return bool(panics) and any(e.kind == G.KEXEC_HANDOVER for e in events[panics[-1]:])


def _capture_cmdline(events: list[Event], flags: list[bool]) -> str | None:
    lines = [e for e, capture in zip(events, flags) if capture and e.kind == G.KERNEL_CMDLINE]
    if not lines:
        return None
    return lines[-1].groups[0] if lines[-1].groups else lines[-1].text
