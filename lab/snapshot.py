"""Ready-to-panic snapshots (part of stage 2, domain): a guest configuration is booted once, logged in
and checked armed, then saved with libvirt (virDomainSave: memory state to a file, the domain stops).
Each repeat restores from that state on its own disk: a qcow2 overlay on the snapshot's disk, or for
profiles that open one raw disk twice (Gen1), a private sparse copy of it.

Snapshots live under the cache, keyed by a hash of everything that shapes the ready guest: the image,
the accelerator, the domain template, the seed template and the scenario's guest knobs. Change any of
them and a new snapshot is made; `lab clean --snapshots` removes them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import libvirt

from . import host, paths, qemu_user, reaper
from .errors import HostError
from .scenario import Scenario


# What does not change the ready guest: how the panic is triggered, what is expected, how often, how long to wait.
NOT_GUEST_STATE = {"name", "description", "trigger", "expect", "repeat", "stall_seconds", "boot_seconds",
                   "wait_for_login", "keep"}


def key(scenario: Scenario, image_key: str, accel_name: str) -> str:
    knobs = {k: v for k, v in dataclasses.asdict(scenario).items() if k not in NOT_GUEST_STATE}
    digest = hashlib.sha256(json.dumps([knobs, image_key, accel_name], sort_keys=True).encode())
    for template in sorted(list(paths.DOMAINS.glob("*.j2")) + list((paths.IMAGES / "cloud-init").glob("*.j2"))):
        digest.update(template.read_bytes())
    return digest.hexdigest()[:16]


def root() -> Path:
    return paths.cache_dir() / "snapshots"


@dataclass(frozen=True)
class Snapshot:
    folder: Path

    state = property(lambda self: self.folder / "state.save")
    manifest = property(lambda self: self.folder / "ready.json")

    def ready(self) -> bool:
        return self.manifest.exists() and self.state.exists()

    def info(self) -> dict:
        return json.loads(self.manifest.read_text())

    def disk(self) -> Path:
        return self.folder / self.info()["disk"]


@contextlib.contextmanager
def taking_turns(snap: Snapshot):
    """Held while a repeat uses the snapshot: restores keep the saved name and UUID, so one at a time."""
    with paths.locked(snap.folder):
        yield


@contextlib.contextmanager
def making(snap: Snapshot):
    """Held while a snapshot is made; yields whether it still has to be made (another process may have)."""
    paths.owned_cache()
    root().mkdir(exist_ok=True)
    root().chmod(0o755)   # whatever root's umask: QEMU's user passes through
    with paths.locked(root()):
        yield not snap.ready()


def find(scenario: Scenario, image_key: str, accel_name: str) -> Snapshot:
    return Snapshot(root() / key(scenario, image_key, accel_name))


def save(conn: libvirt.virConnect, dom: libvirt.virDomain, overlay: Path, seed_iso: Path, snap: Snapshot,
         user_data: str, facts: dict) -> None:
    """Save a running, ready guest into the snapshot folder (the domain stops)."""
    tmp = snap.folder.with_name(snap.folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tmp.chmod(0o755)   # QEMU's user passes through to the disk and seed of every restore
    try:
        try:
            dom.save(str(tmp / "state.save"))
        except libvirt.libvirtError as exc:
            raise HostError("snapshot", f"libvirt could not save the guest: {exc.get_error_message()}") from None
        disk = tmp / f"disk{overlay.suffix}"
        shutil.move(str(overlay), disk)
        shutil.move(str(seed_iso), tmp / "seed.iso")
        # The saved state names the run's paths: point it at the snapshot's own files.
        xml = _retarget(conn.saveImageGetXMLDesc(str(tmp / "state.save")), {str(overlay): str(snap.folder / disk.name),
                                                                           str(seed_iso): str(snap.folder / "seed.iso")})
        conn.saveImageDefineXML(str(tmp / "state.save"), xml)
        if os.geteuid() == 0:   # the guest's QEMU user owned them: it must not be able to change them again
            os.chown(disk, 0, 0)
            qemu = qemu_user.for_connection(conn)
            os.chown(tmp / "seed.iso", 0, qemu.gid if qemu else 0)
        os.chmod(disk, 0o444)   # repeats write to their own overlays or copies
        os.chmod(tmp / "seed.iso", 0o440)   # it holds the guest's root password: root and QEMU's group alone
        paths.private_file(tmp / "user-data", user_data)
        (tmp / "ready.json").write_text(json.dumps({"disk": disk.name, "facts": facts}, indent=2))
        tmp.rename(snap.folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _retarget(xml: str, paths_map: dict[str, str], run_id: str | None = None) -> str:
    tree = ET.fromstring(xml)
    for source in tree.iter("source"):
        if source.get("file") in paths_map:
            source.set("file", paths_map[source.get("file")])
    if run_id:
        for element in tree.iter(f"{{{paths.METADATA_NS}}}run"):
            element.set("id", run_id)
            element.set("owner", str(os.getpid()))   # this process now answers for the domain
    return ET.tostring(tree, encoding="unicode")


def restore(conn: libvirt.virConnect, snap: Snapshot, workdir: Path, run_id: str,
            qemu: qemu_user.QemuUser | None = None) -> tuple[libvirt.virDomain, Path, str]:
    """A new, paused domain from the snapshot, on its own disk in workdir.

    It keeps the saved domain's name and UUID (libvirt checks a restored guest's ABI against the saved
    one), so one configuration's repeats take turns: the caller holds the snapshot's lock meanwhile."""
    base = snap.disk()
    overlay = workdir / base.name
    if base.suffix == ".qcow2":
        cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)]
    else:
        cmd = ["cp", "--sparse=always", str(base), str(overlay)]
    made = subprocess.run(cmd, capture_output=True, text=True)
    if made.returncode != 0:
        raise HostError("snapshot", f"{cmd[0]} failed: {made.stderr.strip()[:200]}")
    if qemu:
        qemu.check_reads("snapshot", [base, snap.folder / "seed.iso"])
        qemu.give(overlay, 0o600)
    else:
        os.chmod(overlay, 0o600)
    xml = _retarget(conn.saveImageGetXMLDesc(str(snap.state)), {str(base): str(overlay)}, run_id=run_id)
    name = ET.fromstring(xml).find("name").text
    reaper.watch(host.uri_of(conn), name)   # from before it exists: libvirt's restore has no autodestroy
    try:
        conn.restoreFlags(str(snap.state), xml, libvirt.VIR_DOMAIN_SAVE_PAUSED)
    except libvirt.libvirtError as exc:
        reaper.release(name)
        raise HostError("snapshot", f"libvirt could not restore {snap.folder.name}: {exc.get_error_message()}") from None
    reaper.restored(name)
    try:
        return conn.lookupByName(name), overlay, xml
    except libvirt.libvirtError as exc:
        raise HostError("snapshot", f"restored {name} but cannot reach it: {exc.get_error_message()}") from None
