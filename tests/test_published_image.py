"""`lab run --image NAME` with a published cloud image, end to end and with no internet.

The offline image's disk-bootable form (bootable.qcow2: an MBR, grub, one ext4 partition, the same tree)
is served on loopback as if it were a catalog entry. The lab pulls it because it is not cached, boots it
through its own grub, lets cloud-init set crashkernel= with the guest's own update-grub, reboots it once,
and panics it. What cannot be run here is booting the real published images (no internet).
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import run_lab, spawn_lab, wait_until
from lab import image, paths
from lab.vocabulary import HostEvent
from loopback import Server

BUILT = image.cached("debian12")
NAME = "local-debian12-bootable"


def lab_run(*args, catalog: Path, results: Path, timeout: float):
    return run_lab("run", *args, "--results", str(results), env={"LAB_CATALOG": str(catalog)}, text=True,
                   timeout=timeout)


def test_an_unknown_image_is_one_line_and_makes_nothing(tmp_path):
    done = lab_run("kdump", "--image", "nope", catalog=paths.IMAGES / "catalog.toml", results=tmp_path / "r",
                   timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "unknown image 'nope'" in done.stderr and "ubuntu24.04" in done.stderr
    assert not (tmp_path / "r").exists()


def test_a_published_image_takes_no_kernel_command_line(tmp_path):
    done = lab_run("kdump", "--image", "rocky9", "--set", "extra_cmdline=quiet",
                   catalog=paths.IMAGES / "catalog.toml", results=tmp_path / "r", timeout=60)
    assert done.returncode == 2 and "extra_cmdline needs a direct kernel boot" in done.stderr, done.stderr
    assert not (tmp_path / "r").exists()


def test_building_a_published_image_is_refused_with_the_way_to_get_it():
    done = run_lab("images", "build", "rocky9", text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "lab images pull" in done.stderr, done.stderr


class BackgroundRun:
    """One `lab run` left going in the background, its stderr in a file the tests can read as it grows.
    Its own session: a Ctrl-C at the terminal reaches it once, through stop(), not twice."""

    def __init__(self, args: list[str], env: dict, folder: Path):
        self.stderr_path, self.stdout_path = folder / "stderr", folder / "stdout"
        with self.stderr_path.open("w") as err, self.stdout_path.open("w") as out:
            self.proc = spawn_lab(*args, env=env, stdout=out, stderr=err, start_new_session=True)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def finish(self, timeout: float) -> tuple[int, str, str]:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.stop()   # a run past its time must not go on beside the tests that follow
        return self.proc.returncode, self.stdout_path.read_text(), self.stderr()

    def stop(self) -> None:
        if self.proc.poll() is None:   # cut short: the lab unwinds as on Ctrl-C, its guest destroyed
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                self.proc.kill()   # libvirt destroys its domain when its connection closes (autodestroy)
                self.proc.wait()


@pytest.fixture(scope="session")
def published_run(tmp_path_factory):
    """The bootable image served on loopback as a catalog's one entry (digest pinned), and a Gen1 run with
    the KB's kdump configuration on it (the distribution image users run on Azure), started in the
    background by the first test that asks. It boots one guest for about five minutes, so it runs beside
    the live tests that boot one guest at a time (conftest.LIVE_ORDER); test_run_boots_... checks it."""
    if BUILT is None or not (BUILT.disk.parent / "bootable.qcow2").exists():
        pytest.skip("the debian12 image (with its disk-bootable form) is not built (make image)")
    cache = paths.cache_dir() / "cloud" / NAME
    assert not cache.exists(), f"{cache} is left from an earlier session"
    bootable = BUILT.disk.parent / "bootable.qcow2"
    digest = hashlib.sha256()
    with bootable.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    folder = tmp_path_factory.mktemp("published")
    server = Server()
    try:
        server.routes["/cloud/bootable.qcow2"] = bootable
        catalog = folder / "catalog.toml"
        catalog.write_text(f'[{NAME}]\nurl = "{server.url}/cloud/bootable.qcow2"\nsha256 = "{digest.hexdigest()}"\n'
                           'family = "debian"\nkdump = "kdump-tools"\nuser = "root"\ncrashkernel = "grub-reboot"\n')
        run = BackgroundRun(["run", "hyperv-kdump-kb2858695", "--image", NAME, "--json", "--results",
                             str(folder / "results")], dict(os.environ, LAB_CATALOG=str(catalog)), folder)
        try:
            yield run, server
        finally:
            run.stop()
    finally:
        server.stop()
        shutil.rmtree(cache, ignore_errors=True)


@pytest.mark.live
def test_a_published_image_not_in_the_cache_is_pulled_once_and_verified(published_run):
    """Placed first in the live tier: this starts the run, and waits only for the pull."""
    run, server = published_run
    wait_until(lambda: "verified (sha256)" in run.stderr() or run.proc.poll() is not None, 300, every=1)
    err = run.stderr()
    assert "verified (sha256)" in err, err[-3000:]
    assert f"{NAME} is not in the cache; pulling it" in err
    assert len(server.gets("/cloud/bootable.qcow2")) == 1


@pytest.mark.live
def test_run_boots_a_published_image_through_its_own_grub_and_dumps(published_run):
    """Placed after the live tests it ran beside (conftest.LIVE_ORDER).
    (The default profile's `kdump` takes the same path with one disk fewer; it was run by hand.)"""
    run, server = published_run
    returncode, out, err = run.finish(timeout=1200)
    assert returncode == 0, err[-3000:]
    assert len(server.gets("/cloud/bootable.qcow2")) == 1   # booted from the pulled copy, not fetched again
    report = json.loads(out)[0]
    assert report["image"]["boot"] == "its own bootloader" and report["image"]["name"] == NAME
    assert report["image"]["kernel_booted"] and report["image"]["kernel_source"] == "the image's own"
    run_dir = Path(report["artifacts"]["dir"])
    xml = (run_dir / "domain.xml").read_text()
    assert "<boot dev='hd'/>" in xml and "<kernel>" not in xml
    # The lab rebooted it once, and the second boot's command line is the one the guest's own update-grub
    # wrote (root=UUID=..., crashkernel= from the seed), not the image's first config (root=LABEL=...).
    assert [e["kind"] for e in report["host_events"]].count(HostEvent.CRASHKERNEL_REBOOT) == 1
    cmdline = report["preflight"]["cmdline"]
    assert "BOOT_IMAGE=" in cmdline and "root=UUID=" in cmdline and cmdline.endswith("crashkernel=256M"), cmdline
    assert report["preflight"]["kexec_crash_loaded"] == "1"
    assert report["verdict"] == "dump" and report["stage"] == "reset", report["diagnosis"]
    # Read from the first partition of the disk on the host, as for the offline image's bare filesystem.
    assert report["vmcore"]["check"] == "passed" and report["vmcore"]["count"] >= 1, report["vmcore"]
    # Gen1's raw copy of a partitioned disk: not handed to e2fsck as if it were a bare filesystem.
    assert report["disk_check"]["clean"] is None and "partitioned" in report["disk_check"]["summary"]
