"""Stage 2, domain: a throw-away overlay, the cloud-init seed and a transient libvirt domain, started paused."""
from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import libvirt

from . import host, paths, qemu_user, reaper, signals, storage
from . import seed as seed_mod
from . import snapshot as snapshot_mod
from .errors import HostError
from .profiles import PROFILES, REMOTE_EMULATOR, STANDINS, render_xml
from .seed import Seed, write_iso
from .vocabulary import HostEvent

if TYPE_CHECKING:   # types only: the domain is built from them, it does not drive them
    from .accel import Accel
    from .image import Image
    from .kdumpconf import KdumpTools
    from .scenario import Scenario
    from .storage import RemoteImage, RunVolumes

LIFECYCLE = {0: "defined", 1: "undefined", 2: "started", 3: "suspended", 4: "resumed", 5: "stopped",
             6: "shutdown", 7: "pmsuspended", 8: "crashed"}


@dataclass
class Domain:
    name: str
    run_id: str
    xml: str
    workdir: Path
    conn: libvirt.virConnect
    seed: Seed
    overlay: Path | None = None
    dom: libvirt.virDomain | None = None
    callbacks: list = field(default_factory=list)
    uri: str = ""   # kept apart from conn: a closed connection cannot tell its URI
    partitioned: bool = False   # a published image's disk: no bare filesystem for e2fsck to check
    destroyed: bool = False
    autodestroy: bool = False   # libvirt destroys it when this connection closes
    kdump: KdumpTools | None = None   # the scenario's kdump config in kdump-tools' form
    volumes: RunVolumes | None = None   # on a remote host: the run's disk and seed, as volumes there
    base_disk: Path | None = None       # the image the remote overlay sits on, here (for the disk read back)

    def start_paused(self, autodestroy: bool = True) -> None:
        try:
            with signals.held():   # a signal now must not lose the handle of a domain that exists
                self.dom = host.create_paused(self.conn, self.xml, autodestroy)
                self.autodestroy = autodestroy
        except libvirt.libvirtError as exc:
            raise host.Refused("domain", f"libvirt refused to start {self.name}: "
                                         f"{host.one_line(exc.get_error_message())}") from None

    def connection_lost(self) -> str | None:
        """Why libvirt closed the connection this domain was made on, or None while it is open."""
        return host.lost(self.conn)

    def resume(self) -> None:
        assert self.dom is not None
        self.dom.resume()

    def state(self) -> str:
        if self.dom is None:
            return "absent"
        try:
            state, _reason = self.dom.state()
        except libvirt.libvirtError:
            return "absent"
        return {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
                libvirt.VIR_DOMAIN_SHUTOFF: "shutoff", libvirt.VIR_DOMAIN_CRASHED: "crashed"}.get(state, str(state))

    def on_event(self, callback) -> None:
        """callback(kind, detail) for libvirt lifecycle and reboot events of this domain."""
        def lifecycle(_c, _d, event, detail, _o):
            name = LIFECYCLE.get(event, str(event))
            callback(HostEvent.LIBVIRT_CRASHED if name == "crashed" else HostEvent.LIBVIRT_LIFECYCLE,
                     f"libvirt lifecycle event: {name} (detail {detail})")

        def reboot(_c, _d, _o):
            callback(HostEvent.LIBVIRT_RESET, "libvirt: guest reset (REBOOT event)")
        assert self.dom is not None
        for event_id, fn in ((libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle),
                             (libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, reboot)):
            self.callbacks.append(self.conn.domainEventRegisterAny(self.dom, event_id, fn, None))

    def inject_nmi(self) -> None:
        assert self.dom is not None
        try:
            self.dom.injectNMI(0)
        except libvirt.libvirtError as exc:
            raise HostError("domain", f"inject-nmi failed: {exc.get_error_message()}") from None

    def throttle(self, target: str, bytes_per_second: int) -> None:
        """Starve one disk path from the host (0 lifts it): the guest's drivers see I/O that never completes."""
        assert self.dom is not None
        self.dom.setBlockIoTune(target, {"total_bytes_sec": bytes_per_second}, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def fetch_disk(self) -> None:
        """A remote run's disk, read back into the scratch once the domain is gone, so that the host's
        checks read it as they read a local one: a qcow2 overlay is pointed at this machine's copy of the
        image it was made from (the same digest)."""
        if self.volumes is None or self.overlay is not None:
            return
        fmt = "qcow2" if self.volumes.disk.name().endswith(".qcow2") else "raw"
        disk = self.volumes.fetch_disk(self.workdir / f"disk.{fmt}")
        if fmt == "qcow2":
            done = subprocess.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(self.base_disk), str(disk)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise HostError("teardown", f"qemu-img rebase of the fetched disk: {done.stderr.strip()[:200]}")
        self.overlay = disk

    def remove_volumes(self) -> list[str]:
        """The run's volumes on a remote host, deleted; the names of those left there."""
        if self.volumes is None:
            return []
        if host.lost(self.conn) or not self._alive():
            return self.volumes.names()   # `lab clean --host` takes them once the host answers again
        return self.volumes.delete()

    def check_disk(self, shut_down_cleanly: bool) -> dict:
        """fsck the guest's filesystem from the host, read-only, once the domain is gone."""
        if self.overlay is None or not self.overlay.exists() or self.overlay.suffix != ".raw":
            return {}
        if self.partitioned:
            return {"tool": "e2fsck -f -n", "clean": None,
                    "summary": "not checked: the disk is partitioned (a published image), not a bare filesystem"}
        if not shut_down_cleanly:
            return {"tool": "e2fsck -f -n", "clean": None,
                    "summary": "not checked: the guest did not shut down cleanly (its journal is not replayed)"}
        done = subprocess.run(["e2fsck", "-f", "-n", str(self.overlay)], capture_output=True, text=True)
        return {"tool": "e2fsck -f -n", "exit": done.returncode, "clean": done.returncode == 0,
                "summary": (done.stdout.strip().splitlines() or [""])[-1]}

    def remove_files(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def release(self) -> None:
        """Stop listening to the domain's events, and leave it running (a kept guest)."""
        for cb in self.callbacks:
            try:
                self.conn.domainEventDeregisterAny(cb)
            except libvirt.libvirtError:
                pass
        self.callbacks.clear()

    def keep(self) -> None:
        """Leave the domain running on purpose: no watcher may destroy it when the lab exits."""
        self.release()
        reaper.release(self.name)

    def destroy(self) -> None:
        self.release()
        if self.dom is not None and not self.destroyed:
            self.destroyed = True   # once: a second teardown step must not try again
            try:
                self.dom.destroy()
            except libvirt.libvirtError as exc:
                if self.autodestroy and host.is_remote(self.uri) and (host.lost(self.conn) or not self._alive()):
                    pass   # the host dropped the connection, and with it (autodestroy) the domain
                elif exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    self._destroy_on_a_new_connection()
        reaper.release(self.name)

    def _alive(self) -> bool:
        try:
            return bool(self.conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _destroy_on_a_new_connection(self, wait: float = 30.0) -> None:
        """The run's connection may be gone (libvirtd restarted): the domain still runs, so reach it anew."""
        deadline = time.monotonic() + wait
        while True:
            try:
                conn = libvirt.open(self.uri)
                try:
                    conn.lookupByName(self.name).destroy()
                finally:
                    conn.close()
                return
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return
                if time.monotonic() > deadline:
                    raise HostError("teardown", f"could not destroy {self.name}: {exc.get_error_message()}; "
                                                "run `lab clean` once libvirtd answers") from None
                time.sleep(1.0)


def render(scenario: Scenario, image: Image, accel: Accel, run_id: str, overlay: Path | str, iso: Path | str,
           qemu_label: str | None, remote: RemoteImage | None = None) -> tuple[str, Seed, KdumpTools]:
    """Everything a run's domain is made of, as text: its XML, its seed, its kdump config (kdump-tools' form).
    On a remote host every file the XML names is a volume of that host (`remote`)."""
    kernel, initrd = (remote.kernel, remote.initrd) if remote else (image.kernel, image.initrd)
    kdump = seed_mod.kdump_tools_config(scenario, STANDINS.get(scenario.profile, {}))   # once: the seed and the report use it
    seed = seed_mod.render(scenario, run_id, STANDINS.get(scenario.profile, {}), image.guest, translated=kdump)
    xml = render_xml(scenario.profile, accel={"domain_type": accel.domain_type, "cpu_mode": accel.cpu_mode},
                     hyperv=accel.hyperv_elements(), name=f"{paths.NAME_PREFIX}{run_id}", uuid=str(uuid.uuid4()),
                     run_id=run_id, scenario=scenario.name, memory_mib=scenario.memory_mib, vcpus=scenario.vcpus,
                     kernel=str(kernel) if kernel else None,
                     initrd=str(initrd) if initrd else None, cmdline=scenario.cmdline(),
                     overlay=str(overlay), seed=str(iso), qemu_label=qemu_label,
                     hv_crash=scenario.hv_crash, user_network=bool(image.guest.packages),
                     **(REMOTE_EMULATOR if remote else {}))
    return xml, seed, kdump


def prepare(conn: libvirt.virConnect, scenario: Scenario, image: Image, accel: Accel, run_id: str,
            remote: RemoteImage | None = None) -> Domain:
    name = f"{paths.NAME_PREFIX}{run_id}"
    if remote:
        return _prepare_remote(conn, scenario, image, accel, run_id, remote)
    qemu = qemu_user.for_connection(conn)
    if qemu:
        qemu.check_reads("domain", [p for p in (image.disk, image.kernel, image.initrd) if p])
    workdir = paths.new_scratch(run_id)
    try:
        fmt = PROFILES[scenario.profile]["overlay_format"]
        overlay = workdir / f"disk.{fmt}"
        if fmt == "qcow2":
            cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image.disk), str(overlay)]
        else:  # a private raw copy (sparse) for profiles that open the disk twice
            cmd = ["qemu-img", "convert", "-q", "-O", "raw", str(image.disk), str(overlay)]
        made = subprocess.run(cmd, capture_output=True, text=True)
        if made.returncode != 0:
            raise HostError("domain", f"qemu-img create failed: {made.stderr.strip()[:200]}")
        iso = workdir / "seed.iso"
        xml, seed, kdump = render(scenario, image, accel, run_id, overlay, iso, qemu.label if qemu else None)
        write_iso(seed, workdir)
        if qemu:   # the seed holds the guest's root password: QEMU's user alone reads it
            qemu.give(overlay, 0o600)
            qemu.give(iso, 0o400)
            qemu.check_reads("domain", [overlay, iso])   # LAB_WORK_DIR may lie where it cannot pass
        else:
            iso.chmod(0o600)
    except BaseException:
        paths.remove_scratch(workdir)
        raise
    return Domain(name, run_id, xml, workdir, conn, seed, overlay=overlay, uri=host.uri_of(conn),
                  partitioned=image.boots_from_disk, kdump=kdump)


def _prepare_remote(conn: libvirt.virConnect, scenario: Scenario, image: Image, accel: Accel, run_id: str,
                    remote: RemoteImage) -> Domain:
    """The same domain on a host that shares no filesystem with the lab: its disk and seed are volumes
    there, and the host's libvirt gives them to its QEMU user (no static label)."""
    workdir = paths.new_scratch(run_id)   # the seed is written here before it is sent, the disk comes back here
    volumes = None
    try:
        volumes = storage.run_volumes(conn, remote, run_id, PROFILES[scenario.profile]["overlay_format"])
        xml, seed, kdump = render(scenario, image, accel, run_id, volumes.disk.path(), volumes.seed_path, None, remote)
        write_iso(seed, workdir)
        (workdir / "seed.iso").chmod(0o600)
        volumes.send_seed(workdir / "seed.iso")
    except BaseException:
        with signals.held():
            if volumes:
                volumes.delete()
            paths.remove_scratch(workdir)
        raise
    return Domain(f"{paths.NAME_PREFIX}{run_id}", run_id, xml, workdir, conn, seed, uri=host.uri_of(conn),
                  partitioned=image.boots_from_disk, kdump=kdump, volumes=volumes, base_disk=image.disk)


def from_snapshot(conn: libvirt.virConnect, scenario: Scenario, snap: snapshot_mod.Snapshot, run_id: str) -> Domain:
    """A domain restored, paused, from a ready-to-panic snapshot, on its own disk in its own scratch."""
    workdir = paths.new_scratch(run_id)
    try:
        with signals.held():   # a restored domain exists from here on: keep its handle
            libvirt_dom, overlay, xml = snapshot_mod.restore(conn, snap, workdir, run_id, qemu_user.for_connection(conn))
    except BaseException:
        paths.remove_scratch(workdir)
        raise
    seed = Seed((snap.folder / "user-data").read_text(), "")
    kdump = seed_mod.kdump_tools_config(scenario, STANDINS.get(scenario.profile, {}))
    return Domain(libvirt_dom.name(), run_id, xml, workdir, conn, seed, overlay=overlay, dom=libvirt_dom,
                  uri=host.uri_of(conn), kdump=kdump)


def describe_profile(scenario: Scenario, kdump: KdumpTools) -> dict:
    """The hardware profile a run used and how its kdump config was translated, for the report."""
    return {"name": scenario.profile, "disks": PROFILES[scenario.profile]["disks"],
            "standins": STANDINS.get(scenario.profile, {}), "kdump_config": scenario.kdump_config,
            "kdump_config_translated": [{"kdump.conf": a, "kdump-tools": b} for a, b in kdump.lines]}
