"""Ready-to-panic snapshots: keyed by what shapes the ready guest; a repeat restored from one gives a
cold run's verdict, on its own disk, with the clock set and kdump re-checked before the panic."""
import dataclasses
import xml.etree.ElementTree as ET

import pytest

from lab import paths, runner, snapshot
from lab import scenario as sc
from lab.vocabulary import HostEvent


def test_the_key_follows_the_guest_not_the_trigger_or_the_expectation():
    kdump = sc.resolve("kdump")
    same = [dataclasses.replace(kdump, trigger="nmi", expect="hang", repeat=5, stall_seconds=30.0, name="other")]
    different = [dataclasses.replace(kdump, kernel_panic=3), dataclasses.replace(kdump, memory_mib=2048),
                 dataclasses.replace(kdump, kdump_config="kb2858695")]
    key = snapshot.key(kdump, "img1", "tcg")
    assert all(snapshot.key(s, "img1", "tcg") == key for s in same)
    assert all(snapshot.key(s, "img1", "tcg") != key for s in different)
    assert snapshot.key(kdump, "img2", "tcg") != key and snapshot.key(kdump, "img1", "kvm") != key


def test_a_restore_gets_its_own_disk_and_owner():
    saved = (f"<domain><name>panic-lab-snap-1</name><uuid>00000000-0000-0000-0000-000000000001</uuid>"
             f"<metadata><lab:run xmlns:lab='{paths.METADATA_NS}' id='snap-1' owner='1'/></metadata>"
             f"<devices><disk><source file='/snap/disk.qcow2'/></disk><disk><source file='/snap/seed.iso'/></disk>"
             f"</devices></domain>")
    tree = ET.fromstring(snapshot._retarget(saved, {"/snap/disk.qcow2": "/runs/r1/disk.qcow2"}, run_id="r1"))
    assert [s.get("file") for s in tree.iter("source")] == ["/runs/r1/disk.qcow2", "/snap/seed.iso"]
    # Name and UUID stay: libvirt checks a restored guest against the saved one.
    assert tree.find("name").text == "panic-lab-snap-1"
    run = next(tree.iter(f"{{{paths.METADATA_NS}}}run"))
    assert run.get("id") == "r1" and run.get("owner") != "1"


@pytest.mark.live
def test_a_snapshot_repeat_gives_the_cold_verdict_and_leaves_the_snapshot_as_it_was(lab_results, kdump_snapshot):
    """A cold kdump run dumps and resets (tests/test_live.py, make test-scenarios): so must a repeat."""
    snap, kdump = kdump_snapshot, sc.resolve("kdump")
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in snap.folder.iterdir()}
    r = runner.run(kdump, lab_results, snapshot=True).to_json()
    assert r["cut_short"] is None, r["cut_short"]
    assert (r["verdict"], r["stage"]) == (kdump.expect, "reset"), r["diagnosis"]
    assert r["snapshot"]["key"] == snap.folder.name
    assert r["snapshot"]["clock"]["resynchronised"] is True
    assert r["preflight"]["kexec_crash_loaded"] == "1"   # re-checked after the restore
    assert HostEvent.RESTORED in [e["kind"] for e in r["host_events"]]
    # Its own disk: one dump on it, and the snapshot (saved state and disk) untouched for the next repeat.
    assert r["vmcore"]["check"] == "passed" and r["vmcore"]["count"] == 1, r["vmcore"]
    after = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in snap.folder.iterdir()}
    assert after == before and {"state.save", "ready.json"} <= set(after)
