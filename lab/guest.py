"""The guest model: what kind of guest an image holds, as far as the lab must know it to arm kdump and
set crashkernel= (its kdump tooling, how its kernel command line is set, what it lacks)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Guest:
    flavour: str = "kdump-tools"        # kdump-tools (Debian, Ubuntu) | dracut-kdump (RHEL family)
    crashkernel: str = "cmdline"        # cmdline: direct kernel boot; grub-reboot: the guest's grub, one reboot
    packages: tuple[str, ...] = ()      # what cloud-init installs first (a published image lacks them)

    @property
    def kdump_service(self) -> str:
        return "kdump-tools.service" if self.flavour == "kdump-tools" else "kdump.service"

    @property
    def kdump_status(self) -> str:
        return "kdump-config status" if self.flavour == "kdump-tools" else "kdumpctl status"


OFFLINE_DEBIAN = Guest()   # the image the lab builds (images/debian12)
