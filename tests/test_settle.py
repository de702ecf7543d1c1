"""Early verdicts (lab/settle.py, docs/verdicts.md "Settled"): the live runner stops watching as soon as
nothing the guest can still do would change the answer, and never earlier.

Recorded transcripts are replayed event by event, as the live runner sees them arrive.
"""
import pytest

from conftest import TRANSCRIPTS
from lab import recorded
from lab.settle import Guest, settled
from lab.transcript import read
from lab.verdict import derive
from test_verdict_rules import CAPTURE, END, FIRST, PANIC

HALTS = Guest(kernel_panic=0, armed=False, rescuers=())
REBOOTS = Guest(kernel_panic=5, armed=False, rescuers=())
ARMED = Guest(kernel_panic=0, armed=True, rescuers=())


def first_settled(events, guest):
    """(index of the event at which the verdict became certain, rule, verdict), or None."""
    for n in range(1, len(events) + 1):
        verdict = derive(events[:n])
        done = settled(verdict, events[:n], guest)
        if done:
            return n - 1, done.rule, verdict.verdict
    return None


def recorded_events(name):
    _header, raw = recorded.split((TRANSCRIPTS / name).read_bytes())
    return read(raw)


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


def test_a_capture_kernel_waiting_for_its_disk_is_not_settled():
    """The seed's hang: nothing terminal is printed, so only the stall deadline can end the watch."""
    assert first_settled(recorded_events("gen1-default-capture-kernel-stuck.log"), ARMED) is None


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
