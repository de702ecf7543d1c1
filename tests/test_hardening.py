"""Holes an outside audit found (issue 13), each closed: bad results paths are refused before libvirt is
asked anything, junit.xml stays well-formed on real console bytes, and (with libvirt) a domain dies with
the lab's connection and a console taken from another viewer is reported."""
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import libvirt
import pexpect
import pytest
from junitparser import JUnitXml

from conftest import ROOT, run_lab
from lab import host, image, profiles, qemu_user, recorded, results
from lab.console import Console
from lab.timeout import Timeout
from lab.transcript import Transcript

TRANSCRIPTS = ROOT / "tests" / "transcripts"


@pytest.mark.parametrize("results", ["/dev/null/x", "/proc/version/runs"])
def test_an_impossible_results_folder_is_one_line_before_libvirt_is_asked(tmp_path, results):
    done = run_lab("run", "panic-reboot", "--results", results, text=True, timeout=60,
                   env={"LAB_URI": "test+unix:///nowhere/at/all", "LAB_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("lab: results: cannot create"), done.stderr
    assert not (tmp_path / "cache").exists()


def test_junit_is_well_formed_on_a_real_console_with_escape_codes(tmp_path):
    console = recorded.load(TRANSCRIPTS / "gen1-default-capture-kernel-stuck.log").console
    assert b"\x1b[" in console   # the case the audit found: ESC in the excerpt
    escaped = next(n for n, line in enumerate(console.split(b"\n"), 1) if b"\x1b[" in line)
    (tmp_path / "console.log").write_bytes(console)
    run = {"scenario": {"name": "hyperv-kdump-default", "expect": "dump"}, "run_id": "r1", "verdict": "hang",
           "stage": "capture_kernel_booted", "diagnosis": "stuck \x1b[0m", "evidence": [{"line": escaped}],
           "expectation_met": False, "cut_short": None, "artifacts": {"dir": str(tmp_path)},
           "timings": {"wall_seconds": 1.0}}
    (tmp_path / "junit.xml").write_text(results.junit([run, {**run, "run_id": "r2", "cut_short": {"by": "host", "why": "x\x07"}}], "t"))
    suite = next(iter(JUnitXml.fromfile(str(tmp_path / "junit.xml"))))
    cases = list(suite)
    assert [c.name for c in cases] == ["r1", "r2"]
    failure = cases[0].result[0]
    assert "\\x1b[" in failure.text and "expected dump, got hang: stuck \\x1b[0m" in failure.message


# -- with libvirt, no guest booted -------------------------------------------------------------------
def _paused_domain(conn):
    kernel = image.cached("debian12")
    if kernel is None:
        pytest.fail("the debian12 image is not built (make image builds it)")
    xml = profiles.probe_renderer(str(kernel.kernel), qemu_user.label_for(conn))(
        {"domain_type": "qemu", "cpu_mode": "custom"}, [], f"hardening-{uuid.uuid4().hex[:6]}")
    return host.create_paused(conn, xml)


@pytest.mark.libvirt
def test_a_domain_dies_with_the_connection_that_started_it():
    """Autodestroy: the net under the lab's own teardown when the lab is killed with -9."""
    conn = host.connect()
    name = _paused_domain(conn).name()
    host.disconnect(conn)
    watcher = host.connect()
    try:   # libvirtd destroys it once it has processed the closed connection: a moment later
        deadline = time.monotonic() + 10
        while name in [d.name() for d in watcher.listAllDomains()] and time.monotonic() < deadline:
            time.sleep(0.2)
        with pytest.raises(libvirt.libvirtError, match="[Dd]omain not found|no domain"):
            watcher.lookupByName(name)
    finally:
        host.disconnect(watcher)


@pytest.mark.libvirt
def test_a_guests_qemu_runs_as_libvirts_unprivileged_user():
    conn = host.connect()
    try:
        dom = _paused_domain(conn)
        expected = qemu_user.for_connection(conn)
        pid = Path(f"/run/libvirt/qemu/{dom.name()}.pid").read_text().strip()
        uid = next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("Uid:"))
        assert int(uid) == (expected.uid if expected else os.geteuid())
        assert int(uid) != 0 or os.geteuid() != 0, "QEMU runs as root"
    finally:
        host.disconnect(conn)   # autodestroy


_WATCHED_CHILD = """
import os, signal, sys
from lab import reaper
sys.stdin.readline()   # the domain exists now, with this process as its owner
reaper.watch(sys.argv[1], sys.argv[2])
reaper.restored(sys.argv[2])
if sys.argv[3] in ("kept", "destroyed"):
    reaper.release(sys.argv[2])
if sys.argv[3] != "exit":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _reapers(owner: int) -> list[str]:
    """The watchers of one lab process (another lab may run on this host meanwhile)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().split(b"\0")[-3:-1] == [b"lab.reaper", str(owner).encode()]:
                found.append(proc.name)
        except OSError:
            pass
    return found


@pytest.mark.libvirt
@pytest.mark.parametrize("end, survives", [("killed", False), ("exit", False), ("kept", True)])
def test_a_restored_domain_is_destroyed_when_its_lab_dies_without_teardown(end, survives):
    """libvirt's restore takes no autodestroy flag, so the lab's watcher is the net: when the lab ends
    (kill -9, or an exit whose teardown did not destroy it) it destroys what the lab still watched, and
    leaves a guest the lab took off its list (kept; a destroyed one is taken off the same way)."""
    conn = host.connect()
    probe = _paused_domain(conn)
    xml, name = probe.XMLDesc(), probe.name()
    probe.destroy()
    assert f'owner="{os.getpid()}"' in xml
    lab = subprocess.Popen([sys.executable, "-c", _WATCHED_CHILD, conn.getURI(), name, end], cwd=ROOT,
                           stdin=subprocess.PIPE, text=True)
    try:   # as a restored domain is: no autodestroy, the watching lab process named as its owner
        host.create_paused(conn, xml.replace(f'owner="{os.getpid()}"', f'owner="{lab.pid}"'), autodestroy=False)
        lab.communicate("go\n", timeout=60)
        deadline = time.monotonic() + 15
        def alive():
            return name in [d.name() for d in conn.listAllDomains()]
        while (_reapers(lab.pid) or alive() != survives) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _reapers(lab.pid), "the watcher outlived the lab"
        assert alive() == survives
    finally:
        lab.kill()
        for d in conn.listAllDomains():
            if d.name() == name:
                d.destroy()
        host.disconnect(conn)


@pytest.mark.libvirt
def test_a_console_taken_from_another_viewer_is_reported(tmp_path):
    conn = host.connect()
    dom = _paused_domain(conn)
    viewer = pexpect.spawn("virsh", ["-c", conn.getURI(), "console", dom.name()], timeout=20)
    try:
        viewer.expect(rb"Escape character is")
        console = Console(conn.getURI(), dom.name(), Transcript(tmp_path))
        console.attach(Timeout("attach", 20))
        assert console.took_over
        console.close()
        fresh = _paused_domain(conn)
        mine = Console(conn.getURI(), fresh.name(), Transcript(_sub(tmp_path)))
        mine.attach(Timeout("attach", 20))
        assert not mine.took_over
        mine.close()
    finally:
        viewer.close(force=True)
        host.disconnect(conn)   # autodestroy takes both domains


def _sub(tmp_path):
    folder = tmp_path / "second"
    folder.mkdir()
    return folder
