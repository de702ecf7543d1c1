"""The cloud-init NoCloud seed of one run: the scenario's guest knobs as files the guest applies itself."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import jinja2

from . import paths
from . import kdumpconf
from .errors import HostError, InputError
from .guest import OFFLINE_DEBIAN, Guest
from .scenario import Scenario

PASSWORD = "panic-lab"  # serial console only; the guest has no network

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(paths.IMAGES / "cloud-init"),
                          undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


@dataclass(frozen=True)
class Seed:
    user_data: str
    meta_data: str


def kdump_tools_config(scenario: Scenario, standins: dict) -> kdumpconf.KdumpTools:
    conf = kdumpconf.CONFIGS[scenario.kdump_config]
    if conf is None:
        return kdumpconf.KdumpTools()
    try:
        return kdumpconf.to_kdump_tools(conf, standins)
    except ValueError as exc:
        raise InputError("scenario", f"{scenario.name}: kdump_config {scenario.kdump_config}: {exc}") from None


def cmdline_append(scenario: Scenario, translated: kdumpconf.KdumpTools, guest: Guest = OFFLINE_DEBIAN) -> str:
    """kdump-tools' KDUMP_CMDLINE_APPEND: added to the first kernel's command line (crashkernel= taken out).
    A scenario appends to the release's own default, never replaces it."""
    return " ".join(filter(None, [guest.kdump_append, *translated.cmdline_append, scenario.kdump_cmdline_append]))


def render(scenario: Scenario, run_id: str, standins: dict | None = None, guest: Guest = OFFLINE_DEBIAN,
           translated: kdumpconf.KdumpTools | None = None) -> Seed:
    """`translated`: the scenario's kdump config in kdump-tools' form, when the caller has it already."""
    context = {"scenario": scenario, "run_id": run_id, "password": PASSWORD, "guest": guest,
               "kdump_cmdline_append": "", "kdump_variables": {}, "kdump_conf": None, "runcmd": []}
    if guest.flavour == "kdump-tools":
        translated = translated or kdump_tools_config(scenario, standins or {})
        context["kdump_cmdline_append"] = cmdline_append(scenario, translated, guest)
        context["kdump_variables"] = translated.variables
        if guest.crashkernel == "grub-reboot":
            context["runcmd"] = [["update-grub"]]
    else:
        context["kdump_conf"] = kdumpconf.CONFIGS[scenario.kdump_config]   # None: the image's own file
        context["runcmd"] = _dracut_runcmd(scenario)
    return Seed(_env.get_template("user-data.j2").render(context), _env.get_template("meta-data.j2").render(context))


def _dracut_runcmd(scenario: Scenario) -> list[list[str]]:
    crashkernel = (["--remove-args=crashkernel"] if scenario.crashkernel == "0"
                   else [f"--args=crashkernel={scenario.crashkernel}"])
    commands = [["grubby", "--update-kernel=ALL", *crashkernel],
                ["systemctl", "enable" if scenario.kdump else "disable", "kdump.service"]]
    if scenario.kdump_cmdline_append:
        # Appended to the distribution's own KDUMP_COMMANDLINE_APPEND in /etc/sysconfig/kdump, never replacing it.
        commands.append(["sed", "-i", f's|^KDUMP_COMMANDLINE_APPEND="\\(.*\\)"|KDUMP_COMMANDLINE_APPEND="\\1 '
                                      f'{scenario.kdump_cmdline_append}"|', "/etc/sysconfig/kdump"])
    return commands


def write_iso(seed: Seed, directory: Path) -> Path:
    tool = shutil.which("genisoimage") or shutil.which("mkisofs")
    if not tool:
        raise HostError("domain", "genisoimage is not installed (make setup)")
    src = directory / "cidata"
    src.mkdir()
    paths.private_file(src / "user-data", seed.user_data)
    paths.private_file(src / "meta-data", seed.meta_data)
    iso = directory / "seed.iso"
    paths.private_file(iso, "")   # genisoimage keeps an existing file's mode: 0600 from the first byte
    done = subprocess.run([tool, "-quiet", "-output", str(iso), "-volid", "cidata", "-joliet", "-rock",
                           str(src / "user-data"), str(src / "meta-data")], capture_output=True, text=True)
    if done.returncode != 0:
        raise HostError("domain", f"genisoimage failed: {done.stderr.strip()[:200]}")
    return iso
