"""Offline, the reader keeps only what a verdict can read (lab/compact.py): the verdict, its stages
and its evidence must be exactly those from every event, and memory must not grow with a log that
repeats one marker line."""
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from lab.compact import CYCLES_KEPT, PANICS_KEPT, RUN_KEEP
from lab.transcript import Reader, read
from lab.verdict import classify, derive

ROOT = Path(__file__).resolve().parent.parent


def _logs():
    from conftest import CORPUS
    paths = sorted((ROOT / "tests" / "corpus").glob("*.log")) + sorted((ROOT / "tests" / "transcripts").glob("*.log"))
    return paths + (sorted(CORPUS.glob("*.log")) if CORPUS.exists() else [])


def same_verdict(log: bytes) -> None:
    assert derive(read(log, compact=True)).to_json() == derive(read(log)).to_json()


def test_every_log_gets_the_same_verdict_compacted():
    for path in _logs():
        same_verdict(path.read_bytes())


# Lines that drive the rules, each of which a log may repeat many times in a row.
LINES = [
    b"Linux version 6.1.0-13-amd64 (debian-kernel@lists.debian.org) (gcc-12)",
    b"Command line: BOOT_IMAGE=/vmlinuz root=/dev/sda1 crashkernel=256M",
    b"Command line: BOOT_IMAGE=/vmlinuz irqpoll nr_cpus=1 reset_devices elfcorehdr=0x3f000000",
    b"Command line: BOOT_IMAGE=/vmlinuz irqpoll nr_cpus=1",
    b"  elfcorehdr=867700K",
    b"kdump-tools[600]: Starting kdump-tools: loaded kdump kernel.",
    b"sysrq: Trigger a crash",
    b"Kernel panic - not syncing: sysrq triggered crash",
    b"---[ end Kernel panic - not syncing: sysrq triggered crash ]---",
    b"Rebooting in 5 seconds..",
    b"reboot: Restarting system",
    b"SeaBIOS (version 1.16.2-debian-1.16.2-1)",
    b"kdump-tools[250]: kdump-tools: saving vmcore",
    b"kdump-tools: saved vmcore in /var/crash/202601010000",
    b"kdump-tools: failed to save vmcore",
    b"hv_storvsc vmbus_0_1: cmd 0x28 scsi status 0x2 srb status 0x4 time out",
    b"BUG: soft lockup - CPU#0 stuck for 22s! [kworker/0:1:12]",
    b"Gave up waiting for root file system device.",
    b"(initramfs) ",
    b"debian login: ",
    b"reboot: System halted",
    b"some other console line",
]


@settings(max_examples=150, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from(LINES), st.integers(min_value=1, max_value=4 * RUN_KEEP)),
                min_size=1, max_size=25))
def test_runs_of_any_marker_give_the_same_verdict_compacted(runs):
    same_verdict(b"".join(line + b"\n" for line, times in runs for _ in range(times)))


def test_a_repeated_marker_line_keeps_a_bounded_list():
    reader = Reader(compact=True)
    for _ in range(50):
        reader.feed(b"Rebooting in 5 seconds..\n" * 1000)
    reader.close()
    assert reader.lines == 50_000 and len(reader.events) == RUN_KEEP + 1
    assert classify(b"Rebooting in 5 seconds..\n" * 5000).verdict == "unknown"   # no panic in it


def test_panics_in_a_row_keep_a_bounded_list_and_count_as_cycles():
    boot = (b"Linux version 6.1.0-13-amd64 (debian-kernel@lists.debian.org) (gcc-12)\n"
            b"kdump-tools[600]: Starting kdump-tools: loaded kdump kernel.\n")
    log = boot + b"Kernel panic - not syncing: sysrq triggered crash\n" * 5000
    reader = Reader(compact=True)
    reader.feed(log)
    reader.close()
    assert len(reader.events) == 2 + PANICS_KEPT + 2 and reader.events.folded == 5000 - PANICS_KEPT - 2
    compacted, full = derive(reader.events), derive(read(log))
    assert compacted.to_json() == full.to_json()
    assert full.earlier_omitted > 4990   # every cycle is still counted


PANIC = b"Kernel panic - not syncing: sysrq triggered crash"


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.sampled_from(LINES), max_size=6),
       st.lists(st.sampled_from(LINES), min_size=1, max_size=6),
       st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=40),
       st.lists(st.sampled_from(LINES), max_size=6))
def test_repeated_cycles_give_the_same_verdict_compacted(before, cycle, noise, after):
    """A cycle of several lines from a panic, said again and again (with a varying number of unmarked
    lines after its first line, so that a wrapped command line may or may not stay near its own)."""
    noise_line = b"some other console line\n"
    repeated = b"".join(PANIC + b"\n" + noise_line * n + b"".join(line + b"\n" for line in cycle) for n in noise)
    same_verdict(b"".join(line + b"\n" for line in before) + repeated + b"".join(line + b"\n" for line in after))


def test_cycles_of_several_lines_said_again_keep_a_bounded_list_and_count_as_cycles():
    boot = (b"Linux version 6.1.0-13-amd64 (debian-kernel@lists.debian.org) (gcc-12)\n"
            b"kdump-tools[600]: Starting kdump-tools: loaded kdump kernel.\n")
    cycle = PANIC + b"\n---[ end " + PANIC + b" ]---\nRebooting in 5 seconds..\n"
    log = boot + cycle * 5_000
    reader = Reader(compact=True)
    reader.feed(log)
    reader.close()
    assert len(reader.events) == 2 + 3 * (CYCLES_KEPT + 3)   # the first five, the last two, and the latest
    compacted, full = derive(reader.events), derive(read(log))
    assert compacted.to_json() == full.to_json()
    assert full.earlier_omitted > 4_990   # every cycle is still counted (the second panic is read as a capture kernel's)


def test_a_wrapped_command_line_keeps_the_cycle_that_holds_its_command_line():
    """The elfcorehdr= token counts only near its command line (markers.WRAP_LINES), measured on the
    lines kept: a cycle whose wrapped token leans on the command line of the cycle before is not folded."""
    cycle = (PANIC + b"\n  elfcorehdr=867700K\nSeaBIOS (version 1.16.2-debian-1.16.2-1)\n"
             b"Command line: BOOT_IMAGE=/vmlinuz irqpoll nr_cpus=1\n")
    same_verdict(b"Command line: BOOT_IMAGE=/vmlinuz irqpoll nr_cpus=1\n" + cycle * 30)


def test_a_crash_and_its_capture_kernel_s_own_panic_said_again_keep_a_bounded_list():
    """Cycles two by two: the first kernel panics, the capture kernel panics too, the machine resets."""
    boot = (b"Linux version 6.1.0-13-amd64 (debian-kernel@lists.debian.org) (gcc-12)\n"
            b"kdump-tools[600]: Starting kdump-tools: loaded kdump kernel.\n")
    crash = (PANIC + b"\nLinux version 6.1.0-13-amd64 (debian-kernel@lists.debian.org) (gcc-12)\n"
             b"Command line: BOOT_IMAGE=/vmlinuz irqpoll nr_cpus=1 reset_devices elfcorehdr=0x3f000000\n"
             b"Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n"
             b"reboot: Restarting system\n")
    log = boot + (crash + boot) * 3000
    reader = Reader(compact=True)
    reader.feed(log)
    reader.close()
    per_round = 8   # events of one crash and its boot (the capture command line is also a wrapped token)
    assert len(reader.events) <= 2 + per_round * (CYCLES_KEPT + 3)
    compacted, full = derive(reader.events), derive(read(log))
    assert compacted.to_json() == full.to_json()
    assert full.earlier_omitted > 2_990
