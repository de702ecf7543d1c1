"""`lab run --dry-run`: everything a run would use, rendered and written to a folder for reading, with
nothing created on the host: no domain, no overlay, no seed image, no libvirt connection."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import accel as accel_mod
from . import domain, host, image, paths, qemu_user, seed
from .errors import HostError
from .scenario import Scenario

CRASHKERNEL_ARG = re.compile(r"\s*\bcrashkernel=\S+")


@dataclass(frozen=True)
class Piece:
    what: str
    path: Path


def plan(scenario: Scenario, folder: Path) -> list[Piece]:
    """Render one scenario's domain XML, seed, kernel command lines and kdump config into `folder`."""
    img = image.cached(scenario.image, scenario.kernel)
    note = ""
    if img is None:   # not built or pulled yet: the paths it will have
        img = image.planned(scenario.image, scenario.kernel)
        note = f"# {scenario.image} is not in the cache yet: `lab run` builds or pulls it first\n"
    accel = accel_mod.unprobed()
    run_id = f"{scenario.name}-dry-run"
    scratch = paths.work_dir() / run_id   # where a run would put them; nothing is made there
    xml, rendered, kdump = domain.render(scenario, img, accel, run_id, scratch / "disk.qcow2", scratch / "seed.iso",
                                         _qemu_label())
    folder.mkdir(parents=True, exist_ok=True)
    pieces = [Piece("domain XML", folder / "domain.xml"), Piece("NoCloud user-data", folder / "user-data"),
              Piece("NoCloud meta-data", folder / "meta-data"), Piece("kernel command lines", folder / "cmdline.txt"),
              Piece("kdump config", folder / "kdump.txt")]
    pieces[0].path.write_text(xml)
    paths.private_file(pieces[1].path, rendered.user_data)   # it holds the guest's root password
    pieces[2].path.write_text(rendered.meta_data)
    first = scenario.cmdline() if not img.boots_from_disk else "(from the image's own grub config, crashkernel= added by the seed)"
    kernel = scenario.kernel or (f"the image's own ({img.kernel_version})" if img.kernel_version else "the image's own")
    lines = [note + f"accelerator: {accel.probe}",
             f"image: {img.name} ({img.key}), kernel: {kernel}",
             f"first kernel: {first}"]
    if scenario.kdump and img.guest.flavour == "kdump-tools":
        capture = CRASHKERNEL_ARG.sub("", first) + " " + seed.cmdline_append(scenario, kdump, img.guest)
        lines.append(f"capture kernel (kdump-tools: the first kernel's, crashkernel= out, KDUMP_CMDLINE_APPEND in): {capture}")
    elif scenario.kdump:
        lines.append("capture kernel: as the guest's kdumpctl builds it from its kdump.conf (see user-data)")
    else:
        lines.append("capture kernel: none (kdump off)")
    pieces[3].path.write_text("\n".join(lines) + "\n")
    table = [f"kdump config {scenario.kdump_config!r} for {img.guest.flavour}:"]
    table += [f"  {conf:<60} -> {tools}" for conf, tools in kdump.lines] or ["  (the distribution's own, unchanged)"]
    pieces[4].path.write_text("\n".join(table) + "\n")
    return pieces


def _qemu_label() -> str | None:
    """The DAC label a run would give its domain; a dry run renders even where that user is missing."""
    try:
        return qemu_user.label_for_uri(host.uri())
    except HostError:
        return None
