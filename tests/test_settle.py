"""Early verdicts (lab/settle.py, docs/verdicts.md "Settled"): the live runner stops watching as soon as
nothing the guest can still do would change the answer, and never earlier.

Recorded transcripts are replayed event by event, as the live runner sees them arrive.
"""
import pytest

from conftest import TRANSCRIPTS
from lab import recorded
from lab.settle import Guest, settled, stranded
from lab.transcript import Event, read
from lab.verdict import derive
from lab.vocabulary import HostEvent
from test_verdict_rules import CAPTURE, END, FIRST, PANIC

HALTS = Guest(kernel_panic=0, armed=False, rescuers=())
REBOOTS = Guest(kernel_panic=5, armed=False, rescuers=())
ARMED = Guest(kernel_panic=0, armed=True, rescuers=())
STALE_GEN1 = Guest(kernel_panic=0, armed=True, rescuers=(), stale_disk="vda")   # vda silenced, the rest on IDE


def first_settled(events, guest):
    """(index of the event at which the verdict became certain, rule, verdict), or None."""
    for n in range(1, len(events) + 1):
        seen = events[:n]
        why = stranded(seen, guest)
        if why:   # the live runner notes it as a host event, which the verdict reads (lab/follow.py)
            seen = seen + [Event(HostEvent.STRANDED, 0, why)]
        verdict = derive(seen)
        done = settled(verdict, seen, guest)
        if done:
            return n - 1, done.rule, verdict.verdict
    return None


def recorded_events(name, host_events=False):
    path = TRANSCRIPTS / name
    _header, raw = recorded.split(path.read_bytes())
    return recorded.replay(raw, path) if host_events else read(raw)


def stuck_run_until_its_stall():
    """The seed's hang as the live runner saw it (the fault applied at the panic), without the stall
    deadline that ended that run: what S6 has to go on."""
    return [e for e in recorded_events("gen1-default-capture-kernel-stuck.log", host_events=True)
            if e.kind != HostEvent.STALL]


@pytest.mark.parametrize("name,guest,rule,verdict,at", [
    ("panic-hang-kernel-panic-0.log", HALTS, "S3", "hang", "---[ end Kernel panic"),
    ("panic-reboot-kernel-panic-5.log", REBOOTS, "S2", "reboot", "Booting from ROM"),
    ("kdump-tools-dump-then-reboot.log", ARMED, "S1", "dump", "reboot: Restarting system"),
    ("gen1-kb2858695-dump-through-ide.log", ARMED, "S1", "dump", "reboot: Restarting system"),
    ("gen1-disk-timeout-dump-failed-reboot.log", ARMED, "S2", "reboot", "sysrq: Resetting"),
])
def test_a_recorded_run_settles_at_its_decisive_line(name, guest, rule, verdict, at):
    events = recorded_events(name)
    index, got_rule, got_verdict = first_settled(events, guest)
    assert (got_rule, got_verdict) == (rule, verdict)
    assert at in events[index].text
    assert derive(events).verdict == verdict   # what the whole log says: settling early changed nothing


def test_a_capture_kernel_cut_off_from_its_disk_is_settled_when_its_ata_piix_ignores_ide():
    """The seed's hang (S6): the lab silenced the paravirtual disk at the panic, the capture kernel then
    says it ignores the IDE disk, and nothing on its command line can reset it."""
    events = stuck_run_until_its_stall()
    index, rule, verdict = first_settled(events, STALE_GEN1)
    assert (rule, verdict) == ("S6", "hang")
    assert "ATA device ignore set" in events[index].text
    assert events[index].line > next(e.line for e in events if e.kind == "kernel_cmdline" and "elfcorehdr" in e.text)
    whole = recorded_events("gen1-default-capture-kernel-stuck.log", host_events=True)
    assert derive(whole).verdict == "hang"   # what the run said at its stall deadline


@pytest.mark.parametrize("change,guest", [
    (lambda events: events, ARMED),   # no silenced disk in the facts: another disk the capture kernel could reach
    (lambda events: [e for e in events if e.kind != HostEvent.FAULT_APPLIED], STALE_GEN1),   # never silenced
    (lambda events: [e for e in events if e.kind != "ata_ignored"], STALE_GEN1),   # IDE kept: KB2858695's fix
], ids=["another disk", "the disk never silenced", "the IDE disk not ignored"])
def test_a_capture_kernel_waiting_for_its_disk_is_not_stranded_while_it_has_a_way(change, guest):
    assert first_settled(change(stuck_run_until_its_stall()), guest) is None


def with_capture_args(events, args):
    """The recorded run, its capture kernel's command line with more arguments."""
    def more(text):
        return text.replace("nr_cpus=1", f"nr_cpus=1 {args}") if isinstance(text, str) else text
    return [Event(e.kind, e.line, more(e.text), e.stack, e.t, e.kt, tuple(map(more, e.groups))) for e in events]


@pytest.mark.parametrize("args", ["panic=10", "panic=-1", "panic_lab.disk_timeout=30",
                                  "panic=0 panic=10",   # the last one counts
                                  "panic=0x10", "panic=0.5"])   # the kernel reads 16; initramfs-tools reboots
def test_a_capture_kernel_with_a_timer_that_resets_it_is_not_stranded(args):
    assert first_settled(with_capture_args(stuck_run_until_its_stall(), args), STALE_GEN1) is None


@pytest.mark.parametrize("args", ["panic=0", "panic_lab.disk_timeout=0", "oops=panic", "hung_task_panic=1"])
def test_arguments_that_cannot_reset_it_leave_it_stranded(args):
    """A panic with no panic timeout spins: oops=panic and hung_task_panic only lead there."""
    assert first_settled(with_capture_args(stuck_run_until_its_stall(), args), STALE_GEN1)[1:] == ("S6", "hang")


def test_a_capture_kernel_started_before_the_disk_was_silenced_is_not_stranded():
    """It may have read its disk before the throttle came: only a capture kernel started after it is cut off."""
    events = stuck_run_until_its_stall()
    fault = next(e for e in events if e.kind == HostEvent.FAULT_APPLIED)
    events.remove(fault)
    ata = next(i for i, e in enumerate(events) if e.kind == "ata_ignored" and e.line > 700)
    events.insert(ata, fault)
    assert first_settled(events, STALE_GEN1) is None


@pytest.mark.parametrize("guest", [Guest(0, True, ("watchdog",), stale_disk="vda"), Guest(0, True, ("panic",), stale_disk="vda"),
                                   Guest(0, True, (), wait_for_login=True, stale_disk="vda")],
                         ids=["a watchdog", "a panic device", "a scenario that follows the guest to its login"])
def test_a_stranded_capture_kernel_is_left_open_when(guest):
    events = stuck_run_until_its_stall()
    assert all(stranded(events[:n], guest) is None for n in range(1, len(events) + 1))


def test_the_first_kernel_s_own_quirk_line_after_a_reset_is_not_a_stranded_capture_kernel():
    """Only the capture kernel that started after the throttle counts, and only while it lasts."""
    events = stuck_run_until_its_stall()
    capture_ata = next(i for i, e in enumerate(events) if e.kind == "ata_ignored" and e.line > 700)
    first_boot = [next(e for e in events if e.kind == kind) for kind in ("firmware", "kernel_banner", "ata_ignored")]
    assert all(0 < e.line < 700 for e in first_boot)   # the first kernel's, before the panic
    later = [Event("restart", capture_ata + 1, "reboot: Restarting system", "linux")] + first_boot
    assert stranded(events[:capture_ata] + later, STALE_GEN1) is None


def test_the_kb_fix_dumps_through_ide_with_the_disk_silenced():
    """The recorded KB2858695 run with the fault as the live run applies it: its capture kernel keeps the
    IDE disk (no quirk line), saves the vmcore and resets: S1, never S6."""
    events = recorded_events("gen1-kb2858695-dump-through-ide.log")
    panic = next(i for i, e in enumerate(events) if e.kind == "panic")
    events.insert(panic + 1, Event(HostEvent.FAULT_APPLIED, 0, "stale-vmbus: vda throttled to 1 B/s at the panic"))
    assert all(stranded(events[:n], STALE_GEN1) is None for n in range(1, len(events) + 1))
    assert first_settled(events, STALE_GEN1)[1:] == ("S1", "dump")


@pytest.mark.parametrize("guest,why", [
    (Guest(kernel_panic=0, armed=False, rescuers=("watchdog",)), "a watchdog can still reset it"),
    (Guest(kernel_panic=0, armed=False, rescuers=("panic",)), "a panic device lets the host act"),
    (Guest(kernel_panic=None, armed=False, rescuers=()), "the pre-flight did not say kernel.panic"),
    (Guest(kernel_panic=0, armed=True, rescuers=()), "a capture kernel was loaded"),
    (Guest(kernel_panic=5, armed=False, rescuers=()), "kernel.panic=5 resets it"),
])
def test_a_finished_panic_is_not_terminal_when_something_can_still_act(guest, why):
    events = recorded_events("panic-hang-kernel-panic-0.log")
    assert first_settled(events, guest) is None, why


def test_waiting_for_the_login_is_opt_in():
    events = recorded_events("panic-reboot-kernel-panic-5.log")
    assert first_settled(events, Guest(5, False, (), wait_for_login=True)) is None


def test_a_capture_kernel_at_a_rescue_shell_without_panic_arg_is_terminal():
    log = FIRST + PANIC + CAPTURE + b"Gave up waiting for root file system device.\n(initramfs) "
    events = read(log)
    assert first_settled(events, ARMED)[1:] == ("S4", "hang")


def test_a_capture_kernel_with_panic_arg_will_reboot_from_its_rescue_shell():
    capture = CAPTURE.replace(b"nr_cpus=1", b"nr_cpus=1 panic=10")
    events = read(FIRST + PANIC + capture + b"Gave up waiting for root file system device.\n(initramfs) ")
    assert first_settled(events, ARMED) is None


def test_a_capture_kernel_at_a_rescue_shell_with_the_labs_disk_timeout_will_be_reset():
    capture = CAPTURE.replace(b"nr_cpus=1", b"nr_cpus=1 panic_lab.disk_timeout=30")
    events = read(FIRST + PANIC + capture + b"Gave up waiting for root file system device.\n(initramfs) ")
    assert first_settled(events, ARMED) is None


def test_a_capture_kernel_panic_without_panic_arg_is_terminal():
    log = FIRST + PANIC + CAPTURE + b"[ 3.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n" + END
    assert first_settled(read(log), ARMED)[1:] == ("S5", "hang")


def test_no_rule_settles_before_the_panic():
    assert first_settled(read(FIRST + b"panic-lab login: \n"), HALTS) is None


def test_a_settled_verdict_is_the_whole_log_s_verdict():
    """Whatever the facts, a verdict settled on a prefix of a recorded run is what the complete log says."""
    settled_runs = 0
    for path in sorted(TRANSCRIPTS.glob("*.log")):
        events = recorded_events(path.name)
        for guest in (HALTS, REBOOTS, ARMED):
            found = first_settled(events, guest)
            if found is not None:
                settled_runs += 1
                assert found[2] == derive(events).verdict, (path.name, guest)
    assert settled_runs >= 5
