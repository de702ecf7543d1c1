"""Hardware profiles: what a guest's virtual machine looks like, and the libvirt domain XML rendered for
it (domains/default.xml.j2). One place for every device choice; the accelerator probes render from the
same template as real runs."""
from __future__ import annotations

import functools
import os
import platform
import shutil
import uuid

from . import paths

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
# The disk a stale VMBus channel silences: the paravirtual path.
STALE_VMBUS_TARGET = {"hyperv-gen1": "vda"}

@functools.cache
def _environment():
    import jinja2   # here: a CLI call that renders nothing (most of them) does not pay for it
    return jinja2.Environment(loader=jinja2.FileSystemLoader(paths.DOMAINS), autoescape=True,
                              undefined=jinja2.StrictUndefined)


# A remote host's libvirt picks its own QEMU binary (this machine's path means nothing there).
REMOTE_EMULATOR = {"emulator": None}


def render_xml(profile: str, **context) -> str:
    spec = PROFILES[profile]
    values = {k: v for k, v in spec.items() if k != "template"}
    values.update(context)
    values.setdefault("metadata_ns", paths.METADATA_NS)
    values.setdefault("hv_crash", False)
    values.setdefault("user_network", False)
    values.setdefault("owner", os.getpid())   # `lab clean` leaves a domain alone while this process lives
    values.setdefault("origin", platform.node())   # ... and a remote host's domain alone if another machine's lab owns it
    values.setdefault("emulator", shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64")
    return _environment().get_template(spec["template"]).render(**values)


def probe_renderer(kernel, qemu_label: str | None, remote: bool = False):
    """A disk-less domain for the accelerator probes, from the same template as real runs. `kernel` is a
    path, or a function giving one: asked for only when a probe really runs."""
    def render(accel: dict, hyperv: list, label: str) -> str:
        return render_xml("default", accel=accel, hyperv=hyperv, name=f"{paths.NAME_PREFIX}{label}-{uuid.uuid4().hex[:6]}",
                          uuid=str(uuid.uuid4()), run_id="probe", scenario="probe", memory_mib=256, vcpus=1,
                          kernel=kernel() if callable(kernel) else kernel, initrd=None, cmdline="console=ttyS0,115200 panic=-1", overlay=None,
                          seed=None, qemu_label=qemu_label, **REMOTE_EMULATOR if remote else {})
    return render
