"""One test per verdict rule (R1-R5 in lab/verdict.py and docs/verdicts.md), on short synthetic logs."""
import pytest

from lab.transcript import Event, read
from lab.verdict import derive
from lab.vocabulary import HostEvent

FIRST = b"[ 0.0] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc)\n" \
        b"[ 0.0] Command line: root=LABEL=labroot rw console=ttyS0,115200 crashkernel=256M\n"
CAPTURE = b"[ 0.0] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc)\n" \
          b"[ 0.0] Command line: root=LABEL=labroot rw reset_devices nr_cpus=1 elfcorehdr=1015156K\n"
PANIC = b"[ 40.1] sysrq: Trigger a crash\n[ 40.1] Kernel panic - not syncing: sysrq triggered crash\n" \
        b"[ 40.1] CPU: 0 PID: 320 Comm: bash Kdump: loaded Not tainted 6.1.0-56-amd64 #1\n"
END = b"[ 40.2] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---\n"


def verdict_of(log: bytes, host: list[Event] = ()):
    return derive(read(log) + list(host))


def test_r1_saved_vmcore_is_a_dump_even_with_a_reboot_after():
    v = verdict_of(FIRST + PANIC + CAPTURE + b"kdump-tools[250]: kdump-tools: saved vmcore in /var/crash/1.\n"
                   b"[ 9.0] reboot: Restarting system\nSeaBIOS (version 1.16.2-debian)\n" + FIRST + b"panic-lab login: \n")
    assert (v.verdict, v.stage, v.rule) == ("dump", "back_at_login", "R1")
    assert [s.name for s in v.stages] == ["booted", "armed", "panicked", "capture_kernel_booted", "dump_saved",
                                          "reset", "back_at_login"]


def test_r2_reset_without_capture_is_reboot():
    v = verdict_of(FIRST + PANIC + b"Rebooting in 5 seconds..\nSeaBIOS (version 1.16.2-debian)\n" + FIRST)
    assert (v.verdict, v.stage, v.rule) == ("reboot", "reset", "R2")
    assert "no dump attempted" in v.diagnosis


def test_r2_capture_kernel_that_resets_without_a_vmcore_is_dump_failed():
    v = verdict_of(FIRST + PANIC + CAPTURE + b"Begin: Waiting for root file system ...\n"
                   b"Rebooting automatically due to panic= boot argument\n")
    assert (v.verdict, v.stage, v.rule) == ("reboot", "reset", "R2")
    assert v.diagnosis.startswith("dump failed")


def test_r3_announced_reboot_with_nothing_after_is_reboot():
    v = verdict_of(FIRST + PANIC + b"Kernel Offset: disabled\nRebooting in 10 seconds..\n")
    assert (v.verdict, v.stage, v.rule) == ("reboot", "panicked", "R3")


def test_r3_announced_reboot_then_a_stall_is_a_hang():
    stall = Event(HostEvent.STALL, 0, "no new stage for 120 s after panicked", t=999.0)
    v = verdict_of(FIRST + PANIC + b"Rebooting in 10 seconds..\n", [stall])
    assert (v.verdict, v.rule) == ("hang", "R4")


def test_r4_panic_end_without_reboot_or_kexec_is_a_hang():
    v = verdict_of(FIRST + PANIC.replace(b"Kdump: loaded ", b"") + END)
    assert (v.verdict, v.stage, v.rule) == ("hang", "panicked", "R4")
    assert "kernel.panic=0" in v.diagnosis


def test_r4_rescue_shell_in_the_capture_kernel_is_a_hang():
    v = verdict_of(FIRST + PANIC + CAPTURE + b"Gave up waiting for root file system device.\n"
                   b"ALERT!  /dev/vda does not exist.  Dropping to a shell!\n(initramfs) ")
    assert (v.verdict, v.stage, v.rule) == ("hang", "capture_kernel_booted", "R4")
    assert "capture kernel dropped to a rescue shell" in v.diagnosis


def test_r4_hyperv_storage_failure_in_capture_kernel_points_at_the_fix():
    v = verdict_of(FIRST + PANIC + CAPTURE + b"hv_vmbus: probe failed for device 5620e0c7 (-110)\n")
    assert (v.verdict, v.rule) == ("hang", "R4")
    assert "KB2858695" in v.diagnosis and "prefer_ms_hyperv=0" in v.diagnosis


def test_r4_live_stall_names_the_stage_and_deadline():
    stall = Event(HostEvent.STALL, 0, "no new stage for 120 s after panicked (deadline 120 s)", t=999.0)
    v = verdict_of(FIRST + PANIC + END, [stall])
    assert (v.verdict, v.stage) == ("hang", "panicked")
    assert "120 s" in v.diagnosis


def test_r5_no_panic_is_unknown():
    v = verdict_of(FIRST + b"panic-lab login: \n")
    assert (v.verdict, v.rule) == ("unknown", "R5")


def test_r5_truncated_panic_is_unknown_not_a_guess():
    v = verdict_of(FIRST + PANIC + b"Call Trace:\n <TASK>\n")
    assert v.verdict == "unknown"


def test_several_panics_judge_the_last_and_list_the_earlier():
    first = FIRST + PANIC + b"Rebooting in 5 seconds..\nSeaBIOS (version 1.16.2-debian)\n"
    v = verdict_of(first + FIRST + PANIC.replace(b"Kdump: loaded ", b"") + END)
    assert v.verdict == "hang"
    assert [c.verdict for c in v.earlier] == ["reboot"]


def test_log_starting_inside_the_capture_kernel():
    v = verdict_of(CAPTURE + b"kdump[494]: saving vmcore\nkdump[498]: saving vmcore complete\n")
    assert (v.verdict, v.stage) == ("dump", "dump_saved")


def test_a_command_line_wrapped_by_a_mail_client_still_marks_the_capture_kernel():
    wrapped = (b"[ 0.0] Linux version 5.4.85 (gcc)\n[ 0.0] Kernel command line: console=ttyS0,115200 loglevel=9\n"
               b"rootwait roo\nt=/dev/mmcblk0p2 elfcorehdr=209456K maxcpus=1\n[ 2.1] Run /init as init process\n")
    v = verdict_of(wrapped)
    assert (v.verdict, v.stage) == ("unknown", "capture_kernel_booted")
    # The same token far from any command line is not a command line.
    far = wrapped.replace(b"rootwait roo\n", b"rootwait\n" + b"[ 0.1] filler\n" * 5)
    assert verdict_of(far).stage == "booted"


def test_r4_a_halt_after_an_announced_reboot_is_a_hang():
    v = verdict_of(FIRST + PANIC + b"[ 40.2] Rebooting in 3 seconds..\n[ 43.2] Reboot failed -- System halted\n")
    assert (v.verdict, v.stage, v.rule) == ("hang", "panicked", "R4")
    assert "halted" in v.diagnosis


def test_r4_s390_disabled_wait_is_a_hang():
    v = verdict_of(FIRST + PANIC + b"00: HCPGIR450W CP entered; disabled wait PSW 00020001 80000000 00000000 0075A4D8\n")
    assert (v.verdict, v.rule) == ("hang", "R4") and "disabled wait" in v.diagnosis


def test_r4_a_capture_kernel_that_reports_itself_stuck_and_ends_there_is_a_hang():
    v = verdict_of(FIRST + PANIC + CAPTURE + b"[ 25.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [kworker/0:1:12]\n")
    assert (v.verdict, v.stage, v.rule) == ("hang", "capture_kernel_booted", "R4")
    assert "soft lockup" in v.diagnosis


def test_a_stuck_report_followed_by_progress_is_not_a_hang():
    v = verdict_of(FIRST + PANIC + CAPTURE + b"[ 25.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [x:1]\n"
                   b"kdump-tools[250]: kdump-tools: saved vmcore in /var/crash/1.\n")
    assert v.verdict == "dump"


def test_r5_saving_then_a_reset_with_nothing_between_is_unknown_not_dump_failed():
    v = verdict_of(FIRST + PANIC + CAPTURE + b"kdump[557]: saving vmcore\n[ 30.0] reboot: Restarting system\n")
    assert (v.verdict, v.rule) == ("unknown", "R5")
    assert "does not say whether the save completed" in v.diagnosis


@pytest.mark.parametrize("failure, saving", [
    (b"kdump: saving vmcore failed\n", True),
    (b"kdump-tools[250]: kdump-tools: failed to save vmcore in /var/crash/1.\n", True),
    (b"makedumpfile Failed.\n", True),
    (b"kdump[600]: Executing failure action reboot\n", False),   # the save may never have begun
    (b"panic-lab: disk_timeout: dump target not mounted after 100 s\n", False),
])
def test_a_save_that_failed_shows_it_had_begun(failure, saving):
    v = verdict_of(FIRST + PANIC + failure)   # the capture kernel's own lines elided, as reporters do
    names = [s.name for s in v.stages]
    assert ("dump_saving" in names) == saving
    assert "capture_kernel_booted" in names   # a dump tool's line is a capture environment's


def test_a_log_that_starts_at_the_capture_kernel_s_command_line_is_in_the_capture_kernel():
    v = verdict_of(b"[ 0.0] Kernel command line: elfcorehdr=0x22c00000 irqpoll maxcpus=1 reset_devices panic=10\n"
                   b"[ 7.7] virtio_blk virtio2: [vda] 20971520 512-byte logical blocks\n")
    assert v.stage == "capture_kernel_booted"


def test_confidence_is_certain_only_where_the_log_shows_the_outcome():
    shown = {
        "saved vmcore": FIRST + PANIC + CAPTURE + b"kdump-tools[250]: kdump-tools: saved vmcore in /var/crash/1.\n",
        "a reset": FIRST + PANIC + b"[ 45.0] reboot: Restarting system\nSeaBIOS (version 1.16.2-debian)\n",
        "a halt": FIRST + PANIC + END + b"Reboot failed -- System halted\n",
    }
    read_from_where_it_stops = {
        "an announced reboot": FIRST + PANIC + b"[ 40.2] Rebooting in 5 seconds..\n",
        "the end of a panic": FIRST + PANIC + END,
    }
    for why, log in shown.items():
        assert verdict_of(log).confidence == "certain", why
    for why, log in read_from_where_it_stops.items():
        assert verdict_of(log).confidence == "likely", why
    cut = verdict_of(FIRST + PANIC)
    assert (cut.verdict, cut.confidence, cut.to_json()["confidence"]) == ("unknown", None, None)


ARM64_OOPS = b"[ 194.9] Unable to handle kernel NULL pointer dereference at virtual address 0000000000000008\n" \
             b"[ 194.9] Internal error: Oops: 0000000096000004 [#1] SMP\n" \
             b"[ 194.9] CPU: 3 PID: 77 Comm: kworker Kdump: loaded Not tainted 6.6.0 #1\n" \
             b"[ 194.9] SMP: stopping secondary CPUs\n"


def test_an_oops_that_hands_over_to_the_capture_kernel_is_a_crash_without_a_panic_line():
    """With kdump loaded, an oops goes to crash_kexec from die() itself: no "Kernel panic" line. Its
    hand-over (arm64's, powerpc's) starts the crash; the log ending there says no more than that."""
    for handover in (b"[ 194.9] Starting crashdump kernel...\n[ 194.9] Bye!\n",
                     b"[ 21.9] kexec: Starting switchover sequence.\nI'm in purgatory\n"):
        v = verdict_of(FIRST + ARM64_OOPS + handover)
        assert (v.verdict, v.stage, v.rule) == ("unknown", "panicked", "R5"), handover
        assert [s.name for s in v.stages] == ["booted", "armed", "panicked"]


def test_a_hand_over_without_an_oops_or_after_a_panic_starts_no_crash_of_its_own():
    # A kexec reboot (no oops) is not a crash; after a panic, the hand-over belongs to that panic's crash.
    v = verdict_of(FIRST + b"[ 50.0] kexec_core: Starting new kernel\n")
    assert (v.verdict, v.stage) == ("unknown", "booted")
    v = verdict_of(FIRST + PANIC + b"[ 40.2] Starting crashdump kernel...\n")
    assert v.stage == "panicked" and not v.earlier and v.stages[-1].text.startswith("Kernel panic")


def test_a_log_of_many_panics_shows_its_first_cycles_and_counts_the_rest():
    """Memory must not grow with every cycle: thousands of panics would keep thousands of verdicts."""
    v = verdict_of(FIRST + b"[ 40.1] Kernel panic - not syncing: Fatal exception\n" * 10)
    assert len(v.earlier) == 3 and v.earlier_omitted == 6
    assert v.to_json()["earlier_cycles_omitted"] == 6


def ghes(record: int, severity: bytes = b"recoverable", source: bytes = b"0") -> bytes:
    return (b"[ 10.0] {%d}[Hardware Error]: Hardware error from APEI Generic Hardware Error Source: %s\n" % (record, source)
            + b"[ 10.0] {%d}[Hardware Error]: event severity: %s\n" % (record, severity))


def test_r4_a_capture_kernel_repeating_a_hardware_error_report_is_looping():
    saving = FIRST + PANIC + CAPTURE + b"kdump[494]: saving vmcore\n"
    v = verdict_of(saving + ghes(2) + ghes(3))
    assert (v.verdict, v.rule, v.stage) == ("hang", "R4", "dump_saving")
    assert "repeats the same hardware error report" in v.diagnosis
    # One report, then the log ends: it may have been cut there. Progress after the reports: not stuck.
    assert verdict_of(saving + ghes(2)).verdict == "unknown"
    assert verdict_of(saving + ghes(2) + ghes(3) + b"kdump[494]: saving vmcore complete\n").verdict == "dump"
    # Corrected errors need no handling; two different reports are not a loop.
    assert verdict_of(saving + ghes(2, b"corrected") + ghes(3, b"corrected")).verdict == "unknown"
    assert verdict_of(saving + ghes(2) + ghes(3, b"fatal")).verdict == "unknown"
