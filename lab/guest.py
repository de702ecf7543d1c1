"""The guest model: what kind of guest an image holds, as far as the lab must know it to arm kdump and
set crashkernel= (its kdump tooling, how its kernel command line is set, what it lacks)."""
from __future__ import annotations

from dataclasses import dataclass

# kdump-tools' own default KDUMP_CMDLINE_APPEND in Debian 12 (1.8.x), and in most Debian-family images.
KDUMP_TOOLS_APPEND = "reset_devices systemd.unit=kdump-tools-dump.service nr_cpus=1 irqpoll usbcore.nousb"


@dataclass(frozen=True)
class Guest:
    flavour: str = "kdump-tools"        # kdump-tools (Debian, Ubuntu) | dracut-kdump (RHEL family)
    crashkernel: str = "cmdline"        # cmdline: direct kernel boot; grub-reboot: the guest's grub, one reboot
    packages: tuple[str, ...] = ()      # what cloud-init installs first (a published image lacks them)
    kdump_append: str = KDUMP_TOOLS_APPEND   # kdump-tools' default capture-kernel additions in this release
    getty_logs_in: bool = False         # the serial getty logs root in by itself (the lab's own images)

    @property
    def kdump_service(self) -> str:
        return "kdump-tools.service" if self.flavour == "kdump-tools" else "kdump.service"

    @property
    def kdump_status(self) -> str:
        return "kdump-config status" if self.flavour == "kdump-tools" else "kdumpctl status"


OFFLINE_DEBIAN = Guest(getty_logs_in=True)   # the default image the lab builds (debian12 in images/releases.toml)
