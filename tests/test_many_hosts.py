"""One matrix over several libvirt hosts (lab/placement.py, lab/storage.py), with this machine's libvirtd
reached twice: as qemu:///system, and over ssh through a loopback sshd of the test's own, which the lab
must treat as a host that shares no filesystem with it.

- A remote host gets its image, disks and seed as volumes of a libvirt pool, checked by digest, and
  nothing of the lab's cache.
- A host that drops mid-matrix ends its run as a host error; the runs not yet started finish on the
  other host; `lab clean --host` later takes what the dropped run left there.
- An unreachable host is refused before anything starts, unless another answers.
"""
import hashlib
import io
import json
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from conftest import run_lab, spawn_lab, wait_until
from lab import batch, host, image, kept, paths, placement, storage
from lab.scenario import BASE_SCENARIOS
from loopback_sshd import LoopbackSshd

LOCAL = "qemu:///system"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# -- placement, from what each host's libvirt says (no libvirt needed: the hosts are described) ----------
@pytest.fixture
def described_hosts(monkeypatch):
    """placement._measure answers from this table; a URI missing from it does not answer."""
    table = {}

    def measure(uri):
        if uri not in table:
            raise host.Unreachable("host", f"libvirt unreachable at {uri}: connection refused")
        return table[uri]
    monkeypatch.setattr(placement, "_measure", measure)
    return table


def test_runs_go_to_the_host_with_most_room_by_its_own_cores_and_memory(described_hosts):
    described_hosts.update({"qemu+ssh://a/system": (2, 8192), "qemu+ssh://b/system": (4, 65536)})
    spread = placement.Placement.open(list(described_hosts), io.StringIO())
    need = 2048   # a 1 GiB guest
    # a: min(2 cores, (8192 - 2048 own) // 2048 = 3) = 2; b: min(4, 31) = 4
    assert spread.capacity(need) == 6
    taken = [spread.take(need, placement.threading.Event()).uri for _ in range(6)]
    assert taken.count("qemu+ssh://b/system") == 4 and taken.count("qemu+ssh://a/system") == 2
    assert taken[0] == "qemu+ssh://b/system"   # most room first, not the first named


def test_a_tie_goes_to_the_host_named_first_and_a_dropped_host_takes_no_more_runs(described_hosts):
    described_hosts.update({"qemu+ssh://a/system": (2, 16384), LOCAL: (2, 16384)})
    log = io.StringIO()
    spread = placement.Placement.open(["qemu+ssh://a/system", LOCAL], log)
    cancel = placement.threading.Event()
    first = spread.take(2048, cancel)
    assert first.uri == "qemu+ssh://a/system" and spread.take(2048, cancel).uri == LOCAL
    del described_hosts["qemu+ssh://a/system"]   # the host vanishes while its run goes
    spread.give_back(first, 2048)                # measured anew when it holds nothing: dropped
    assert "dropped host qemu+ssh://a/system" in log.getvalue()
    assert spread.take(2048, cancel).uri == LOCAL
    spread.drop(spread.hosts[1], "gone too")
    assert spread.take(2048, cancel) is None     # no host left: the batch says so for each run (host: null)


def test_an_unreachable_host_is_named_and_dropped_when_another_answers(described_hosts):
    described_hosts[LOCAL] = (2, 16384)
    log = io.StringIO()
    spread = placement.Placement.open(["qemu+ssh://nowhere/system", LOCAL], log)
    assert [h.uri for h in spread.hosts] == [LOCAL]
    assert "dropped a host: libvirt unreachable at qemu+ssh://nowhere/system" in log.getvalue()
    with pytest.raises(placement.InputError, match="no host answers: libvirt unreachable at qemu\\+ssh://nowhere"):
        placement.Placement.open(["qemu+ssh://nowhere/system"], log)


class _Reported(dict):
    def to_json(self):
        return dict(self)


@pytest.mark.parametrize("failure", ["refuses the domain", "is unreachable", "loses the connection"])
def test_a_failing_host_ends_its_run_as_a_host_error_and_the_runs_not_started_go_elsewhere(
        failure, described_hosts, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))   # this machine's memory ledger
    monkeypatch.setattr(batch.image_mod, "ensure", lambda name, log=None, kernel="": None)
    flaky = "qemu+ssh://flaky/system"
    described_hosts.update({flaky: (2, 16384), LOCAL: (2, 16384)})
    ran = []

    def run(scenario, results, log, snapshot=False, uri=None):
        ran.append(uri)
        if uri == flaky and failure == "is unreachable":
            del described_hosts[flaky]
            raise host.Unreachable("host", f"libvirt unreachable at {uri}: connection refused")
        if uri == flaky:
            if failure == "loses the connection":
                del described_hosts[flaky]
            cut_short = ({"by": "host", "why": "domain: libvirt refused to start it", "refused": True}
                         if failure == "refuses the domain" else
                         {"by": "host", "why": "host: the libvirt connection closed: end of file from libvirtd"})
            return _Reported(verdict=None, cut_short=cut_short, host={"uri": uri})
        return _Reported(verdict="hang", host={"uri": uri})
    monkeypatch.setattr(batch, "run", run)
    log = io.StringIO()
    reports = batch.run_many([BASE_SCENARIOS["panic-hang"]] * 3, tmp_path, 1, log=log, hosts=[flaky, LOCAL])
    assert f"dropped host {flaky}" in log.getvalue()
    if failure == "is unreachable":   # nothing started there: that run, too, went to the other host
        assert ran == [flaky, LOCAL, LOCAL, LOCAL] and [r["verdict"] for r in reports] == ["hang"] * 3
    else:
        assert ran == [flaky, LOCAL, LOCAL]
        assert reports[0]["cut_short"]["by"] == "host" and reports[0]["host"]["uri"] == flaky
        assert [r["verdict"] for r in reports[1:]] == ["hang", "hang"]


# -- a real remote host: this machine's libvirtd over ssh -------------------------------------------------
@pytest.fixture
def sshd():
    with LoopbackSshd() as daemon:
        yield daemon


@pytest.mark.libvirt
def test_an_unreachable_host_refuses_the_run_in_one_line_before_anything_starts(tmp_path):
    done = run_lab("run", "panic-hang", "--host", "qemu+ssh://root@127.0.0.1:1/system?no_tty=1",
                   "--results", str(tmp_path), text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "no host answers: libvirt unreachable at qemu+ssh://root@127.0.0.1:1/system" in done.stderr
    assert not any(tmp_path.iterdir())   # no results folder


@pytest.mark.libvirt
def test_a_file_reaches_a_remote_host_as_a_volume_checked_by_its_digest(sshd, tmp_path):
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(3 << 20) + b"panic-lab")
    conn = host.connect(sshd.uri)
    try:
        pool = storage.pool(conn)
        vol = storage.uploaded(conn, pool, payload, ".bin")
        try:
            assert vol.name() == f"{storage.IMAGE_VOLUME}{_sha256(str(payload))[:24]}.bin"
            assert storage._read_back(conn, vol) == _sha256(str(payload))
            # Damaged on the host (an upload cut short): found by the digest and sent again.
            Path(vol.path()).write_bytes(b"cut short")
            storage._checked.clear()
            said = []
            vol = storage.uploaded(conn, pool, payload, ".bin", said.append)
            assert any("does not match its digest" in line for line in said)
            assert _sha256(vol.path()) == _sha256(str(payload))
        finally:
            vol.delete(0)
            storage._checked.clear()
    finally:
        host.disconnect(conn)


@pytest.mark.libvirt
def test_an_image_becomes_a_run_disk_on_the_host_and_comes_back_whole(sshd, tmp_path):
    """A qcow2 image sent as a volume; the host makes a run's raw copy and a qcow2 overlay from it; each
    reads back (sparse) into the same bytes the image holds."""
    raw = tmp_path / "fs.raw"
    with open(raw, "wb") as f:   # data, a hole, data: the read back must keep both
        f.write(os.urandom(1 << 20))
        f.seek(12 << 20)
        f.write(b"end of the filesystem" * 1000)
        f.truncate(16 << 20)
    qcow2 = tmp_path / "image.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    conn = host.connect(sshd.uri)
    made = []
    try:
        base = storage.uploaded(conn, storage.pool(conn), qcow2, ".qcow2", fmt="qcow2", capacity=16 << 20)
        made.append(base)
        remote = storage.RemoteImage(base.path(), None, None, storage.digest(qcow2), 16 << 20)
        for fmt in ("raw", "qcow2"):
            vols = storage.run_volumes(conn, remote, f"test-{fmt}", fmt)
            made.append(vols.disk)
            assert vols.disk.name().startswith(f"{storage.RUN_VOLUME}{storage._origin()}-{os.getpid()}-test-{fmt}")
            back = vols.fetch_disk(tmp_path / f"back.{fmt}")
            assert back.stat().st_mode & 0o777 == 0o600
            if fmt == "qcow2":   # an overlay: pointed at the image here, as a remote run's disk is
                subprocess.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(qcow2), str(back)], check=True)
            flat = tmp_path / f"flat-{fmt}.raw"
            subprocess.run(["qemu-img", "convert", "-q", "-O", "raw", str(back), str(flat)], check=True)
            assert _sha256(str(flat)) == _sha256(str(raw))
        assert os.stat(tmp_path / "back.raw").st_blocks * 512 < 8 << 20   # the hole stayed a hole
    finally:
        for vol in made:
            vol.delete(0)
        storage._checked.clear()
        host.disconnect(conn)


def test_runs_at_once_never_exceed_a_host_s_room_and_spread_over_both(described_hosts, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(batch.image_mod, "ensure", lambda name, log=None, kernel="": None)
    small, big = "qemu+ssh://small/system", "qemu+ssh://big/system"
    described_hosts.update({small: (1, 16384), big: (2, 16384)})   # room: 1 and 2 runs
    busy, most, lock = {small: 0, big: 0}, {small: 0, big: 0}, placement.threading.Lock()

    def run(scenario, results, log, snapshot=False, uri=None):
        with lock:
            busy[uri] += 1
            most[uri] = max(most[uri], busy[uri])
        time.sleep(0.05)
        with lock:
            busy[uri] -= 1
        return _Reported(verdict="hang", host={"uri": uri})
    monkeypatch.setattr(batch, "run", run)
    reports = batch.run_many([BASE_SCENARIOS["panic-hang"]] * 9, tmp_path, 3, log=io.StringIO(), hosts=[small, big])
    assert len(reports) == 9 and all(r["verdict"] == "hang" for r in reports)
    assert most == {small: 1, big: 2}


def test_a_run_no_host_would_take_has_no_host_in_its_report(described_hosts, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(batch.image_mod, "ensure", lambda name, log=None, kernel="": None)
    described_hosts[LOCAL] = (2, 16384)

    def run(scenario, results, log, snapshot=False, uri=None):
        del described_hosts[LOCAL]
        raise host.Unreachable("host", f"libvirt unreachable at {uri}: gone")
    monkeypatch.setattr(batch, "run", run)
    reports = batch.run_many([BASE_SCENARIOS["panic-hang"]], tmp_path, 1, log=io.StringIO(), hosts=[LOCAL])
    assert reports[0]["error"].startswith("no host left") and reports[0]["host"] is None


@pytest.mark.libvirt
def test_lab_clean_on_a_remote_host_takes_only_marked_volumes_whose_lab_is_gone(sshd):
    conn = host.connect(sshd.uri)
    pool = storage.pool(conn)
    dead = _a_dead_pid()
    ours = f"{storage.RUN_VOLUME}{storage._origin()}"
    names = {"gone": f"{ours}-{dead}-r1-disk.qcow2", "live": f"{ours}-{os.getpid()}-r2-disk.qcow2",
             "elsewhere": f"{storage.RUN_VOLUME}0badc0de-{dead}-r3-disk.qcow2",   # another machine's lab
             "user": "not-the-labs.qcow2"}
    try:
        for name in names.values():
            storage._new_volume(pool, name, 1 << 20)
        cleaned = run_lab("clean", "--host", sshd.uri, text=True, timeout=120)
        assert cleaned.returncode == 0, cleaned.stderr
        assert f"removed volume {names['gone']}" in cleaned.stdout
        assert f"left volume {names['live']}: its lab run (pid {os.getpid()}) is still going" in cleaned.stdout
        assert f"left volume {names['elsewhere']}: a lab on another machine made it" in cleaned.stdout
        left = {v.name() for v in pool.listAllVolumes(0)}
        assert names["gone"] not in left and {names["live"], names["elsewhere"], names["user"]} <= left
    finally:
        for name in names.values():
            try:
                pool.storageVolLookupByName(name).delete(0)
            except libvirt.libvirtError:
                pass
        host.disconnect(conn)


def _a_dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# -- the live matrix: a host that drops mid-run ------------------------------------------------------------
def _remote_domain(local: libvirt.virConnect) -> libvirt.virDomain | None:
    """The lab's domain whose disk is a volume of the lab's pool: the one started over ssh."""
    for dom in local.listAllDomains():
        if dom.name().startswith(paths.NAME_PREFIX) and storage.POOL_PATH in dom.XMLDesc():
            return dom
    return None


@pytest.mark.live
def test_a_host_that_drops_mid_matrix_ends_its_run_as_a_host_error_and_the_rest_finish_on_the_other(tmp_path):
    # One at a time, so the order is certain: the first run goes to the ssh host (a tie goes to the host
    # named first), the second waits for it and, that host gone, runs here.
    sshd = LoopbackSshd()
    local = host.connect(LOCAL)
    lab = spawn_lab("run", "panic-hang", "--repeat", "2", "--parallel", "1", "--json", "--results",
                    str(tmp_path), "--host", sshd.uri, "--host", LOCAL, env=dict(os.environ),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        dom = wait_until(lambda: _remote_domain(local), 300)
        assert dom, "no domain on the ssh host within 300 s"
        run_id, _owner = kept.lab_run(dom)
        tree = ET.fromstring(dom.XMLDesc())
        disks = [d.find("source").get("file") for d in tree.iter("disk")]
        chain = [e.get("file") for e in tree.iter("backingStore") for e in e.iter("source") if e.get("file")]
        files = disks + chain + [tree.findtext("os/kernel"), tree.findtext("os/initrd")]
        assert len(disks) == 2 and len(chain) == 1   # the disk and the seed; the image under the disk
        for path in files:
            vol = local.storageVolLookupByPath(path)   # every one a volume of the lab's pool ...
            assert vol.storagePoolLookupByVolume().name() == storage.pool_name()
            assert not path.startswith((str(paths.cache_dir()), str(paths.work_dir())))   # ... none the lab's cache
        backing = ET.fromstring(local.storageVolLookupByPath(disks[0]).XMLDesc()).findtext("backingStore/path")
        assert backing == chain[0]
        assert _sha256(backing) == _sha256(str(image.ensure(image.DEFAULT).disk))   # the image, as uploaded
        console = lambda: next(tmp_path.glob(f"lab-*/{run_id}/console.log"), None)  # noqa: E731
        assert wait_until(lambda: console() and b"Linux version" in console().read_bytes(), 300), \
            "no kernel banner from the ssh host's console within 300 s"
        sshd.drop()   # the host vanishes while its guest boots
        out, err = lab.communicate(timeout=900)
    finally:
        if lab.poll() is None:
            lab.kill()
        sshd.stop()
    assert lab.returncode in (0, 1), err
    reports = json.loads(out)
    assert [(r.get("host") or {}).get("uri") for r in reports] == [sshd.uri, LOCAL], reports
    remote, stayed = reports
    assert remote["cut_short"]["by"] == "host" and "the libvirt connection closed" in remote["cut_short"]["why"]
    assert remote["verdict"] is None   # the host's failure, never the guest's verdict
    assert f"dropped host {sshd.uri}" in err
    assert stayed["verdict"] == "hang" and stayed["expectation_met"]
    assert _remote_domain(local) is None   # libvirt ended it with the connection (autodestroy)

    # What the dropped run left on that host, `lab clean --host` takes once the host answers again.
    left = remote["host"].get("volumes_left", [])
    assert left and all(run_id in name for name in left)
    with LoopbackSshd() as again:
        cleaned = run_lab("clean", "--host", again.uri, text=True, timeout=120)
    assert cleaned.returncode == 0, cleaned.stderr
    assert all(f"removed volume {name}" in cleaned.stdout for name in left)
    host.disconnect(local)


# The seed's scenarios over both hosts, each run's host named: `make test-hosts` (make test runs the drop).
REPRESENTATIVE_RUNS = ("refuses the domain", "is unreachable", "loses the connection")


@pytest.mark.live
@pytest.mark.parametrize("matrix", ["seed"])
def test_the_seed_matrix_over_two_hosts_gives_each_expected_verdict_and_names_its_host(matrix, sshd, tmp_path):
    seed = ["panic-reboot", "kdump", "hyperv-kdump-default", "hyperv-kdump-kb2858695"]
    done = run_lab("run", *seed, "--parallel", "2", "--json", "--results", str(tmp_path),
                   "--host", LOCAL, "--host", sshd.uri, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = json.loads(done.stdout)
    assert [r["scenario"]["name"] for r in reports] == seed
    assert all(r["expectation_met"] for r in reports), [(r["scenario"]["name"], r["verdict"]) for r in reports]
    ran_on = {r["host"]["uri"] for r in reports}
    assert ran_on == {LOCAL, sshd.uri}   # both hosts took runs
    for r in reports:
        if r["verdict"] == "dump":   # the vmcore checked on this machine, wherever the guest ran
            assert r["vmcore"]["check"] == "passed", r["vmcore"]
