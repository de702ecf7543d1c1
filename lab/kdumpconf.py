"""kdump configurations: the verbatim KB2858695 kdump.conf, and its translation for Debian's kdump-tools.

KB2858695 (CentOS/RHEL 6 on Hyper-V) fixes the capture kernel's hang by keeping it off VMBus storage:
blacklist the hv_* drivers, let ata_piix take the IDE disk (prefer_ms_hyperv=0), and wait longer for
it. kdump-tools has no kdump.conf; its knobs are /etc/default/kdump-tools variables and the capture
kernel's command line. Today's kdump-utils refuses `blacklist`, `options` and `disk_timeout` as
deprecated, so the verbatim file is kept only for RHEL-family guests.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field

KB2858695 = """\
path /var/crash
core_collector makedumpfile -c --message-level 1 -d 31
extra_modules ata_piix sr_mod sd_mod
blacklist hv_vmbus hv_storvsc hv_utils hv_netvsc hid_hyperv
options ata_piix prefer_ms_hyperv=0
disk_timeout 100
"""
CONFIGS = {"default": None, "kb2858695": KB2858695}
# What the image's kdump initrd carries (images/debian12/customize.sh): extra_modules must be there.
KDUMP_INITRD_MODULES = {"virtio_pci", "virtio_blk", "virtio_scsi", "ata_piix", "ata_generic", "libata",
                        "sd_mod", "sr_mod", "scsi_mod", "ext4"}


@dataclass
class KdumpTools:
    """The kdump-tools form of a kdump.conf: what goes into /etc/default/kdump-tools."""
    cmdline_append: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    modules: list[str] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=list)   # (kdump.conf line, what it became)


def to_kdump_tools(conf: str, standins: dict[str, list[str]] | None = None) -> KdumpTools:
    """Translate a dracut-kdump kdump.conf into kdump-tools terms, line by line.

    `standins` maps a Hyper-V driver to the drivers that play its part on the lab's hardware profile:
    blacklisting hv_storvsc must also take away the device that stands in for it.
    """
    standins = standins or {}
    out = KdumpTools()
    blacklist: list[str] = []
    for raw in conf.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, _, rest = line.partition(" ")
        args = shlex.split(rest)
        if key == "path":
            out.variables["KDUMP_COREDIR"] = args[0]
            out.lines.append((line, f'KDUMP_COREDIR="{args[0]}"'))
        elif key == "core_collector":
            if args[:1] != ["makedumpfile"]:
                raise ValueError(f"core_collector {args[:1]}: kdump-tools only runs makedumpfile")
            out.variables["MAKEDUMP_ARGS"] = " ".join(args[1:])
            out.lines.append((line, f'MAKEDUMP_ARGS="{" ".join(args[1:])}"'))
        elif key == "extra_modules":
            missing = sorted(set(args) - KDUMP_INITRD_MODULES)
            if missing:
                raise ValueError(f"extra_modules {' '.join(missing)}: not in the image's kdump initrd")
            out.modules += args
            out.lines.append((line, "already in the image's kdump initrd (MODULES=list)"))
        elif key == "blacklist":
            added = []
            for module in args:
                for name in [module] + standins.get(module, []):
                    if name not in blacklist:
                        blacklist.append(name)
                        added.append(name)
            out.lines.append((line, "modprobe.blacklist=" + ",".join(added)))
        elif key == "options":
            module, params = args[0], args[1:]
            out.cmdline_append += [f"{module}.{p}" for p in params]
            out.lines.append((line, " ".join(f"{module}.{p}" for p in params)))
        elif key == "disk_timeout":
            # initramfs-tools waits max(30, rootdelay) s for the root device, but it also sleeps rootdelay
            # seconds first, unconditionally: that would be a fixed delay, not a timeout. Left out.
            int(args[0])
            out.lines.append((line, "(none: initramfs-tools waits up to 30 s for its disk; rootdelay= would "
                                    "add a fixed sleep, so it is not used)"))
        else:
            raise ValueError(f"kdump.conf key {key!r} has no kdump-tools equivalent in the lab")
    if blacklist:
        out.cmdline_append.insert(0, "modprobe.blacklist=" + ",".join(blacklist))
    return out
