"""Stage 6, report: report.json for each run, and the verdict table for a set of runs."""
from __future__ import annotations

import dataclasses
import json
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from . import paths
from .errors import HostError
from .hosts_option import is_remote
from .verdict import Verdict
from .vocabulary import GuestEvent, HostEvent, Stage

if TYPE_CHECKING:   # types only
    from .scenario import Scenario

HYPERV_LINE = "Microsoft Hyper-V"
# 2: adds console.took_over_from_another_viewer, timings.steps and the stall event's deadline_s;
# every key of version 1 is still there, with the same meaning.
# 3: adds verdict_t and decided_by (when and why the watch ended: early verdicts, lab/settle.py); vmcore
# is now the host's check of the dump (lab/vmcore.py): check, count, format, size, filesystem, the panic
# lines compared. The guest's own count (version 2's vmcore) is vmcore.in_guest, with wait_for_login only.
# kept (--keep): the guest left running and the commands that reach it. confidence: certain | likely
# (lab/verdict.py Verdict.confidence; certain when a settle rule decided), null for unknown.
# 4: every shape carries host: {"uri"} (null when no host took the run); a run's host.machine is the
# remote host's name and host.kernel null there; host.volumes_left names what a dropped host kept.
REPORT_VERSION = 4


def _hyperv(accel, preflight: dict, transcript) -> dict:
    seen = [e.text for e in transcript.reader.events if e.kind == GuestEvent.HYPERVISOR]
    guest_saw = seen[0] if seen else None
    honoured = bool(guest_saw and HYPERV_LINE in guest_saw)
    if honoured:
        note = "the guest detected Hyper-V: the enlightenments are in effect"
    elif accel.name == "tcg":
        note = ("requested, but QEMU ignores Hyper-V enlightenments under TCG: the guest printed no "
                f"'Hypervisor detected: {HYPERV_LINE}' line (systemd-detect-virt says {preflight.get('virt') or '?'}, "
                f"CPU vendor {preflight.get('cpu_vendor') or '?'})")
    else:
        note = f"requested, but the guest printed no 'Hypervisor detected: {HYPERV_LINE}' line"
    return {"requested": [n for n, _ in accel.hyperv], "rejected_by_host": list(accel.hyperv_rejected),
            "guest_saw": guest_saw, "in_effect": honoured, "note": note}


def _armed(scenario, preflight: dict, transcript) -> dict:
    if not preflight:
        return {"armed": None, "why": "pre-flight did not run"}
    loaded = preflight.get("kexec_crash_loaded") == "1"
    why = None
    if not loaded and not scenario.kdump:
        why = "the scenario turns kdump off (USE_KDUMP=0)"
    elif not loaded:
        complaints = [e.text for e in transcript.reader.events if e.kind == GuestEvent.KDUMP_NOT_ARMED]
        complaints += [preflight["kdump_complaint"]] if preflight.get("kdump_complaint") else []
        if preflight.get("kexec_crash_size") in ("0", None, ""):
            why = "no crashkernel reservation (kexec_crash_size is 0)"
        elif complaints:
            why = f"the kdump tooling refused: {complaints[0]}"
        else:
            why = f"kdump state: {preflight.get('kdump_state') or 'unknown'}"
    panic = preflight.get("kernel.panic")
    follows = None
    if not loaded and panic is not None:
        follows = (f"a panic resets the guest after {panic} s (kernel.panic={panic})" if panic not in ("0", "")
                   else "a panic halts the guest for good (kernel.panic=0): a hang")
    return {"armed": loaded, "why": why, "then": follows, "kdump_state": preflight.get("kdump_state"),
            "crashkernel": preflight.get("crashkernel_reservation")}


def _hv_crash(scenario, transcript) -> dict | None:
    if not scenario.hv_crash:
        return None
    crashed = [e.text for e in transcript.host_events if e.kind == HostEvent.LIBVIRT_CRASHED]
    return {"enabled": True, "host_stopped_vm": bool(crashed), "evidence": crashed[:1],
            "note": ("the host reported a guest crash through the Hyper-V crash MSRs" if crashed else
                     "no crash notification reached the host: the guest wrote no Hyper-V crash MSRs (under TCG "
                     "it does not see Hyper-V at all), so kexec ran as usual")}


def _kernel_booted(transcript) -> str | None:
    """The release in the first kernel's banner: what really booted (a derived image's kernel included)."""
    for e in transcript.reader.events:
        if e.kind == GuestEvent.KERNEL_BANNER and (m := re.search(r"Linux version (\S+)", e.text)):
            return m.group(1)
    return None


def _profile(profile: dict, transcript) -> dict:
    quirk = [{"line": e.line, "text": e.text} for e in transcript.reader.events if e.kind == GuestEvent.ATA_IGNORED]
    return {**profile, "ata_piix_quirk": quirk}


@dataclass(frozen=True)
class RunReport:
    """One run's report, as report.json carries it (REPORT_VERSION says what changed in its keys).
    A run the user interrupted has the shape of InterruptedReport, one that ended before it had a
    guest (a host error while preparing) the shape of ErrorReport."""
    run_id: str
    scenario: Scenario
    verdict: Verdict
    cut_short: dict | None          # {"by": user|host|lab, "why"}: then there is no guest verdict
    kdump: dict
    vmcore: dict | None
    preflight: dict
    profile: dict
    disk_check: dict | None
    hv_crash: dict | None
    accel: dict
    hyperv: dict
    image: dict
    host: dict
    console: dict
    host_events: list[dict]
    timings: dict
    artifacts: dict
    warnings: list[str]
    snapshot: dict | None
    finished: str
    decided: dict = dataclasses.field(default_factory=dict)   # verdict_t, and the rule that ended the watch
    kept: dict | None = None                                  # --keep: the guest left running, and how to reach it

    @property
    def outcome(self) -> str | None:
        # A run the host or the lab cut short has no guest verdict: the console stopped for reasons of ours.
        return None if self.cut_short else self.verdict.verdict

    def _confidence(self) -> str | None:
        if self.outcome is None or self.outcome == "unknown":
            return None
        settled = (self.decided.get("by") or {}).get("kind") == "settled"
        return "certain" if settled else self.verdict.confidence   # a settle rule used the guest's pre-flight

    def to_json(self) -> dict:
        v, expected = self.verdict, self.scenario.expect
        diagnosis = (f"{self.cut_short['by']} error, run cut short: {self.cut_short['why']}" if self.cut_short
                     else v.diagnosis)
        return {
            "report_version": REPORT_VERSION,
            "run_id": self.run_id, "scenario": dataclasses.asdict(self.scenario), "verdict": self.outcome,
            "stage": v.stage, "diagnosis": diagnosis, "rule": v.rule, "confidence": self._confidence(),
            "verdict_t": self.decided.get("verdict_t"), "decided_by": self.decided.get("by"), "kept": self.kept,
            "stages": [dataclasses.asdict(s) for s in v.stages],
            "evidence": [{"line": e.line, "text": e.text, "event": e.kind, "t": e.t} for e in v.evidence],
            "earlier_cycles": [c.to_json() for c in v.earlier], "earlier_cycles_omitted": v.earlier_omitted,
            "expected": expected, "expectation_met": None if expected is None else self.outcome == expected,
            "kdump": self.kdump, "vmcore": self.vmcore, "preflight": self.preflight, "profile": self.profile,
            "disk_check": self.disk_check, "hv_crash": self.hv_crash, "accel": self.accel, "hyperv": self.hyperv,
            "image": self.image, "host": self.host, "console": self.console, "cut_short": self.cut_short,
            "host_events": self.host_events, "timings": self.timings, "artifacts": self.artifacts,
            "finished": self.finished, "warnings": self.warnings, "snapshot": self.snapshot,
        }


def _host(uri: str | None) -> dict | None:
    """A report's host as far as it is known: RunReport's has the machine too; null when not known."""
    return {"uri": uri} if uri else None


@dataclass(frozen=True)
class InterruptedReport:
    """What is written when the user stops a run: what it was, and that it has no verdict."""
    run_id: str
    scenario: Scenario
    accel: str
    image: str
    cut_short: dict
    host_uri: str | None = dataclasses.field(default=None, kw_only=True)   # the libvirt host it ran on

    def to_json(self) -> dict:
        return {"run_id": self.run_id, "scenario": self.scenario.name, "accel": self.accel, "image": self.image,
                "cut_short": self.cut_short, "verdict": None, "host": _host(self.host_uri)}


@dataclass(frozen=True)
class ErrorReport:
    """What stands for a run that ended before it had a report of its own."""
    scenario: Scenario
    stage: str
    error: str
    host_uri: str | None = dataclasses.field(default=None, kw_only=True)   # the libvirt host it was to run on

    def to_json(self) -> dict:
        return {"scenario": dataclasses.asdict(self.scenario), "error": self.error, "verdict": None,
                "expectation_met": False if self.scenario.expect else None,
                "cut_short": {"by": self.stage, "why": self.error}, "host": _host(self.host_uri)}


def _host_facts(uri: str) -> dict:
    """Which machine ran the guest: a remote URI's host (its kernel is not ours to read), or this one."""
    if is_remote(uri):
        return {"uri": uri, "machine": urlsplit(uri).hostname, "kernel": None}
    return {"uri": uri, "machine": platform.node(), "kernel": platform.release()}


def build(*, uri, run_id, scenario, accel, image, verdict: Verdict, facts, transcript, artifacts: Path,
          timings, wall, cut_short, profile: dict, warnings: list[str], snapshot: dict | None,
          steps: list[dict] = ()) -> RunReport:
    preflight = facts.get("preflight", {})
    in_guest = facts.get("vmcore_in_guest", {})
    vmcore = facts.get("vmcore") or None
    if vmcore is not None and in_guest:
        vmcore = {**vmcore, "in_guest": {"count": int(in_guest.get("vmcore_count", 0) or 0),
                                         "files": [v for k, v in in_guest.items() if k == "vmcore"]}}
    # The definition of overhead: rendering, overlay and seed, define/start, attach, classify.
    # Destroying the guest is reported apart: it is libvirt waiting for QEMU to exit (1.2-1.9 s here).
    lab_seconds = round(sum(v for k, v in timings.items() if k != "teardown"), 3)
    return RunReport(
        run_id=run_id, scenario=scenario, verdict=verdict, cut_short=cut_short,
        kdump=_armed(scenario, preflight, transcript),
        vmcore=vmcore,
        preflight=preflight,
        profile=_profile(profile, transcript),
        disk_check=facts.get("disk_check") or None,
        hv_crash=_hv_crash(scenario, transcript),
        accel=accel.to_json(),
        hyperv=_hyperv(accel, preflight, transcript),
        image={"name": image.name, "key": image.key, "kernel": image.kernel_version or None,
               "kernel_source": image.kernel_source or "the image's own",
               "kernel_booted": _kernel_booted(transcript),
               "boot": "its own bootloader" if image.boots_from_disk else "direct kernel boot",
               "digest_checked_against": image.checked or None},
        host={**_host_facts(uri), **({"volumes_left": facts["volumes_left"]} if facts.get("volumes_left") else {})},
        console=facts.get("console") or {},
        host_events=[{"t": e.t, "kind": e.kind, "text": e.text, **dict(e.groups)} for e in transcript.host_events],
        timings={"wall_seconds": round(wall, 3), "lab_seconds": lab_seconds,
                 "teardown_seconds": timings.get("teardown"), "lab": timings, "steps": list(steps)},
        artifacts={"dir": str(artifacts), "transcript": "console.log", "host_events": "host-events.jsonl",
                   "domain_xml": "domain.xml", "user_data": "user-data"},
        warnings=warnings, snapshot=snapshot,
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        decided=_decided(verdict, transcript), kept=facts.get("kept"),
    )


def _decided(verdict: Verdict, transcript) -> dict:
    """When the watch ended (host seconds, the stages' clock), and why: an early rule (lab/settle.py), a
    stall deadline, the login the scenario waited for, or the console closing."""
    for event in reversed(transcript.host_events):
        if event.kind == HostEvent.SETTLED:
            return {"verdict_t": event.t, "by": {"kind": "settled", "rule": dict(event.groups).get("rule"), "why": event.text}}
        if event.kind in (HostEvent.STALL, HostEvent.CONSOLE_CLOSED):
            return {"verdict_t": event.t, "by": {"kind": event.kind, "why": event.text}}
    login = [s for s in verdict.stages if s.name == Stage.BACK_AT_LOGIN]
    if login:
        return {"verdict_t": login[0].t, "by": {"kind": "back_at_login", "why": login[0].text}}
    return {"verdict_t": None, "by": None}


def run_folder(artifacts: Path) -> Path:
    """The run's own results folder, made now: its transcript goes there."""
    try:
        artifacts.mkdir(parents=True)
    except OSError as exc:
        raise HostError("results", f"cannot write the run folder {artifacts}: {exc.strerror}") from None
    return artifacts


def keep_inputs(artifacts: Path, domain_xml: str, seed) -> None:
    """What the run was given, beside what it produced."""
    try:
        (artifacts / "domain.xml").write_text(domain_xml)
        paths.private_file(artifacts / "user-data", seed.user_data)   # it holds the guest's root password
        (artifacts / "meta-data").write_text(seed.meta_data)
    except OSError as exc:
        raise HostError("results", f"cannot write the run folder {artifacts}: {exc.strerror}") from None


def write(artifacts: Path, report: RunReport | InterruptedReport) -> Path:
    path = artifacts / "report.json"
    tmp = path.with_suffix(".json.tmp")
    try:
        tmp.write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise HostError("report", f"cannot write {path}: {exc.strerror}") from None
    return path
