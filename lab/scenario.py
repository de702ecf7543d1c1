"""Scenarios: what the guest is asked to do, as plain data, validated before anything is created."""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass

from . import hosts_option
from . import image as image_mod
from .profiles import PROFILES
from .errors import InputError, shown, shown_path
from .kdumpconf import CONFIGS

VERDICTS = ("reboot", "dump", "hang", "unknown")
CRASHKERNEL = re.compile(r"(\d+)([MG])")   # matched whole (fullmatch): "$" would let a trailing newline in
FAULTS = ("", "stale-vmbus")
KDUMP_CONFIGS = tuple(CONFIGS)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    image: str = "debian12"
    profile: str = "default"
    kernel_panic: int = 0            # sysctl kernel.panic in the guest
    kdump: bool = False              # kdump-tools armed (USE_KDUMP=1)
    kdump_config: str = "default"    # a name in lab/kdumpconf.py CONFIGS; "default" is the distribution's
    kdump_cmdline_append: str = ""   # added to kdump-tools' capture kernel command line
    fault: str = ""                  # "stale-vmbus": the paravirtual disk stops answering at the panic
    hv_crash: bool = False           # Hyper-V crash MSRs (<panic model='hyperv'/>): the host may stop the VM
    crashkernel: str = "256M"
    memory_mib: int = 1024
    vcpus: int = 1
    expect: str | None = None        # expected verdict: the run is then a pass/fail check
    stall_seconds: float = 120.0     # no new stage for this long after the panic = stuck
    boot_seconds: float = 180.0      # each boot, from banner to login prompt
    extra_cmdline: str = ""
    trigger: str = "sysrq"           # sysrq (echo c) | nmi (libvirt inject-nmi, unknown_nmi_panic=1) | cpu:N (taskset)
    repeat: int = 1                  # runs of this scenario; more than one gives rates
    wait_for_login: bool = False     # follow a reset guest to its next login (the verdict is certain before)
    keep: bool = False               # leave the guest as it is after the verdict (lab ps / attach / stop)
    kernel: str = ""                 # "" the image's own; SUITE/PACKAGE from Debian's archive; or a .deb's path

    def trigger_cpu(self) -> int | None:
        return int(self.trigger[4:]) if self.trigger.startswith("cpu:") else None

    def cmdline(self) -> str:
        parts = ["root=LABEL=labroot", "rw", "console=ttyS0,115200"]
        if self.crashkernel and self.crashkernel != "0":
            parts.append(f"crashkernel={self.crashkernel}")
        if self.extra_cmdline:
            parts.append(self.extra_cmdline)
        return " ".join(parts)

    def crashkernel_mib(self) -> int:
        m = CRASHKERNEL.fullmatch(self.crashkernel)
        if not m:
            return 0
        return int(m.group(1)) * (1024 if m.group(2) == "G" else 1)


BASE_SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("panic-reboot", "kdump off, kernel.panic=5: the panic must reset the guest",
             kernel_panic=5, kdump=False, expect="reboot"),
    Scenario("panic-hang", "kdump off, kernel.panic=0: the Azure images' default, the guest stays down",
             kernel_panic=0, kdump=False, expect="hang"),
    Scenario("kdump", "kdump-tools armed: the capture kernel saves a vmcore, then the guest reboots",
             kernel_panic=0, kdump=True, expect="dump"),
    # Hyper-V Gen1 model (lab/profiles.py PROFILES["hyperv-gen1"]): the seed's capture-kernel hang and its fix.
    Scenario("hyperv-kdump-default", "Gen1, kdump armed as the distribution ships it, VMBus storage stale after "
             "the panic: the capture kernel waits for its disk forever",
             profile="hyperv-gen1", kdump=True, fault="stale-vmbus", expect="hang"),
    Scenario("hyperv-kdump-kb2858695", "Gen1, stale VMBus storage, kdump configured per KB2858695: the capture "
             "kernel dumps through IDE, then the guest reboots",
             profile="hyperv-gen1", kdump=True, kdump_config="kb2858695", fault="stale-vmbus", expect="dump"),
    Scenario("hyperv-kdump-timeout", "Gen1, stale VMBus storage, kdump as shipped plus disk_timeout 30: the "
             "capture kernel gives up on its disk and resets, so the guest reboots without a dump",
             profile="hyperv-gen1", kdump=True, kdump_config="disk-timeout", fault="stale-vmbus", expect="reboot"),
    Scenario("hyperv-kdump-hvcrash", "as hyperv-kdump-kb2858695, with the Hyper-V crash-MSR device: on a real "
             "Hyper-V guest the host may stop the VM before kexec",
             profile="hyperv-gen1", kdump=True, kdump_config="kb2858695", fault="stale-vmbus", hv_crash=True,
             expect="dump"),
    Scenario("hyperv-panic-hang", "Gen1, kdump off, kernel.panic=0 (the images' default): the VM stays down",
             profile="hyperv-gen1", kernel_panic=0, kdump=False, expect="hang"),
    Scenario("hyperv-panic-reboot", "Gen1, kdump off, kernel.panic=5: the VM resets",
             profile="hyperv-gen1", kernel_panic=5, kdump=False, expect="reboot"),
    Scenario("hyperv-kdump-not-armed", "Gen1, kdump asked for but no crashkernel reservation: the report says "
             "kdump is not armed, and kernel.panic=0 then means a hang",
             profile="hyperv-gen1", kdump=True, crashkernel="0", expect="hang"),
)}


TRIGGER = re.compile(r"sysrq|nmi|cpu:\d{1,3}")          # all three matched whole (fullmatch)
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
DEFAULT_RUN = ("panic-reboot", "panic-hang", "kdump")   # `lab run` with no names
MAX_SECONDS = 3600.0   # stall_seconds, boot_seconds: a stage that takes longer than an hour is stuck
# Runs in one invocation, repeats included: a matrix multiplies, and a few lines of TOML could
# otherwise ask for a million VM boots (and take minutes and gigabytes just to be listed).
MAX_RUNS = 1000
MAX_REPEAT = 100


def _coerce(name: str, current: object, raw: str) -> object:
    if isinstance(current, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise InputError("scenario", f"{name}={raw!r}: expected true or false")
    try:
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
    except ValueError:
        raise InputError("scenario", f"{name}={raw!r}: expected a number") from None
    return raw


def with_overrides(scenario: Scenario, overrides: list[str]) -> Scenario:
    """Apply `key=value` strings from the command line, then validate."""
    changes: dict[str, object] = {}
    fields = {f.name: f for f in dataclasses.fields(Scenario)}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_").replace(".", "_")
        if not sep:
            raise InputError("scenario", f"{item!r}: expected key=value")
        if key not in fields or key == "name":
            raise InputError("scenario", f"unknown key {key!r} (known: {', '.join(k for k in fields if k != 'name')})")
        changes[key] = _coerce(key, getattr(scenario, key), raw)
    result = dataclasses.replace(scenario, **changes)
    validate(result)
    return result


def validate(s: Scenario) -> None:
    def bad(msg: str) -> None:
        raise InputError("scenario", f"{s.name if NAME.fullmatch(s.name) else shown(s.name)}: {msg}")
    if not NAME.fullmatch(s.name):
        bad("a scenario name is lowercase letters, digits and dashes (it names the run's folder and domain)")
    if s.image not in image_mod.RECIPES and s.image not in image_mod.known():   # the catalog only when needed
        bad(f"unknown image {s.image!r} (known: {', '.join(image_mod.known())})")
    if s.kernel and s.image not in image_mod.RECIPES:
        bad(f"kernel needs an image the lab builds ({', '.join(image_mod.RECIPES)}); {s.image} brings its own")
    elif (wrong := image_mod.check_kernel(s.kernel)):
        bad(wrong)
    if s.extra_cmdline and s.image not in image_mod.RECIPES:
        bad(f"extra_cmdline needs a direct kernel boot, and image {s.image} boots through its own bootloader")
    if s.profile not in PROFILES:
        bad(f"unknown profile {s.profile!r} (known: {', '.join(PROFILES)})")
    if not -1 <= s.kernel_panic <= 3600:
        bad(f"kernel_panic={s.kernel_panic} is outside -1..3600")
    if s.crashkernel != "0" and not CRASHKERNEL.fullmatch(s.crashkernel):
        bad(f"crashkernel={s.crashkernel!r}: expected a size like 256M, or 0")
    if not 256 <= s.memory_mib <= 16384:
        bad(f"memory_mib={s.memory_mib} is outside 256..16384")
    if s.crashkernel_mib() and s.memory_mib - s.crashkernel_mib() < 384:
        bad(f"memory_mib={s.memory_mib} leaves less than 384 MiB beside crashkernel={s.crashkernel}")
    if not 1 <= s.vcpus <= (os.cpu_count() or 1):
        bad(f"vcpus={s.vcpus} is outside 1..{os.cpu_count()} (the host's cores)")
    if s.fault not in FAULTS:
        bad(f"unknown fault {s.fault!r} (known: stale-vmbus)")
    if s.fault and s.profile != "hyperv-gen1":
        bad(f"fault {s.fault} needs profile hyperv-gen1 (it silences that profile's VMBus stand-in)")
    if s.hv_crash and s.profile != "hyperv-gen1":
        bad("hv_crash needs profile hyperv-gen1")
    if s.kdump_config not in KDUMP_CONFIGS:
        bad(f"unknown kdump_config {s.kdump_config!r} (known: {', '.join(KDUMP_CONFIGS)})")
    if s.expect is not None and s.expect not in VERDICTS:
        bad(f"expect={s.expect!r} is not one of {', '.join(VERDICTS)}")
    for key in ("stall_seconds", "boot_seconds"):
        seconds = getattr(s, key)
        if not math.isfinite(seconds):   # nan compares false with everything, so it would pass the checks below
            bad(f"{key}={seconds}: expected a finite number of seconds")
        if seconds <= 0:
            bad(f"{key} must be positive")
        if seconds > MAX_SECONDS:
            bad(f"{key}={seconds:g} is above {MAX_SECONDS:g} (an hour)")
    if not TRIGGER.fullmatch(s.trigger):
        bad(f"trigger={s.trigger!r}: expected sysrq, nmi or cpu:N")
    elif s.trigger_cpu() is not None and s.trigger_cpu() >= s.vcpus:
        bad(f"trigger={s.trigger}: the guest has {s.vcpus} vCPU(s), numbered from 0")
    if not 1 <= s.repeat <= MAX_REPEAT:
        bad(f"repeat={s.repeat} is outside 1..{MAX_REPEAT}")
    if s.keep and s.repeat > 1:   # every repeat would be kept, each spinning a host core until stopped
        bad(f"keep with repeat={s.repeat} would keep {s.repeat} guests of one scenario; keep one (repeat=1), "
            "or repeat without keep")
    for key in ("kdump_cmdline_append", "extra_cmdline"):
        if re.search(r"[\"'`$\\;|&<>\x00-\x1f\x7f]", getattr(s, key)):   # control characters include newlines
            bad(f"{key} may not carry quotes, newlines or shell metacharacters")


def resolve(name: str) -> Scenario:
    try:
        return BASE_SCENARIOS[name]
    except KeyError:
        raise InputError("scenario", f"unknown scenario {name!r} (known: {', '.join(BASE_SCENARIOS)})") from None


# -- scenario files ---------------------------------------------------------------------------------
# A file holds [[scenario]] tables (each may start from a `base` scenario) and an optional [matrix] of
# axes, key = [values, ...], that every scenario of the file is expanded over; an optional [hosts] table
# names the libvirt hosts its runs go to (uris = [...], lab/hosts_option.py).

FILE_KEYS = {f.name for f in dataclasses.fields(Scenario)} | {"base"}


def _read_file(path: str) -> dict:
    """A scenario file's TOML, parsed; errors name the file."""
    import tomllib
    from pathlib import Path

    file = shown_path(path)
    try:
        return tomllib.loads(Path(path).read_bytes().decode("utf-8"))   # TOML is UTF-8, whatever the locale
    except OSError as exc:
        raise InputError("scenario", f"cannot read {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError("scenario", f"{file}: not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}): "
                                     "a scenario file is TOML") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError("scenario", f"{file}: malformed TOML: {exc}") from None
    except RecursionError:   # tomllib recurses once per nested array or inline table
        raise InputError("scenario", f"{file}: malformed TOML: arrays or tables nested too deeply") from None


def load_file_hosts(path: str) -> list[str]:
    """The libvirt URIs a scenario file's [hosts] table names (uris = [...]), checked; [] without one."""
    data = _read_file(path)
    return hosts_option.file_hosts(data["hosts"], shown_path(path)) if "hosts" in data else []


def load_file(path: str) -> list[Scenario]:
    """The runs a TOML scenario file asks for, validated; errors name the file, the key and the reason.
    Its [hosts] table is checked here too; load_file_hosts() returns it."""
    import itertools

    file = shown_path(path)

    def bad(where: str, msg: str) -> InputError:
        return InputError("scenario", f"{file}: {where}{msg}")
    data = _read_file(path)
    extra = sorted(set(data) - {"scenario", "matrix", "hosts"})
    if extra:
        raise bad("", f"unknown top-level key {shown(extra[0])} (expected [[scenario]], [matrix] and [hosts])")
    if "hosts" in data:
        hosts_option.file_hosts(data["hosts"], file)
    tables = data.get("scenario", [])
    tables = [tables] if isinstance(tables, dict) else tables
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise bad("", "no [[scenario]] table")
    matrix = data.get("matrix", {})
    if not isinstance(matrix, dict):
        raise bad("[matrix]: ", "expected a table of key = [values]")
    for key, values in matrix.items():
        if key not in FILE_KEYS - {"base", "name", "description"}:
            raise bad("[matrix]: ", f"unknown key {shown(key)}")
        if not isinstance(values, list) or not values:
            raise bad("[matrix]: ", f"{key} must be a non-empty list")
    for n, table in enumerate(tables, start=1):
        for key in ("base", "name"):   # both are looked up or joined before the values are typed
            if key in table and not isinstance(table[key], str):
                raise bad(f"[[scenario]] #{n}: ", f"{key} = {shown(table[key])}: expected str")
    # Counted from the lengths alone, before anything is expanded.
    asked = sum(_runs_asked(table, matrix) for table in tables)
    if asked > MAX_RUNS:
        combos = math.prod(len(values) for values in matrix.values())
        raise bad("", f"expands to {asked} runs ({len(tables)} scenario(s) x {combos} matrix combination(s), "
                      f"repeats included); the limit is {MAX_RUNS}")
    runs: list[Scenario] = []
    made_by: dict[str, str] = {}   # run name -> the table and matrix values it came from
    for n, table in enumerate(tables, start=1):
        where = f"[[scenario]] #{n}: "
        unknown = sorted(set(table) - FILE_KEYS)
        if unknown:
            raise bad(where, f"unknown key {shown(unknown[0])}")
        try:
            start = resolve(table["base"]) if "base" in table else None
        except InputError as exc:
            raise bad(where, exc.message) from None
        if start is None and "name" not in table:
            raise bad(where, "needs a name (or a base scenario to start from)")
        values = {k: v for k, v in table.items() if k != "base"}
        values.setdefault("description", start.description if start else f"from {path}")
        base = start or Scenario(name=values["name"], description=values["description"])
        axes = list(matrix.items())
        for combo in itertools.product(*[v for _, v in axes]) if axes else [()]:
            chosen = dict(values)
            suffix = []
            for (key, _), value in zip(axes, combo):
                chosen[key] = value
                suffix.append(f"{key.replace('_', '-')}-{_slug(value)}")
            chosen["name"] = "-".join([values.get("name", base.name)] + suffix)[:64].rstrip("-")
            scenario = _typed(base, chosen, lambda msg: bad(where, msg))
            # The name is the run's identity in summary.json and junit.xml: two runs under one name merge.
            source = f"[[scenario]] #{n}" + "".join(f", {key} = {shown(v)}" for (key, _), v in zip(axes, combo))
            if scenario.name in made_by:
                raise bad("", f"two runs would be named {scenario.name} ({made_by[scenario.name]}; {source}): a name "
                              "is cut to 64 characters and its values to letters, digits and dashes, so give "
                              "shorter or more distinct names or values")
            made_by[scenario.name] = source
            runs.append(scenario)
    return runs


def check_total(scenarios: list[Scenario], sources: list[str] | None = None) -> None:
    """What one `lab run` asks for as a whole, checked before anything is created: at most MAX_RUNS runs,
    repeats included, and one scenario per name (summary.json and junit.xml group runs by name). The
    same scenario given twice (`lab run kdump kdump`) just runs twice. sources[i], when given, says
    where scenarios[i] came from (a file, or a built-in name) for the message."""
    total = sum(s.repeat for s in scenarios)
    if total > MAX_RUNS:
        raise InputError("scenario", f"{len(scenarios)} scenario(s) add up to {total} runs, repeats included; "
                                     f"the limit is {MAX_RUNS} per invocation")
    def origin(k: int) -> str:
        return shown_path(sources[k]) if sources else f"scenario #{k + 1} of the list"
    first: dict[str, int] = {}
    for i, s in enumerate(scenarios):
        j = first.setdefault(s.name, i)
        if scenarios[j] != s:
            raise InputError("scenario", f"two different scenarios are named {s.name} (from {origin(j)} and from "
                                         f"{origin(i)}): their runs would be merged under that name")


def _runs_asked(table: dict, matrix: dict) -> int:
    """The runs one [[scenario]] table expands to. A repeat that is not a valid one counts as 1 here:
    it is refused later, with its key and value."""
    def repeat(value) -> int:
        valid = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_REPEAT
        return value if valid else 1
    others = math.prod(len(values) for key, values in matrix.items() if key != "repeat")
    if "repeat" in matrix:
        return others * sum(repeat(v) for v in matrix["repeat"])
    base = table.get("base")
    start = BASE_SCENARIOS[base].repeat if isinstance(base, str) and base in BASE_SCENARIOS else 1
    return others * repeat(table.get("repeat", start))


def _slug(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return re.sub(r"[^a-z0-9]+", "-", str(value).lower()).strip("-") or "x"


def _typed(base: Scenario, values: dict, bad) -> Scenario:
    fields = {f.name: f for f in dataclasses.fields(Scenario)}
    changes = {}
    for key, value in values.items():
        current = getattr(base, key)
        if key == "expect":
            ok = value is None or isinstance(value, str)
        elif isinstance(current, bool):
            ok = isinstance(value, bool)
        elif isinstance(current, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = _as_float(value) if ok else value
        elif isinstance(current, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            want = fields[key].type if isinstance(fields[key].type, str) else type(current).__name__
            raise bad(f"{key} = {shown(value)}: expected {want}")
        changes[key] = value
    scenario = dataclasses.replace(base, **changes)
    try:
        validate(scenario)
    except InputError as exc:
        raise bad(exc.message) from None
    return scenario


def _as_float(number: int | float) -> float:
    try:
        return float(number)
    except OverflowError:   # a TOML integer has no size limit in tomllib: too big is infinite, refused by validate
        return math.inf if number > 0 else -math.inf
