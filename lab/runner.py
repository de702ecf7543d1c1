"""One run, end to end: image -> domain -> console -> transcript -> verdict -> report.

The guest is panicked for real and followed stage by stage; each stage has its own deadline, nested in
the run's. The domain, its overlay and the console process are gone when run() returns or raises.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import libvirt

from . import accel as accel_mod
from . import domain as domain_mod
from . import host, image as image_mod, kdumpconf, paths, report as report_mod, signals
from . import snapshot as snapshot_mod
from .console import CANCEL, Console, ConsoleClosed
from .deadline import Deadline
from .errors import HostError, LabError
from .scenario import Scenario
from .transcript import Transcript
from .verdict import derive

RUN_SECONDS = 1500.0
ATTACH_SECONDS = 20.0
PREFLIGHT_SECONDS = 300.0
PANIC_SECONDS = 60.0


def stage_deadlines(s: Scenario) -> dict[str, float]:
    """How long each stage may last before the next one must show: no new stage by then = stuck."""
    return {
        "armed": PANIC_SECONDS, "booted": PANIC_SECONDS,            # from the trigger to the panic
        "panicked": s.stall_seconds,
        "capture_kernel_booted": s.stall_seconds,
        "dump_saving": max(s.stall_seconds, 300.0),                 # 40 MB through makedumpfile under TCG
        "dump_saved": s.stall_seconds,
        "reset": s.boot_seconds,
    }


@dataclass
class Timings:
    """Where the run's wall time went: the lab's own work versus waiting on the guest."""
    lab: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.lab[name] = round(self.lab.get(name, 0.0) + time.monotonic() - started, 3)


def new_run_id(scenario: Scenario) -> str:
    return f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def _say(log, run_id: str, t0: float, message: str) -> None:
    print(f"[{time.monotonic() - t0:6.1f}s] {run_id}: {message}", file=log, flush=True)


def run(scenario: Scenario, results: Path, log=sys.stderr, snapshot: bool = False) -> dict:
    """Run one scenario on a real guest; return its report (also written to report.json).

    snapshot=True restores the guest, ready to panic, from a snapshot of its configuration (made by a
    first cold boot if there is none) instead of booting it."""
    t0 = time.monotonic()
    timings = Timings()
    with timings.measure("connect"):
        conn = host.connect()
    try:
        return _run(conn, scenario, results, log, snapshot, t0, timings)
    finally:
        try:
            conn.close()   # libvirt destroys any domain this connection still holds (autodestroy)
        except libvirt.libvirtError:
            pass   # libvirtd went away: nothing left to close


def _run(conn, scenario: Scenario, results: Path, log, snapshot: bool, t0: float, timings: Timings) -> dict:
    run_id = new_run_id(scenario)
    artifacts = results / run_id
    top = Deadline("run", RUN_SECONDS)
    say = lambda msg: _say(log, run_id, t0, msg)  # noqa: E731
    uri = conn.getURI()
    image = image_mod.ensure(scenario.image, log=log)   # a build, when needed, is not lab overhead
    warnings = kdumpconf.lint(kdumpconf.CONFIGS[scenario.kdump_config], image.guest.flavour)
    for warning in warnings:
        say(f"warning: {warning}")
    with timings.measure("accel"):
        # A published image keeps its kernel inside its disk: a probe, if one is needed, boots the offline image's.
        def probe_kernel() -> str:
            return str(image.kernel or image_mod.ensure(image_mod.DEFAULT, log=log).kernel)
        accel = accel_mod.detect(conn, domain_mod.probe_renderer(probe_kernel, domain_mod.run_as_root(conn)))
    snap = None
    turn = contextlib.ExitStack()   # a snapshot's repeats take turns (see snapshot.restore)
    if snapshot:
        snap = snapshot_mod.find(scenario, image.key, accel.name)
        _ensure_snapshot(conn, scenario, image, accel, snap, say)   # a first boot is not lab overhead either
        turn.enter_context(paths.locked(snap.folder))
    with timings.measure("prepare"):
        try:
            dom = _restore(conn, snap, run_id) if snap else domain_mod.prepare(conn, scenario, image, accel, run_id)
        except BaseException:
            turn.close()
            raise
        try:
            artifacts.mkdir(parents=True)
            (artifacts / "domain.xml").write_text(dom.xml)
            paths.private_file(artifacts / "user-data", dom.seed.user_data)   # it holds the guest's root password
            (artifacts / "meta-data").write_text(dom.seed.meta_data)
            transcript = Transcript(artifacts)
        except OSError as exc:
            dom.teardown()
            turn.close()
            raise HostError("results", f"cannot write the run folder {artifacts}: {exc.strerror}") from None
        except BaseException:
            dom.teardown()
            turn.close()
            raise
    lock = threading.Lock()

    def host_event(kind: str, text: str) -> None:
        with lock:
            transcript.annotate(kind, text)

    console = Console(uri, dom.name, transcript, host_lost=lambda: host.lost(conn))
    facts: dict = {"preflight": {}, "vmcore": {}}
    cut_short = None
    shut_down_cleanly = False
    try:
        with timings.measure("start"):
            if not snap:
                dom.start_paused()
            dom.on_event(host_event)
        say(f"created {dom.name} (paused){' from snapshot ' + snap.folder.name if snap else ''}; attaching the console")
        with timings.measure("attach"):
            console.attach(top.child("attach", ATTACH_SECONDS))
        dom.resume()
        transcript.started = time.monotonic()
        if snap:
            host_event("restored", f"domain {dom.name} restored from snapshot {snap.folder.name} and resumed ({accel.name})")
            say(f"restored {dom.name} under {accel.name}; resynchronising the clock, pre-flight checks")
            facts["clock"] = _resync_clock(console, top.child("clock", 30))
        else:
            host_event("resumed", f"domain {dom.name} resumed ({accel.name})")
            say(f"started {dom.name} under {accel.name}; waiting for the login prompt")
            console.login(top.child("boot", scenario.boot_seconds))
            if image.guest.crashkernel == "grub-reboot":
                _reboot_for_crashkernel(console, scenario, top, say, host_event)
            say("logged in; pre-flight checks (waits for cloud-init)")
        facts["preflight"] = console.facts("lab-preflight", top.child("preflight", PREFLIGHT_SECONDS))
        _check_ready(scenario, facts["preflight"])
        armed = facts["preflight"].get("kexec_crash_loaded") == "1"
        say(f"ready: kernel.panic={facts['preflight'].get('kernel.panic')}, kdump "
            f"{'armed' if armed else 'not armed'}; triggering the panic")
        if scenario.trigger == "nmi":
            host_event("trigger", "libvirt inject-nmi (the guest has kernel.unknown_nmi_panic=1)")
            dom.inject_nmi()
        else:
            host_event("trigger", console.trigger(scenario.trigger_cpu()))
        fault = Fault(dom, scenario, host_event)
        reached = _follow(console, dom, scenario, top, say, host_event, fault)
        if reached == "back_at_login":
            console.login(top.child("login-again", 60))
            facts["vmcore"] = console.facts("lab-vmcore", top.child("vmcore-check", 60))
            say(f"vmcore check: {facts['vmcore'].get('vmcore_count', '?')} dump file(s)")
            if dom.overlay is not None and dom.overlay.suffix == ".raw":
                shut_down_cleanly = _poweroff(console, dom, top.child("poweroff", 120), host_event)
    except KeyboardInterrupt as exc:
        cut_short = {"by": "user", "why": f"interrupted ({exc.args[0] if exc.args else 'Ctrl-C'})"}
        raise
    except LabError as exc:
        cut_short = {"by": "host" if isinstance(exc, HostError) else "lab", "why": str(exc)}
        say(f"cut short: {exc}")
    except Exception as exc:   # libvirt, the OS: still this run's host error, never the whole invocation's
        cut_short = {"by": "host", "why": f"host: {type(exc).__name__}: {exc}"}
        say(f"cut short: {cut_short['why']}")
    finally:
        with timings.measure("teardown"), signals.teardown():
            disk_check: dict = {}
            run_each([("console", console.close),
                      ("destroy", dom.destroy),
                      ("disk check", lambda: disk_check.update(dom.check_disk(shut_down_cleanly))),
                      ("scratch", dom.remove_files),
                      ("transcript", transcript.close),
                      ("snapshot lock", turn.close)])
            facts["disk_check"] = disk_check
        if cut_short and cut_short["by"] == "user":
            report_mod.write(artifacts, _partial(scenario, run_id, accel, image, cut_short))
    with timings.measure("classify"):
        verdict = derive(transcript.events())
    facts["console"] = {"took_over_from_another_viewer": console.took_over}
    report = report_mod.build(uri=uri, run_id=run_id, scenario=scenario, accel=accel, image=image, verdict=verdict,
                              facts=facts, transcript=transcript, artifacts=artifacts, timings=timings.lab,
                              wall=time.monotonic() - t0, cut_short=cut_short)
    report["warnings"] = warnings
    report["snapshot"] = {"key": snap.folder.name, "clock": facts.get("clock")} if snap else None
    report_mod.write(artifacts, report)
    say(f"verdict {verdict.verdict} at {verdict.stage}: {verdict.diagnosis}")
    return report


def _ensure_snapshot(conn, scenario: Scenario, image, accel, snap, say) -> None:
    """Boot the configuration once, to ready, and save it; under a lock, so it is made once."""
    paths.owned_cache()
    snapshot_mod.root().mkdir(exist_ok=True)
    with paths.locked(snapshot_mod.root()):
        if snap.ready():
            return
        say(f"no snapshot {snap.folder.name} yet: booting the configuration once to make it")
        name_id = f"snap-{snap.folder.name}"
        dom = domain_mod.prepare(conn, scenario, image, accel, name_id)
        transcript = Transcript(dom.workdir)
        console = Console(conn.getURI(), dom.name, transcript, host_lost=lambda: host.lost(conn))
        top = Deadline("snapshot", RUN_SECONDS)
        try:
            dom.start_paused()
            console.attach(top.child("attach", ATTACH_SECONDS))
            dom.resume()
            console.login(top.child("boot", scenario.boot_seconds))
            if image.guest.crashkernel == "grub-reboot":
                _reboot_for_crashkernel(console, scenario, top, say, transcript.annotate)
            facts = console.facts("lab-preflight", top.child("preflight", PREFLIGHT_SECONDS))
            _check_ready(scenario, facts)
            console.command("sync", top.child("sync", 60))
            console.close()
            snapshot_mod.save(conn, dom.dom, dom.overlay, dom.workdir / "seed.iso", snap, dom.seed.user_data, facts)
            transcript.close()
            shutil.copy(transcript.path, snap.folder / "boot-console.log")   # the snapshot's boot, kept
            say(f"snapshot {snap.folder.name} saved (armed: {facts.get('kexec_crash_loaded') == '1'})")
        finally:
            with signals.teardown():
                run_each([("console", console.close), ("destroy", dom.destroy),
                          ("transcript", transcript.close), ("scratch", dom.remove_files)])


def _reboot_for_crashkernel(console: Console, scenario: Scenario, top: Deadline, say, host_event) -> None:
    """A guest that boots through its own bootloader gets crashkernel= from cloud-init (grubby or
    update-grub) on its first boot; it takes effect after one reboot, which the lab does itself."""
    say("logged in; waiting for cloud-init, then rebooting once so that crashkernel= takes effect")
    # The seed's last runcmd step leaves the marker: then crashkernel= is in the bootloader's config.
    console.command("until [ -e /run/panic-lab-configured ]; do sleep 1; done",
                    top.child("cloud-init", PREFLIGHT_SECONDS))
    rc, out = console.command('s=$(cloud-init status --long 2>&1); r=$?; echo "$s" | tail -n 3; test $r -eq 0',
                              top.child("cloud-init-status", 30))
    if rc != 0:
        say(f"warning: cloud-init reported errors: {' '.join(out.split())[-200:]}")
    console.new_events()   # a login prompt from before the reboot must not be taken for the next one
    host_event("crashkernel_reboot", "the lab reboots the guest once: crashkernel= is in its bootloader's config now")
    console.send("systemctl reboot\r")
    console.login(top.child("boot-after-reboot", scenario.boot_seconds))


def run_each(steps: list[tuple[str, Callable[[], object]]]) -> None:
    """Teardown: every step runs, whatever the ones before it did; the first failure is raised at the
    end, naming its step."""
    failed: HostError | None = None
    for name, step in steps:
        try:
            step()
        except Exception as exc:   # noqa: BLE001 - the next step must run all the same
            failed = failed or HostError("teardown", f"{name}: {exc}")
    if failed:
        raise failed


def _restore(conn, snap, run_id: str):
    from .seed import Seed
    workdir = paths.new_scratch(run_id)
    try:
        libvirt_dom, overlay, xml = snapshot_mod.restore(conn, snap, workdir, run_id)
        name = libvirt_dom.name()
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    seed = Seed((snap.folder / "user-data").read_text(), "")
    return domain_mod.Domain(name, run_id, xml, workdir, conn, seed, overlay=overlay, dom=libvirt_dom, uri=conn.getURI())


def _resync_clock(console: Console, deadline: Deadline) -> dict:
    """After a restore the guest's clock is as old as the snapshot: set it to the host's."""
    _rc, out = console.command("date -u +%s", deadline)
    guest = next((int(w) for w in out.split() if w.isdigit() and len(w) >= 9), None)
    host_now = int(time.time())
    rc, _ = console.command(f"date -u -s @{host_now} >/dev/null", deadline)
    return {"guest_before": guest, "host": host_now, "behind_seconds": None if guest is None else host_now - guest,
            "resynchronised": rc == 0}


def _partial(scenario, run_id, accel, image, cut_short) -> dict:
    return {"run_id": run_id, "scenario": scenario.name, "accel": accel.name, "image": image.name,
            "cut_short": cut_short, "verdict": None}


def _check_ready(scenario: Scenario, pre: dict) -> None:
    if pre.get("kernel.panic") != str(scenario.kernel_panic):
        raise LabError("console", f"guest not ready: kernel.panic is {pre.get('kernel.panic')!r}, "
                                  f"the scenario asked for {scenario.kernel_panic}")
    if scenario.trigger == "nmi" and pre.get("kernel.unknown_nmi_panic") != "1":
        raise LabError("console", "guest not ready: kernel.unknown_nmi_panic is not 1, so an NMI would not panic it")


class Fault:
    """stale-vmbus: from the first kernel's panic until the next reset, the paravirtual disk path gets
    no I/O through (libvirt block I/O tuning at 1 byte/s); the IDE path is untouched. A reset gives the
    VM a fresh VMBus, so the fault is lifted then. The guest is never paused and never touched."""

    def __init__(self, dom, scenario: Scenario, host_event):
        self.dom, self.scenario, self.host_event = dom, scenario, host_event
        self.applied = False
        self.target = domain_mod.STALE_VMBUS_TARGET.get(scenario.profile)

    def on_events(self, events) -> None:
        if self.scenario.fault != "stale-vmbus":
            return
        for event in events:
            if event.kind == "panic" and not self.applied and event.t is not None:
                self.dom.throttle(self.target, 1)
                self.applied = True
                self.host_event("fault_applied", f"stale-vmbus: {self.target} (virtio-blk, the stand-in for "
                                                 f"hv_storvsc) throttled to 1 B/s at the panic; IDE untouched")
            elif event.kind == "libvirt_reset" and self.applied:
                self.dom.throttle(self.target, 0)
                self.applied = False
                self.host_event("fault_lifted", f"stale-vmbus: {self.target} released at the reset (a new VMBus)")


def _poweroff(console: Console, dom, deadline: Deadline, host_event) -> bool:
    """Shut the guest down from inside, so its filesystem can be checked from the host afterwards."""
    console.send("poweroff\r")
    while not deadline.expired():
        try:
            console.pump(min(1.0, deadline.remaining()))
        except ConsoleClosed:
            pass
        if dom.state() in ("shutoff", "absent"):
            host_event("powered_off", "guest shut down cleanly for the disk check")
            return True
    host_event("poweroff_timeout", f"guest did not power off within {deadline.seconds:.0f} s")
    return False


def _follow(console: Console, dom, scenario: Scenario, top: Deadline, say, host_event, fault: Fault) -> str:
    """Read the console through the panic until the guest is back at a login prompt or stops progressing."""
    limits = stage_deadlines(scenario)
    current, since = "armed", time.monotonic()
    follow = top.child("follow", RUN_SECONDS)
    seen_host = len(console.transcript.host_events)
    while True:
        try:
            new = console.pump(min(1.0, max(follow.remaining(), 0.01)))
        except ConsoleClosed:
            host_event("console_closed", f"console closed; domain state {dom.state()}")
            return current
        pending = console.transcript.host_events[seen_host:]
        seen_host += len(pending)
        fault.on_events(new + pending)
        if new:
            verdict = derive(console.transcript.events())
            if verdict.stage != current and verdict.stage != "none":
                current, since = verdict.stage, time.monotonic()
                say(f"stage {current}")
        if current == "back_at_login":
            return current
        limit = limits.get(current, scenario.stall_seconds)
        waited = time.monotonic() - since
        if waited >= limit or follow.expired():
            silent = time.monotonic() - console.transcript.last_output
            host_event("stall", f"no new stage for {waited:.0f} s after {current} "
                                f"(deadline {limit:.0f} s; last console output {silent:.0f} s ago; domain {dom.state()})")
            say(f"no progress past {current} for {waited:.0f} s")
            return current


# -- many runs ---------------------------------------------------------------------------------------
HOST_MIB_PER_GUEST_MIB = 2   # measured under TCG: about 2 GiB of host RAM per 1 GiB guest


def _available_mib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


def default_parallel(scenarios: list[Scenario]) -> int:
    """One run per core, as many as the free memory holds. Measured (make bench, TCG, 2 cores, panic-reboot
    batches): 1 at once 0.61 runs/min, 2 at once 1.08, 3 at once about 1.0 with every run ~60 % slower
    (and nearer its stage deadlines): a run under TCG keeps a core busy, so more runs than cores only queue."""
    need = max(HOST_MIB_PER_GUEST_MIB * s.memory_mib for s in scenarios)
    return max(1, min(os.cpu_count() or 1, _available_mib() // need, sum(s.repeat for s in scenarios)))


class MemoryBudget:
    """Host memory reserved per run before it starts (2x the guest's RAM), released when it ends."""

    def __init__(self, mib: int):
        self.free = mib
        self.running = 0
        self.cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, mib: int):
        with self.cond:
            # A run that alone needs more than there is still runs, alone: refusing it helps nobody.
            self.cond.wait_for(lambda: self.free >= mib or self.running == 0)
            self.free -= mib
            self.running += 1
        try:
            yield
        finally:
            with self.cond:
                self.free += mib
                self.running -= 1
                self.cond.notify_all()


class Board:
    """The progress of a set of runs, one line each (run, current stage, elapsed), redrawn in place on
    a terminal; elsewhere (a CI log) the runs' own lines pass through as they come."""
    LINE = re.compile(r"^\[\s*([\d.]+)s\] (\S+): (.*)$")

    def __init__(self, out=sys.stderr):
        self.out = out
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.rows: dict[str, list] = {}   # run id -> [stage, last message, started]
        self.drawn = 0
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            if not self.tty:
                self.out.write(text)
                return len(text)
            for line in text.splitlines():
                m = self.LINE.match(line)
                if not m:   # anything else (a warning, an error) goes above the board
                    self._clear()
                    self.out.write(line + "\n")
                    continue
                row = self.rows.setdefault(m.group(2), ["starting", "", time.monotonic() - float(m.group(1))])
                if m.group(3).startswith("stage "):
                    row[0] = m.group(3)[6:]
                elif m.group(3).startswith("verdict "):
                    row[0] = m.group(3).split(":", 1)[0]
                row[1] = m.group(3)
            self._draw()
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def _clear(self) -> None:
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def _draw(self) -> None:
        self._clear()
        now = time.monotonic()
        for run_id, (stage, message, started) in self.rows.items():
            self.out.write(f"{run_id:<48} {stage:<28} {now - started:6.0f}s  {message[:60]}\n")
        self.drawn = len(self.rows)
        self.out.flush()


def run_many(scenarios: list[Scenario], results: Path, parallel: int, log=sys.stderr, snapshot: bool = False) -> list[dict]:
    """Every repeat of every scenario, `parallel` at a time; a run that fails on the host does not stop
    the others. Returns one report per run (errors as {"error": ...})."""
    for name in dict.fromkeys(s.image for s in scenarios):
        image_mod.ensure(name, log=log)   # built once, here, before any run needs it
    runs = [s for s in scenarios for _ in range(s.repeat)]
    budget = MemoryBudget(_available_mib())
    log = Board(log) if len(runs) > 1 else log

    CANCEL.clear()   # a cancelled earlier invocation in this process must not stop this one

    def one(scenario: Scenario) -> dict:
        with budget.reserve(HOST_MIB_PER_GUEST_MIB * scenario.memory_mib):
            try:
                return run(scenario, results, log, snapshot=snapshot)
            except Exception as exc:   # one run's failure is that run's error; the others go on
                error = exc if isinstance(exc, LabError) else HostError("host", f"{type(exc).__name__}: {exc}")
                print(f"lab: {scenario.name}: {error}", file=log, flush=True)
                return {"scenario": dataclasses.asdict(scenario), "error": str(error), "verdict": None,
                        "expectation_met": False if scenario.expect else None,
                        "cut_short": {"by": error.stage, "why": str(error)}}
    if parallel <= 1:
        return [one(s) for s in runs]
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="lab-run")
    futures = [pool.submit(one, s) for s in runs]
    try:
        return [f.result() for f in futures]
    except BaseException:
        CANCEL.set()   # the workers stop at their next console read and clean up
        for f in futures:
            f.cancel()
        with signals.teardown():
            pool.shutdown(wait=True)
        raise
    finally:
        pool.shutdown(wait=True)
        CANCEL.clear()
