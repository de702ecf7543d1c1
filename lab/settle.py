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
from .verdict import RESET_KINDS, Verdict, capture_boots
from .vocabulary import Outcome, Stage
from .vocabulary import GuestEvent as G
from .vocabulary import HostEvent as H

# Timers on a capture kernel's command line that reset it: panic= (the kernel's, and initramfs-tools'
# panic() reads it too), and the lab's initrd timer for kdump.conf's disk_timeout (lab/follow.py).
# Any value but a plain 0 counts: the kernel reads 0x10 as 16, initramfs-tools reboots on 0.5, and a
# repeated argument's last value wins.
RESET_TIMER_ARG = re.compile(r"(?:^|\s)(?:panic|panic_lab\.disk_timeout)=(\S*)")


@dataclass(frozen=True)
class Guest:
    """What the live runner knows of the guest beyond its console."""
    kernel_panic: int | None     # the pre-flight's sysctl kernel.panic; None if it did not say
    armed: bool                  # a capture kernel was loaded (pre-flight: kexec_crash_loaded=1)
    rescuers: tuple[str, ...]    # domain devices that can act on a halted guest (watchdog, panic notifier)
    wait_for_login: bool = False  # the scenario wants the rebooted guest back at a login prompt
    # The disk the stale-VMBus fault silences, when every other disk of the domain is on IDE: a capture
    # kernel whose ata_piix ignores IDE disks (the Hyper-V quirk) then has no other way to its disk.
    stale_disk: str = ""


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
    if any(e.kind == H.STRANDED for e in events):
        return Settled("S6", "the capture kernel cannot reach its disk and nothing can reset it")
    flags = capture_boots(events)
    ends = [i for i, e in enumerate(events) if e.kind == G.PANIC_END]
    if ends and ends[-1] == _last_guest_event(events) and not flags[ends[-1]]:
        if guest.kernel_panic == 0 and not guest.armed and not _kexec_after_panic(events):
            return Settled("S3", "panic() finished with kernel.panic=0 and no capture kernel loaded: "
                                 "the kernel now spins forever")
        return None
    cmdline = _capture_cmdline(events, flags)
    if cmdline is None or _resets_itself(cmdline):
        return None   # a capture kernel with panic=N reboots on its own (initramfs panic() reads it too)
    i = _last_guest_event(events)
    if i is not None and flags[i]:
        if events[i].kind == G.RESCUE_SHELL:
            return Settled("S4", "the capture kernel is at a rescue shell, and its command line has no panic= "
                                 "to reboot it: nobody types at this console")
        if events[i].kind == G.PANIC_END:
            return Settled("S5", "the capture kernel panicked and its command line has no panic=: it spins forever")
    return None


def stranded(events: list[Event], guest: Guest) -> str | None:
    """S6: why the capture kernel can never save a vmcore nor reset, or None while it still could.

    Its disk is behind the paravirtual path the lab silenced (1 B/s) before it started, its ata_piix says
    it ignores the IDE disk, which is the domain's only other one, and nothing can reset it: no panic=N or
    disk_timeout on its command line, no watchdog or panic device. Whatever it does next (wait, time out
    to a rescue shell, panic) leaves it down; at 1 B/s a dump of tens of megabytes would take years."""
    if not guest.stale_disk or guest.rescuers or guest.wait_for_login:
        return None
    flags = capture_boots(events)
    faults = [i for i, e in enumerate(events) if e.kind == H.FAULT_APPLIED]
    if not faults:
        return None
    after = events[faults[-1]:]
    start = next((i for i, e in enumerate(after) if e.kind == G.KERNEL_BANNER), None)
    if start is None or not flags[faults[-1] + start]:
        return None   # the next kernel must be a capture kernel started after the throttle
    boot = []
    for e in after[start:]:
        if boot and (e.kind in (G.KERNEL_BANNER, H.FAULT_LIFTED) or e.kind in RESET_KINDS):
            return None   # that capture kernel is over: whatever came next, it was not stranded
        boot.append(e)
    ignored = next((e for e in boot if e.kind == G.ATA_IGNORED), None)
    cmdline = next((e.value for e in boot if e.kind == G.KERNEL_CMDLINE), None)
    if ignored is None or cmdline is None or _resets_itself(cmdline):
        return None
    if any(e.kind in (G.DUMP_SAVING, G.DUMP_SAVED, G.DUMP_FAILED, G.REBOOT_ANNOUNCED) for e in boot):
        return None
    return (f"the capture kernel cannot reach its disk: {guest.stale_disk} (the paravirtual path) was silenced "
            f"before it started, its ata_piix ignores the IDE disk ({ignored.text.strip()}), and nothing can "
            f"reset it (no panic= or disk_timeout on its command line, no watchdog or panic device)")


def _resets_itself(cmdline: str) -> bool:
    return any(value != "0" for value in RESET_TIMER_ARG.findall(cmdline))


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
    return lines[-1].value
