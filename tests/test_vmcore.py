"""The host's check of a dump (lab/vmcore.py), on small ext4 images made here with e2fsprogs: what it
says when the dump is missing, unreadable or where it should not be. A real vmcore is checked by the
live tests (tests/test_live.py), on the disk of a guest that really panicked."""
import subprocess
from pathlib import Path

from lab import vmcore

STAMP = "202611291200"


def ext4(path: Path, files: dict[str, bytes], offset: int = 0) -> Path:
    """An ext4 image (at `offset` in the file) holding `files`, written with debugfs, no mount."""
    subprocess.run(["truncate", "-s", "64M", str(path)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", f"offset={offset}", str(path), "60M"], check=True)
    fs = f"{path}?offset={offset}"
    for name, data in files.items():
        parts = Path(name).parent.parts[1:]
        for n in range(1, len(parts) + 1):
            subprocess.run(["debugfs", "-w", "-R", f"mkdir /{'/'.join(parts[:n])}", fs], capture_output=True)
        src = path.parent / "payload"
        src.write_bytes(data)
        subprocess.run(["debugfs", "-w", "-R", f"write {src} {name}", fs], check=True, capture_output=True)
    return path


def check(tmp_path, disk, expected=True, partitioned=False):
    folder = tmp_path / "run"
    folder.mkdir()
    return vmcore.check(disk, tmp_path, folder, "Kernel panic - not syncing: sysrq triggered crash",
                        expected=expected, partitioned=partitioned), folder


def test_a_disk_without_the_dump_the_console_announced_fails_and_says_where_it_looked(tmp_path):
    result, _ = check(tmp_path, ext4(tmp_path / "disk.raw", {"/etc/hostname": b"panic-lab\n"}))
    assert (result.check, result.count) == ("failed", 0)
    assert "no dump file under /var/crash" in result.why


def test_no_dump_is_a_pass_when_the_capture_kernel_saved_none(tmp_path):
    result, _ = check(tmp_path, ext4(tmp_path / "disk.raw", {"/etc/hostname": b"x\n"}), expected=False)
    assert (result.check, result.count, result.sound) == ("passed", 0, True)
    assert "nothing to replay" in result.filesystem


def test_a_dump_where_the_console_saw_none_fails(tmp_path):
    disk = ext4(tmp_path / "disk.raw", {f"/var/crash/{STAMP}/dump.{STAMP}": b"KDUMP   " + bytes(100)})
    result, _ = check(tmp_path, disk, expected=False)
    assert result.check == "failed" and f"/var/crash/{STAMP}/dump.{STAMP}" in result.why


def test_a_dump_makedumpfile_cannot_read_fails_in_makedumpfile_s_own_words(tmp_path):
    disk = ext4(tmp_path / "disk.raw", {f"/var/crash/{STAMP}/dump.{STAMP}": b"not a vmcore at all\n" * 100})
    result, folder = check(tmp_path, disk)
    assert result.check == "failed" and result.count == 1
    assert result.format == "unknown" and result.size == 2000
    assert result.why.startswith("makedumpfile --dump-dmesg: ") and len(result.why) > len("makedumpfile --dump-dmesg: ")
    assert (folder / "vmcore").exists()   # kept for the user to look at
    assert not (tmp_path / "disk-view.raw").exists()   # the scratch copy is gone


def left_mounted(disk: Path, offset: int = 0) -> None:
    """As a reset leaves it: the journal flagged for replay."""
    subprocess.run(["debugfs", "-w", "-R", "feature needs_recovery", f"{disk}?offset={offset}"], check=True,
                   capture_output=True)


def test_a_partitioned_disk_is_read_at_its_first_partition_with_its_journal_replayed(tmp_path):
    disk = tmp_path / "disk.raw"
    ext4(disk, {f"/var/crash/{STAMP}/dump.{STAMP}": b"x"}, offset=1024 * 1024)
    left_mounted(disk, 1024 * 1024)
    subprocess.run(["sfdisk", "-q", str(disk)], input=b"start=2048, type=83\n", check=True)
    result, _ = check(tmp_path, disk, expected=False, partitioned=True)
    assert result.count == 1 and result.check == "failed"   # found, at the partition's offset
    assert "journal was replayed" in result.filesystem and result.sound is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.raw", "payload", "run"]   # no scratch copy left


def test_the_tools_it_needs_are_installed_by_make_setup():
    assert vmcore.missing_tools() == [], "make setup installs them (scripts/host-setup.sh)"
    setup = (Path(__file__).parent.parent / "scripts" / "host-setup.sh").read_text()
    assert "makedumpfile" in setup and "e2fsprogs" in setup
