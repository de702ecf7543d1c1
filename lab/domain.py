"""Stage 2, domain: a throw-away overlay, the cloud-init seed and a transient libvirt domain, started paused."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import libvirt

from . import host, paths, signals
from .accel import Accel
from .errors import HostError
from .image import Image
from .scenario import Scenario
from .seed import Seed, render as render_seed, write_iso

# Hardware profiles: what the guest's virtual machine looks like. One place for every device choice.
#
# hyperv-gen1 models a Hyper-V generation 1 VM: i440fx, SMBIOS "Microsoft Corporation"/"Virtual
# Machine", and the boot disk twice, on the emulated IDE controller and on a paravirtual path. QEMU has
# no storvsc (and its VMBus works only under KVM), so virtio-blk stands in for hv_storvsc: it is the
# disk the first kernel uses, because the guest's own ata_piix ignores IDE disks on such a machine
# (piix_ignore_devices_quirk, prefer_ms_hyperv=1). Both devices open one raw copy of the image (raw
# has no metadata a second writer could corrupt); only one path is in use at a time.
PROFILES = {
    "default": {"template": "default.xml.j2", "machine": "pc", "sysinfo": None, "overlay_format": "qcow2",
                "disks": [{"bus": "virtio", "target": "vda", "path": "virtio"}]},
    "hyperv-gen1": {"template": "default.xml.j2", "machine": "pc", "overlay_format": "raw",
                    "sysinfo": {"manufacturer": "Microsoft Corporation", "product": "Virtual Machine"},
                    "disks": [{"bus": "ide", "target": "hda", "path": "ide"},
                              {"bus": "virtio", "target": "vda", "path": "vmbus-standin"}]},
}
# Hyper-V guest drivers and what stands in for them on each profile: blacklisting the driver in a
# capture kernel must also take away its stand-in, or the model would not follow the configuration.
STANDINS = {
    "hyperv-gen1": {"hv_storvsc": ["virtio_blk"], "hv_vmbus": ["virtio_blk"], "hv_netvsc": [],
                    "hv_utils": [], "hid_hyperv": []},
}
LIFECYCLE = {0: "defined", 1: "undefined", 2: "started", 3: "suspended", 4: "resumed", 5: "stopped",
             6: "shutdown", 7: "pmsuspended", 8: "crashed"}
# The disk a stale VMBus channel silences: the paravirtual path.
STALE_VMBUS_TARGET = {"hyperv-gen1": "vda"}

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(paths.DOMAINS), autoescape=True,
                          undefined=jinja2.StrictUndefined)


def render_xml(profile: str, **context) -> str:
    spec = PROFILES[profile]
    values = {k: v for k, v in spec.items() if k != "template"}
    values.update(context)
    values.setdefault("metadata_ns", paths.METADATA_NS)
    values.setdefault("hv_crash", False)
    values.setdefault("user_network", False)
    values.setdefault("owner", os.getpid())   # `lab clean` leaves a domain alone while this process lives
    values.setdefault("emulator", shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64")
    return _env.get_template(spec["template"]).render(**values)


def probe_renderer(kernel, run_as_root: bool):
    """A disk-less domain for the accelerator probes, from the same template as real runs. `kernel` is a
    path, or a function giving one: asked for only when a probe really runs."""
    def render(accel: dict, hyperv: list, label: str) -> str:
        return render_xml("default", accel=accel, hyperv=hyperv, name=f"{paths.NAME_PREFIX}{label}-{uuid.uuid4().hex[:6]}",
                          uuid=str(uuid.uuid4()), run_id="probe", scenario="probe", memory_mib=256, vcpus=1,
                          kernel=kernel() if callable(kernel) else kernel, initrd=None, cmdline="console=ttyS0,115200 panic=-1", overlay=None,
                          seed=None, run_as_root=run_as_root)
    return render


def run_as_root(conn: libvirt.virConnect) -> bool:
    # qemu:///system runs QEMU as libvirt-qemu, which cannot reach a cache under /root.
    return os.geteuid() == 0 and conn.getURI().endswith("/system")


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

    def start_paused(self) -> None:
        try:
            with signals.held():   # a signal now must not lose the handle of a domain that exists
                self.dom = host.create_paused(self.conn, self.xml)
        except libvirt.libvirtError as exc:
            raise HostError("domain", f"libvirt refused to start {self.name}: {exc.get_error_message()}") from None

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
            callback("libvirt_crashed" if name == "crashed" else "libvirt_lifecycle",
                     f"libvirt lifecycle event: {name} (detail {detail})")

        def reboot(_c, _d, _o):
            callback("libvirt_reset", "libvirt: guest reset (REBOOT event)")
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

    def teardown(self) -> None:
        """Destroy the domain and delete the overlay and seed, whatever state they are in."""
        self.destroy()
        self.remove_files()

    def remove_files(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def destroy(self) -> None:
        for cb in self.callbacks:
            try:
                self.conn.domainEventDeregisterAny(cb)
            except libvirt.libvirtError:
                pass
        self.callbacks.clear()
        if self.dom is not None and not self.destroyed:
            self.destroyed = True   # once: a second teardown step must not try again
            try:
                self.dom.destroy()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    self._destroy_on_a_new_connection()

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


def prepare(conn: libvirt.virConnect, scenario: Scenario, image: Image, accel: Accel, run_id: str) -> Domain:
    name = f"{paths.NAME_PREFIX}{run_id}"
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
        seed = render_seed(scenario, run_id, STANDINS.get(scenario.profile, {}), image.guest)
        iso = write_iso(seed, workdir)
        xml = render_xml(scenario.profile, accel={"domain_type": accel.domain_type, "cpu_mode": accel.cpu_mode},
                         hyperv=accel.hyperv_elements(), name=name, uuid=str(uuid.uuid4()), run_id=run_id,
                         scenario=scenario.name, memory_mib=scenario.memory_mib, vcpus=scenario.vcpus,
                         kernel=str(image.kernel) if image.kernel else None,
                         initrd=str(image.initrd) if image.initrd else None, cmdline=scenario.cmdline(),
                         overlay=str(overlay), seed=str(iso), run_as_root=run_as_root(conn),
                         hv_crash=scenario.hv_crash, user_network=bool(image.guest.packages))
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return Domain(name, run_id, xml, workdir, conn, seed, overlay=overlay, uri=conn.getURI(),
                  partitioned=image.boots_from_disk)
