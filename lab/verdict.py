"""Stage 5, verdict: marker events (and the host's own evidence) in, reboot | dump | hang | unknown out.

The rules, in the order they are tried for the last panic cycle (docs/verdicts.md says the same):
  R1 dump    - a vmcore-saved marker after the panic.
  R2 reboot  - the machine was reset after the panic (firmware banner, kernel restart line, a new
               non-capture kernel, or libvirt's reset event). If a capture kernel ran or a dump
               failure was printed first, the diagnosis says "dump failed".
  R3 reboot  - a reboot was announced ("Rebooting in N seconds") and nothing after it contradicts it;
               live runs that then saw no reset within the stall deadline get R4 instead.
  R4 hang    - the log ends in a stuck state, which the verdict names: panic finished with no reboot
               and no kexec; a rescue shell; a capture kernel waiting for its dump target or failing on
               its storage; a panic inside the capture kernel; or (live) no progress past a stage for
               the stall deadline.
  R5 unknown - anything else: the text does not say what happened.
A cycle starts at each panic of a non-capture kernel; a log with no such panic but with capture-kernel
evidence is one cycle that starts inside the capture kernel. Earlier cycles get their own verdicts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .markers import CAPTURE_CMDLINE, WRAP_LINES
from .transcript import Event

STAGES = ("booted", "armed", "panicked", "capture_kernel_booted", "dump_saving", "dump_saved",
          "reset", "back_at_login")
KB2858695 = ("blacklist the hv_* drivers in the capture kernel and let ata_piix take the disk "
             "(ata_piix.prefer_ms_hyperv=0), as in Microsoft KB2858695")


@dataclass
class Stage:
    name: str
    line: int
    text: str
    t: float | None = None
    kt: float | None = None


@dataclass
class Verdict:
    verdict: str
    stage: str
    diagnosis: str
    stages: list[Stage] = field(default_factory=list)
    evidence: list[Event] = field(default_factory=list)
    rule: str = ""
    earlier: list["Verdict"] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "verdict": self.verdict, "stage": self.stage, "diagnosis": self.diagnosis, "rule": self.rule,
            "stages": [vars(s) for s in self.stages],
            "evidence": [{"line": e.line, "text": e.text, "event": e.kind, "t": e.t} for e in self.evidence],
            "earlier_cycles": [c.to_json() for c in self.earlier],
        }


def _tag_boots(events: list[Event]) -> list[bool]:
    """For each event: was it printed by a capture environment?

    The log is cut into boots at each kernel banner or firmware banner, and at a second panic with no
    banner between (a kernel panics only once, so a new kernel started unseen). A boot is a capture
    boot if its command line carries elfcorehdr=/reset_devices (also when a mail client wrapped that
    token onto one of the next WRAP_LINES lines), if kdump markers appear in it, or if
    it follows a kexec hand-over or an unseen start after a panic with kdump loaded.
    """
    segments: list[list[int]] = [[]]
    starts_capture: list[bool] = [False]
    panicked = armed = handed_over = False
    for i, e in enumerate(events):
        new_boot = e.kind in ("kernel_banner", "firmware") or (e.kind == "panic" and panicked)
        if new_boot:
            segments.append([])
            # Straight after a panic with kdump loaded, a kernel that started without firmware in between
            # is the kexec'd capture kernel, until its command line says otherwise.
            starts_capture.append(e.kind != "firmware" and (handed_over or (panicked and armed)))
            panicked = armed = handed_over = False
        segments[-1].append(i)
        panicked |= e.kind == "panic"
        armed |= e.kind == "kdump_armed"
        handed_over |= e.kind == "kexec_handover"
    flags = [False] * len(events)
    for members, capture in zip(segments, starts_capture):
        cmdline_line = None
        for i in members:
            e = events[i]
            if e.kind == "kernel_cmdline":
                capture = bool(CAPTURE_CMDLINE.search(e.groups[0] if e.groups else e.text))
                cmdline_line = e.line
            elif e.kind == "cmdline_wrapped" and cmdline_line and 0 < e.line - cmdline_line <= WRAP_LINES:
                capture = True   # the same command line, wrapped
            elif e.kind in ("dump_saving", "dump_saved", "dump_failed"):
                capture = True
        for i in members:
            flags[i] = capture
    return flags


def _is_reset(e: Event, capture: bool) -> bool:
    if e.kind in ("firmware", "restart", "libvirt_reset"):
        return True
    return e.kind == "kernel_banner" and not capture


def derive(events: list[Event]) -> Verdict:
    flags = _tag_boots(events)
    starts = [i for i, e in enumerate(events) if e.kind == "panic" and not flags[i]]
    if not starts:
        capture_at = [i for i, e in enumerate(events) if flags[i]]
        if not capture_at:
            before = _stages(events, flags, 0, len(events))
            last = before[-1].name if before else "none"
            return Verdict("unknown", last, "no panic in the transcript", before, [], "R5")
        starts = [capture_at[0]]
    cycles = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(events)
        cycles.append(_cycle(events, flags, start, end))
    final = cycles[-1]
    final.earlier = cycles[:-1]
    return final


def _stages(events, flags, start, end) -> list[Stage]:
    reached: dict[str, Stage] = {}

    def mark(name: str, e: Event) -> None:
        if name not in reached:
            reached[name] = Stage(name, e.line, e.text, e.t, e.kt)

    reset_seen = False
    for i in range(start, end):
        e, capture = events[i], flags[i]
        if e.kind == "kernel_banner" and not capture and not reset_seen and "panicked" not in reached:
            mark("booted", e)
        elif e.kind == "kdump_armed" and not capture:
            mark("armed", e)   # also from the panic's own "Kdump: loaded" line
        elif e.kind == "panic" and not capture:
            mark("panicked", e)
        elif e.kind == "kernel_banner" and capture:
            mark("capture_kernel_booted", e)
        elif e.kind == "dump_saving":
            mark("capture_kernel_booted", e)
            mark("dump_saving", e)
        elif e.kind == "dump_saved":
            mark("dump_saved", e)
        elif _is_reset(e, capture) and ("panicked" in reached or "capture_kernel_booted" in reached):
            mark("reset", e)
            reset_seen = True
        elif e.kind == "login_prompt" and reset_seen:
            mark("back_at_login", e)
        if capture and "panicked" in reached and not reset_seen:
            mark("capture_kernel_booted", e)   # a capture kernel whose banner the log does not show
    return sorted(reached.values(), key=lambda s: STAGES.index(s.name))


def _pre_panic_stages(events, flags, start) -> list[Stage]:
    """booted/armed come from the boot the panic happened in."""
    boot_start = 0
    for i in range(start - 1, -1, -1):
        if events[i].kind in ("kernel_banner", "firmware") and not flags[i]:
            boot_start = i
            break
    return [s for s in _stages(events, flags, boot_start, start) if s.name in ("booted", "armed")]


def _cycle(events: list[Event], flags: list[bool], start: int, end: int) -> Verdict:
    span = events[start:end]
    caps = flags[start:end]
    stages = _pre_panic_stages(events, flags, start) + _stages(events, flags, start, end)
    first: dict[str, Stage] = {}
    for st in stages:
        first.setdefault(st.name, st)   # the earliest evidence of each stage
    stages = sorted(first.values(), key=lambda s: STAGES.index(s.name))
    last_stage = stages[-1].name if stages else "none"
    kinds = [e.kind for e in span]

    def ev(*names: str) -> list[Event]:
        return [e for e in span if e.kind in names]

    def last_of(*names: str) -> int:
        idx = [i for i, k in enumerate(kinds) if k in names]
        return idx[-1] if idx else -1

    captured = any(caps)
    faults = ev("fault_applied")
    storage = ev("hv_storage")
    storage_note = f"; Hyper-V storage trouble in the capture kernel: {storage[0].text}" if storage else ""
    if faults and captured:
        storage_note += f"; the paravirtual disk path stopped answering at the panic ({faults[0].text})"
    fix = f" Fix: {KB2858695}." if (storage or (faults and captured)) else ""

    saved = ev("dump_saved")
    if saved:
        evidence = ev("panic")[:1] + ev("kernel_cmdline")[:1] + saved[:1] + ev("firmware", "restart", "libvirt_reset")[:1]
        return Verdict("dump", last_stage, f"vmcore saved: {saved[0].text}", stages,
                       [e for e in evidence if e], "R1")

    resets = [i for i, e in enumerate(span) if _is_reset(e, caps[i])]
    failed = ev("dump_failed")
    if resets:
        reset = span[resets[0]]
        if captured or failed:
            why = failed[0].text if failed else "the capture kernel reset without saving a vmcore"
            return Verdict("reboot", last_stage, f"dump failed: {why}{storage_note}.{fix}".rstrip("."), stages,
                           ev("panic")[:1] + failed[:1] + storage[:1] + [reset], "R2")
        return Verdict("reboot", last_stage, "reset after the panic, no dump attempted", stages,
                       ev("panic")[:1] + ev("reboot_announced")[:1] + [reset], "R2")

    stall = ev("stall")
    announced = last_of("reboot_announced")
    progress = ("kernel_banner", "dump_saving", "rescue_shell", "waiting_root", "panic", "login_prompt")
    if announced >= 0 and not any(k in progress for k in kinds[announced + 1:]):
        a = span[announced]
        later_stall = [s for s in stall if span.index(s) > announced]
        if not later_stall:
            where = "in the capture kernel" if caps[announced] else "after the panic"
            why = "dump failed: " if (captured or failed) else ""
            return Verdict("reboot", last_stage, f"{why}reboot announced {where} ({a.text}); the reset itself is not in the log",
                           stages, ev("panic")[:1] + failed[:1] + [a], "R3")
        s = later_stall[0]
        return Verdict("hang", last_stage, f"reboot announced ({a.text}) but no reset: {s.text}", stages, [a, s], "R4")

    # R4: stuck states, most specific first.
    shell = last_of("rescue_shell")
    if shell >= 0 and shell >= last_of("kernel_banner", "login_prompt"):
        state = "capture kernel dropped to a rescue shell" if caps[shell] else "dropped to a rescue shell"
        waits = ev("waiting_root")
        return Verdict("hang", last_stage, f"{state}: {span[shell].text}{storage_note}.{fix}".rstrip("."),
                       stages, waits[:1] + [span[shell]] + storage[:1] + faults[:1], "R4")
    capture_panics = [i for i, e in enumerate(span) if e.kind == "panic" and caps[i]]
    if capture_panics and last_of("panic_end") > capture_panics[-1]:
        p = span[capture_panics[-1]]
        return Verdict("hang", last_stage, f"the capture kernel panicked and did not reboot: {p.text}{storage_note}.{fix}".rstrip("."),
                       stages, [p] + storage[:1], "R4")
    if captured and storage:
        return Verdict("hang", last_stage,
                       f"capture kernel booted, waiting for the dump target: {storage[-1].text}.{fix}",
                       stages, ev("kernel_cmdline")[-1:] + storage[:3], "R4")
    if stall:
        s = stall[-1]
        waits = ev("waiting_root")
        note = f" ({waits[-1].text})" if waits else ""
        if captured and faults:
            # The host silenced the paravirtual disk (the lab's stale-VMBus model): name that path.
            return Verdict("hang", last_stage,
                           f"capture kernel booted, waiting for the dump target{note}{storage_note}: {s.text}.{fix}",
                           stages, ev("kernel_cmdline")[-1:] + waits[-1:] + [faults[0], s], "R4")
        cause = "kernel.panic=0 and no capture kernel" if last_stage in ("panicked",) else f"no progress past {last_stage}"
        return Verdict("hang", last_stage, f"{last_stage}, {cause}{note}: {s.text}", stages,
                       ev("panic")[:1] + ev("panic_end")[-1:] + waits[-1:] + [s], "R4")
    end = last_of("panic_end")
    if end >= 0 and not captured and not any(k in progress for k in kinds[end + 1:]):
        return Verdict("hang", last_stage,
                       "panicked and halted: no reboot announced (kernel.panic=0) and no capture kernel (kdump not loaded)",
                       stages, ev("panic")[:1] + [span[end]], "R4")
    return Verdict("unknown", last_stage, f"the log stops at {last_stage} without saying what happened next",
                   stages, ev("panic")[:1] + span[-1:], "R5")
