"""A stuck capture kernel is declared stuck only after every timer it armed could have fired
(lab/follow.py capture_deadline), stretched for a loaded host; the stall event names the timer."""
from lab import scenario as sc
from lab.follow import LOAD_FACTOR, TIMER_MARGIN, capture_deadline

GEN1 = sc.resolve("hyperv-kdump-default")


def test_no_timer_armed_keeps_the_stall_deadline_and_says_so():
    seconds, why = capture_deadline(GEN1, "root=LABEL=labroot reset_devices nr_cpus=1 elfcorehdr=1015156K")
    assert seconds == GEN1.stall_seconds and "no timer armed" in why


def test_the_longest_timer_bounds_the_capture_kernel():
    seconds, why = capture_deadline(GEN1, "reset_devices panic_lab.disk_timeout=100 rootdelay=20 panic=10 elfcorehdr=1")
    assert seconds == 100 * LOAD_FACTOR + TIMER_MARGIN
    assert why.startswith("disk_timeout") and "100 s" in why


def test_a_short_timer_never_shortens_the_stall_deadline():
    seconds, _why = capture_deadline(GEN1, "reset_devices panic=1 elfcorehdr=1")
    assert seconds == GEN1.stall_seconds


def test_a_zero_timer_is_no_timer():
    seconds, why = capture_deadline(GEN1, "reset_devices panic=0 elfcorehdr=1")
    assert seconds == GEN1.stall_seconds and "no timer armed" in why
