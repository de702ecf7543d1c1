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
# The distribution's default, plus a limit on how long the capture kernel waits for its dump target.
DISK_TIMEOUT_30 = "disk_timeout 30\n"
CONFIGS = {"default": None, "kb2858695": KB2858695, "disk-timeout": DISK_TIMEOUT_30}
DISK_TIMEOUT_ARG = "panic_lab.disk_timeout"
# What the image's kdump initrd carries (images/debian/customize.sh): extra_modules must be there.
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
            # initramfs-tools has no such timeout (its rootdelay= is a fixed sleep first), so the image's kdump
            # initrd carries one (images/debian/kdump-initramfs/): reset if the dump target is not mounted in time.
            seconds = int(args[0]) if args and args[0].isdigit() else 0
            if seconds <= 0:
                raise ValueError(f"disk_timeout {rest}: must be a positive number of seconds")
            out.cmdline_append.append(f"{DISK_TIMEOUT_ARG}={seconds}")
            out.lines.append((line, f"{DISK_TIMEOUT_ARG}={seconds} (the lab's initramfs timer: reset when the dump "
                                    f"target is not mounted after {seconds} s)"))
        else:
            raise ValueError(f"kdump.conf key {key!r} has no kdump-tools equivalent in the lab")
    if blacklist:
        out.cmdline_append.insert(0, "modprobe.blacklist=" + ",".join(blacklist))
    return out


# kdump-utils (RHEL 9 and later) refuses these keys as deprecated and does not arm kdump; kexec-tools
# on RHEL 6-8 read them.
KDUMP_UTILS_DEPRECATED = ("blacklist", "options", "disk_timeout")


def lint(conf: str | None, flavour: str) -> list[str]:
    """What the guest's tooling will make of a kdump.conf, said before the run."""
    if conf is None:
        return []
    keys = [line.split()[0] for line in conf.splitlines() if line.split() and not line.lstrip().startswith("#")]
    if flavour == "dracut-kdump":
        old = [k for k in keys if k in KDUMP_UTILS_DEPRECATED]
        if old:
            return [f"kdump.conf uses {', '.join(dict.fromkeys(old))}: today's kdump-utils rejects them as deprecated "
                    "and leaves kdump unarmed, so expect \"kdump not armed\" (kexec-tools on RHEL 6-8 accepts them); "
                    "the modern form is KDUMP_COMMANDLINE_APPEND=\"rd.driver.blacklist=... ata_piix.prefer_ms_hyperv=0\""]
    return []
