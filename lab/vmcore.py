"""The vmcore, checked from the host once the domain has stopped: no second boot, no mount, no guest.

The guest's disk is read the way its next boot would read it: on a scratch copy (never the run's own
disk), the ext4 journal is replayed if the capture kernel reset without unmounting, and then e2fsprogs'
debugfs copies the dump file out. makedumpfile rebuilds a flattened dump (-R) and extracts the crashed
kernel's log (--dump-dmesg), which must hold the panic line the console showed: proof that the dump is
real and is this run's.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

TOOLS = ("qemu-img", "dumpe2fs", "e2fsck", "debugfs", "makedumpfile")
CRASH_DIRS = ("/var/crash",)
DUMP_NAME = re.compile(r"^(?:dump\.\d+|vmcore)$")   # kdump-tools: dump.<stamp>; dracut kdump: vmcore
FORMATS = ((b"makedumpfile", "flattened"), (b"KDUMP   ", "kdump-compressed"), (b"\x7fELF", "elf"))
PANIC_TEXT = re.compile(r"Kernel panic - not syncing: ?(.*)")
STEP_SECONDS = 120


@dataclass
class VmcoreCheck:
    check: str                       # passed | failed | not checked
    why: str = ""                    # what failed, in the failing tool's own words
    filesystem: str = ""             # the state the guest left its filesystem in
    sound: bool | None = None        # e2fsck -f -n, after the replay: no errors
    fsck: str = ""                   # e2fsck's last line
    count: int = 0                   # dump files on the guest's disk
    guest_path: str = ""             # where the capture kernel wrote the (newest) dump
    file: str = ""                   # the dump in the run folder (kdump-compressed after -R)
    size: int = 0                    # bytes, as the capture kernel wrote it
    format: str = ""                 # as the capture kernel wrote it
    dmesg: str = ""                  # the crashed kernel's log, extracted from the dump
    console_panic: str = ""
    dump_panic: str = ""
    panic_lines_match: bool | None = None

    def to_json(self) -> dict:
        return asdict(self)


class CheckFailed(Exception):
    pass


def _tool(*argv: str, stdin=None) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(list(argv), capture_output=True, stdin=stdin, timeout=STEP_SECONDS)
    except FileNotFoundError:
        raise CheckFailed(f"{argv[0]} is not installed (make setup installs it)") from None
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"{argv[0]} took longer than {STEP_SECONDS} s") from None
    return done


def _said(done: subprocess.CompletedProcess) -> str:
    text = (done.stderr or b"").decode(errors="replace").strip() or (done.stdout or b"").decode(errors="replace").strip()
    return " ".join(text.split())[-300:]


def _format(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(16)
    return next((name for magic, name in FORMATS if head.startswith(magic)), "unknown")


def _ls(view: Path, folder: str) -> list[tuple[str, bool]]:
    """(name, is_dir) of each entry of a folder of the filesystem image, via debugfs' parsable listing."""
    done = _tool("debugfs", "-R", f"ls -p {folder}", str(view))
    entries = []
    for line in done.stdout.decode(errors="replace").splitlines():
        parts = line.strip().split("/")   # /inode/mode/uid/gid/name/size/
        if len(parts) >= 7 and parts[5] not in (".", "..") and parts[2].isdigit():
            entries.append((parts[5], int(parts[2], 8) & 0o170000 == 0o040000))
    return entries


def _find_dumps(view: Path) -> list[str]:
    """Every dump file on the filesystem, newest stamp first."""
    found = []
    for top in CRASH_DIRS:
        for name, is_dir in sorted(_ls(view, top), reverse=True):
            if is_dir:
                found += [f"{top}/{name}/{file}" for file, file_is_dir in _ls(view, f"{top}/{name}")
                          if not file_is_dir and DUMP_NAME.match(file)]
    return found


def _filesystem(view: Path) -> str:
    """Replay the journal on the scratch copy if the guest left one to replay; say which it was."""
    done = _tool("dumpe2fs", "-h", str(view))
    if done.returncode != 0:
        raise CheckFailed(f"dumpe2fs: {_said(done)}")
    header = done.stdout.decode(errors="replace")
    if "needs_recovery" not in header:
        state = re.search(r"^Filesystem state:\s*(.+)$", header, re.M)
        return f"unmounted or synced ({state.group(1).strip() if state else 'state not given'}); nothing to replay"
    done = _tool("e2fsck", "-E", "journal_only", "-y", str(view))
    if done.returncode not in (0, 1):
        raise CheckFailed(f"e2fsck -E journal_only: {_said(done)}")
    return "left mounted by the reset: the journal was replayed on a scratch copy, as the next boot would"


def _partition_offset(view: Path) -> int:
    """Byte offset of the first MBR partition (a published image's root filesystem)."""
    with view.open("rb") as f:
        mbr = f.read(512)
    if mbr[510:512] != b"\x55\xaa":
        raise CheckFailed("the disk is partitioned but has no MBR partition table")
    return int.from_bytes(mbr[454:458], "little") * 512


def check(disk: Path, scratch: Path, folder: Path, console_panic: str, expected: bool,
          partitioned: bool = False) -> VmcoreCheck:
    """Copy the dump out of a stopped guest's disk (a bare ext4 filesystem) into `folder` and check it.
    expected=False (a capture kernel ran but the console shows no saved dump): passed means no dump."""
    result = VmcoreCheck("failed", console_panic=console_panic)
    view = scratch / "disk-view.raw"
    try:
        done = _tool("qemu-img", "convert", "-O", "raw", str(disk), str(view))
        if done.returncode != 0:
            raise CheckFailed(f"qemu-img convert: {_said(done)}")
        if partitioned:   # the first partition on its own (e2fsck's journal replay takes no ?offset=)
            whole, view = view, scratch / "disk-view-part1.raw"
            done = _tool("dd", f"if={whole}", f"of={view}", "bs=4M", "iflag=skip_bytes",
                         f"skip={_partition_offset(whole)}", "conv=sparse", "status=none")
            whole.unlink()
            if done.returncode != 0:
                raise CheckFailed(f"dd (the first partition): {_said(done)}")
        result.filesystem = _filesystem(view)
        done = _tool("e2fsck", "-f", "-n", str(view))
        result.sound = done.returncode == 0
        result.fsck = (done.stdout.decode(errors="replace").strip().splitlines() or [""])[-1]
        dumps = _find_dumps(view)
        result.count = len(dumps)
        if not expected:
            if dumps:
                raise CheckFailed(f"the console shows no saved dump, yet the disk has {', '.join(dumps)}")
            result.check = "passed"
            return result
        if not dumps:
            raise CheckFailed(f"no dump file under {', '.join(CRASH_DIRS)} on the guest's disk")
        found = result.guest_path = dumps[0]
        copied = folder / "vmcore.as-saved"
        done = _tool("debugfs", "-R", f"dump -p {found} {copied}", str(view))
        if done.returncode != 0 or not copied.exists():
            raise CheckFailed(f"debugfs dump {found}: {_said(done)}")
        result.size, result.format = copied.stat().st_size, _format(copied)
        vmcore = folder / "vmcore"
        if result.format == "flattened":
            with copied.open("rb") as flat:
                done = _tool("makedumpfile", "-R", str(vmcore), stdin=flat)
            if done.returncode != 0:
                raise CheckFailed(f"makedumpfile -R: {_said(done)}")
            copied.unlink()
        else:
            copied.rename(vmcore)
        result.file = vmcore.name
        dmesg = folder / "vmcore-dmesg.txt"
        done = _tool("makedumpfile", "--dump-dmesg", str(vmcore), str(dmesg))
        if done.returncode != 0 or not dmesg.exists():
            raise CheckFailed(f"makedumpfile --dump-dmesg: {_said(done)}")
        result.dmesg = dmesg.name
        panics = [m.group(0).strip() for m in PANIC_TEXT.finditer(dmesg.read_text(errors="replace"))]
        result.dump_panic = panics[-1] if panics else ""
        result.panic_lines_match = bool(console_panic) and any(p == console_panic for p in panics)
        if not result.panic_lines_match:
            raise CheckFailed("the dump's kernel log does not hold the console's panic line "
                              f"({console_panic!r}; the dump says {result.dump_panic or 'no panic'!r})")
        result.check = "passed"
    except CheckFailed as exc:
        result.why = str(exc)
    finally:
        for leftover in ("disk-view.raw", "disk-view-part1.raw"):
            (scratch / leftover).unlink(missing_ok=True)
    return result


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]

