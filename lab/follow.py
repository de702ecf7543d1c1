"""Following a panicked guest stage by stage: each stage must be followed by the next within its own
deadline, or the run stops there with a `stall` host event that the verdict reads. The stale-VMBus
fault is applied and lifted here too, as the guest passes the panic and the reset."""
from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET

from . import settle
from .console import Console, ConsoleClosed
from .domain import Domain
from .profiles import STALE_VMBUS_TARGET
from .scenario import Scenario
from .timeout import Timeout
from .markers import CAPTURE_CMDLINE
from .verdict import derive
from .vocabulary import NO_STAGE, GuestEvent, HostEvent, Stage

FOLLOW_SECONDS = 1500.0
PANIC_SECONDS = 60.0


# Timers a capture kernel may have armed, read off its command line: each can still end a stuck stage.
CAPTURE_TIMERS = {
    "panic_lab.disk_timeout": "disk_timeout (the capture initrd resets when the dump target is not mounted by then)",
    "rootdelay": "rootdelay (initramfs-tools gives up waiting for the root device)",
    "panic": "panic= (a panic in the capture kernel resets after this)",
}
TIMER_ARG = re.compile(r"(?:^|\s)(" + "|".join(map(re.escape, CAPTURE_TIMERS)) + r")=(\d+)")
LOAD_FACTOR = 2.0     # TCG timings vary by a factor of 2 with host load (measured here)
TIMER_MARGIN = 30.0   # the capture kernel's own boot up to its initrd, and output in flight


def capture_deadline(scenario: Scenario, cmdline: str | None) -> tuple[float, str]:
    """How long the capture kernel may go without a new stage: its longest armed timer, stretched for a
    loaded host, plus a margin; with no timer armed, the scenario's stall deadline. Returns (seconds, why)."""
    timers = [(int(m.group(2)), m.group(1)) for m in TIMER_ARG.finditer(cmdline or "")]
    timers = [(n, name) for n, name in timers if n > 0]
    if not timers:
        return scenario.stall_seconds, "no timer armed on the capture kernel's command line: the stall deadline"
    seconds, name = max(timers)
    limit = max(scenario.stall_seconds, seconds * LOAD_FACTOR + TIMER_MARGIN)
    return limit, f"{CAPTURE_TIMERS[name]}: {seconds} s x {LOAD_FACTOR:g} + {TIMER_MARGIN:.0f} s"


def stage_deadlines(s: Scenario) -> dict[str, float]:
    """How long each stage may last before the next one must show: no new stage by then = stuck."""
    return {
        Stage.ARMED: PANIC_SECONDS, Stage.BOOTED: PANIC_SECONDS,   # from the trigger to the panic
        Stage.PANICKED: s.stall_seconds,
        Stage.CAPTURE_KERNEL_BOOTED: s.stall_seconds,
        Stage.DUMP_SAVING: max(s.stall_seconds, 300.0),           # 40 MB through makedumpfile under TCG
        Stage.DUMP_SAVED: s.stall_seconds,
        Stage.RESET: s.boot_seconds,
    }


class Fault:
    """stale-vmbus: from the first kernel's panic until the next reset, the paravirtual disk path gets
    no I/O through (libvirt block I/O tuning at 1 byte/s); the IDE path is untouched. A reset gives the
    VM a fresh VMBus, so the fault is lifted then. The guest is never paused and never touched."""

    def __init__(self, dom: Domain, scenario: Scenario, host_event):
        self.dom, self.scenario, self.host_event = dom, scenario, host_event
        self.applied = False
        self.target = STALE_VMBUS_TARGET.get(scenario.profile)

    def on_events(self, events) -> None:
        if self.scenario.fault != "stale-vmbus":
            return
        for event in events:
            if event.kind == GuestEvent.PANIC and not self.applied and event.t is not None:
                self.dom.throttle(self.target, 1)
                self.applied = True
                self.host_event(HostEvent.FAULT_APPLIED, f"stale-vmbus: {self.target} (virtio-blk, the stand-in for "
                                                         f"hv_storvsc) throttled to 1 B/s at the panic; IDE untouched")
            elif event.kind == HostEvent.LIBVIRT_RESET and self.applied:
                self.dom.throttle(self.target, 0)
                self.applied = False
                self.host_event(HostEvent.FAULT_LIFTED, f"stale-vmbus: {self.target} released at the reset (a new VMBus)")


def what_settles(dom: Domain, scenario: Scenario, preflight: dict) -> settle.Guest:
    """What the early rules need beyond the console: the guest's pre-flight, the domain's devices."""
    panic = preflight.get("kernel.panic", "")
    devices = ET.fromstring(dom.xml).find("devices")
    devices = devices if devices is not None else []
    rescuers = tuple(d.tag for d in devices if d.tag in ("watchdog", "panic"))
    stale = STALE_VMBUS_TARGET.get(scenario.profile, "") if scenario.fault == "stale-vmbus" else ""
    disks = [d.find("target") for d in devices if d.tag == "disk" and d.get("device", "disk") in ("disk", "lun")]
    targets = [t.get("dev") if t is not None else None for t in disks]
    others = [t for t in disks if t is None or t.get("dev") != stale]
    if (stale not in targets or any(t is None or t.get("bus") != "ide" for t in others)
            or any(d.tag in ("filesystem", "hostdev") for d in devices)):
        stale = ""   # another way to a disk that a capture kernel could take: S6 does not apply
    return settle.Guest(kernel_panic=int(panic) if panic.lstrip("-").isdigit() else None,
                        armed=preflight.get("kexec_crash_loaded") == "1", rescuers=rescuers,
                        wait_for_login=scenario.wait_for_login, stale_disk=stale)


def follow(console: Console, dom: Domain, scenario: Scenario, top: Timeout, say, host_event, fault: Fault,
           preflight: dict) -> str:
    """Read the console through the panic until the verdict is certain (lab/settle.py), the guest is back
    at a login prompt, or it stops progressing; returns the last stage reached."""
    limits = stage_deadlines(scenario)
    why_limit = {}
    guest = what_settles(dom, scenario, preflight)
    current, since = Stage.ARMED, time.monotonic()
    limit_all = top.child("follow", FOLLOW_SECONDS)
    transcript = console.transcript
    seen_host = len(transcript.host_events)
    stranded = None
    while True:
        try:
            new = console.pump(min(1.0, max(limit_all.remaining(), 0.01)))
        except ConsoleClosed:
            host_event(HostEvent.CONSOLE_CLOSED, f"console closed; domain state {dom.state()}")
            return current
        pending = transcript.host_events[seen_host:]
        seen_host += len(pending)
        fault.on_events(new + pending)
        for event in new:
            if event.kind == GuestEvent.KERNEL_CMDLINE and CAPTURE_CMDLINE.search(event.text):
                limits[Stage.CAPTURE_KERNEL_BOOTED], why_limit[Stage.CAPTURE_KERNEL_BOOTED] = \
                    capture_deadline(scenario, event.value)
        if new or pending:
            events = transcript.events()
            verdict = derive(events)
            if verdict.stage != current and verdict.stage != NO_STAGE:
                current, since = Stage(verdict.stage), time.monotonic()
                say(f"stage {current}", stage=current)
            if current == Stage.CAPTURE_KERNEL_BOOTED and fault.applied and not stranded:
                stranded = settle.stranded(events, guest)
                if stranded:
                    host_event(HostEvent.STRANDED, stranded)
                    events = transcript.events()
                    verdict = derive(events)
            done = settle.settled(verdict, events, guest)
            if done:
                host_event(HostEvent.SETTLED, f"{verdict.verdict} is certain: {done.why}", rule=done.rule)
                say(f"{verdict.verdict} is certain ({done.rule}): {done.why}")
                return current
        if current == Stage.BACK_AT_LOGIN:
            return current
        limit = limits.get(current, scenario.stall_seconds)
        waited = time.monotonic() - since
        if waited >= limit or limit_all.expired():
            silent = time.monotonic() - transcript.last_output
            bound = why_limit.get(current, "the stage's deadline")
            host_event(HostEvent.STALL, f"no new stage for {waited:.0f} s after {current} "
                                        f"(deadline {limit:.0f} s, from {bound}; last console output {silent:.0f} s ago; "
                                        f"domain {dom.state()})",
                       deadline_s=round(limit), deadline_from=bound)
            say(f"no progress past {current} for {waited:.0f} s")
            return current
