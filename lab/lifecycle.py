"""One guest's life, the same for a cold run, a snapshot being made and a snapshot restored:

    prepare (or restore) -> attach -> boot -> ready -> trigger -> follow -> teardown

Each step takes the timeout it may use. Teardown happens once, in one place, whatever happened
before: used as a context manager, the lifecycle tears the guest down on any way out.
"""
from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import libvirt

from . import domain as domain_mod
from . import host, kept, signals
from . import snapshot as snapshot_mod
from . import vmcore as vmcore_mod
from .console import Console, ConsoleClosed
from .errors import HostError, LabError
from .follow import Fault, follow
from .timeout import Timeout
from .transcript import Transcript
from .verdict import Verdict, derive
from .vocabulary import GuestEvent, HostEvent, Outcome, Stage

if TYPE_CHECKING:   # types only
    from .accel import Accel
    from .image import Image
    from .progress import Reporter
    from .scenario import Scenario
    from .storage import RemoteImage

ATTACH_SECONDS = 20.0
PREFLIGHT_SECONDS = 300.0


class Lifecycle:
    def __init__(self, conn: libvirt.virConnect, scenario: Scenario, image: Image, accel: Accel, run_id: str,
                 timeout: Timeout, say: Reporter, snapshot: snapshot_mod.Snapshot | None = None,
                 remote: RemoteImage | None = None):
        self.conn, self.scenario, self.image, self.accel = conn, scenario, image, accel
        self.remote = remote   # the image as volumes of a remote host; None on this one
        self.run_id, self.timeout, self.say, self.snapshot = run_id, timeout, say, snapshot
        self.dom: domain_mod.Domain | None = None
        self.transcript: Transcript | None = None
        self.console: Console | None = None
        self.facts: dict = {"preflight": {}, "vmcore": {}}
        self.shut_down_cleanly = False
        self.followed = False
        self._turn = contextlib.ExitStack()   # a snapshot's repeats take turns (see snapshot.restore)
        self._events_lock = threading.Lock()
        self._torn_down = False

    def __enter__(self) -> "Lifecycle":
        return self

    def __exit__(self, *_exc) -> None:
        self.teardown()

    # -- prepare or restore ------------------------------------------------------------------------
    def prepare(self) -> None:
        """The domain: its overlay, seed and XML (started later), or restored, paused, from the snapshot."""
        if self.snapshot:
            self._turn.enter_context(snapshot_mod.taking_turns(self.snapshot))
            self.dom = domain_mod.from_snapshot(self.conn, self.scenario, self.snapshot, self.run_id)
        else:
            self.dom = domain_mod.prepare(self.conn, self.scenario, self.image, self.accel, self.run_id, self.remote)

    def record(self, folder: Path) -> None:
        """The transcript goes to `folder` (console.log, host-events.jsonl), read through the console."""
        self.transcript = Transcript(folder)
        self.console = Console(host.uri_of(self.conn), self.dom.name, self.transcript, host_lost=self.dom.connection_lost)

    def host_event(self, kind: HostEvent, text: str, **figures) -> None:
        with self._events_lock:   # libvirt's event thread reports here too
            self.transcript.annotate(kind, text, **figures)

    # -- attach, boot, ready -----------------------------------------------------------------------
    def attach(self) -> None:
        """Start the domain paused (a restored one already is), then attach the console before the first byte."""
        with self.timeout.step("start"):
            if not self.snapshot:
                self.dom.start_paused(autodestroy=not self.scenario.keep)
            self.dom.on_event(self.host_event)
        restored = f" from snapshot {self.snapshot.folder.name}" if self.snapshot else ""
        self.say(f"created {self.dom.name} (paused){restored}; attaching the console")
        with self.timeout.step("attach", ATTACH_SECONDS) as limit:
            self.console.attach(limit)

    def boot(self) -> None:
        """Resume the guest and bring it to a root shell: a cold boot to the login prompt (and, for an image
        that boots through its own bootloader, the one reboot crashkernel= needs), or a restore."""
        self.dom.resume()
        self.transcript.started = time.monotonic()
        if self.snapshot:
            self.host_event(HostEvent.RESTORED, f"domain {self.dom.name} restored from snapshot "
                                                f"{self.snapshot.folder.name} and resumed ({self.accel.name})")
            self.say(f"restored {self.dom.name} under {self.accel.name}; resynchronising the clock, pre-flight checks")
            self.facts["clock"] = self._resync_clock(self.timeout.child("clock", 30))
            return
        self.host_event(HostEvent.RESUMED, f"domain {self.dom.name} resumed ({self.accel.name})")
        self.say(f"started {self.dom.name} under {self.accel.name}; waiting for the login prompt")
        self.console.login(self.timeout.child("boot", self.scenario.boot_seconds), self.image.guest.getty_logs_in)
        if self.image.guest.crashkernel == "grub-reboot":
            self._reboot_for_crashkernel()
        self.say("logged in; pre-flight checks (waits for cloud-init)")

    def _reboot_for_crashkernel(self) -> None:
        """A guest that boots through its own bootloader gets crashkernel= from cloud-init (grubby or
        update-grub) on its first boot; it takes effect after one reboot, which the lab does itself."""
        self.say("logged in; waiting for cloud-init, then rebooting once so that crashkernel= takes effect")
        # The seed's last runcmd step leaves the marker: then crashkernel= is in the bootloader's config.
        self.console.command("until [ -e /run/panic-lab-configured ]; do sleep 1; done",
                             self.timeout.child("cloud-init", PREFLIGHT_SECONDS))
        rc, out = self.console.command('s=$(cloud-init status --long 2>&1); r=$?; echo "$s" | tail -n 3; test $r -eq 0',
                                       self.timeout.child("cloud-init-status", 30))
        if rc != 0:
            self.say(f"warning: cloud-init reported errors: {' '.join(out.split())[-200:]}")
        self.console.new_events()   # a login prompt from before the reboot must not be taken for the next one
        self.host_event(HostEvent.CRASHKERNEL_REBOOT,
                        "the lab reboots the guest once: crashkernel= is in its bootloader's config now")
        self.console.send("systemctl reboot\r")
        self.console.login(self.timeout.child("boot-after-reboot", self.scenario.boot_seconds),
                           self.image.guest.getty_logs_in)

    def _resync_clock(self, limit: Timeout) -> dict:
        """After a restore the guest's clock is as old as the snapshot: set it to the host's."""
        _rc, out = self.console.command("date -u +%s", limit)
        guest = next((int(w) for w in out.split() if w.isdigit() and len(w) >= 9), None)
        host_now = int(time.time())
        rc, _ = self.console.command(f"date -u -s @{host_now} >/dev/null", limit)
        return {"guest_before": guest, "host": host_now, "behind_seconds": None if guest is None else host_now - guest,
                "resynchronised": rc == 0}

    def ready(self) -> dict:
        """The pre-flight: the guest's own account of what the scenario set up; refused if it differs."""
        pre = self.console.facts("lab-preflight", self.timeout.child("preflight", PREFLIGHT_SECONDS))
        self.facts["preflight"] = pre
        if pre.get("kernel.panic") != str(self.scenario.kernel_panic):
            raise LabError("console", f"guest not ready: kernel.panic is {pre.get('kernel.panic')!r}, "
                                      f"the scenario asked for {self.scenario.kernel_panic}")
        if self.scenario.trigger == "nmi" and pre.get("kernel.unknown_nmi_panic") != "1":
            raise LabError("console", "guest not ready: kernel.unknown_nmi_panic is not 1, so an NMI would not panic it")
        return pre

    @property
    def armed(self) -> bool:
        return self.facts["preflight"].get("kexec_crash_loaded") == "1"

    # -- the end of a snapshot's first boot --------------------------------------------------------
    def save_snapshot(self, snap: snapshot_mod.Snapshot) -> None:
        """Keep the ready guest as the snapshot (the domain stops); its boot console is kept with it."""
        self.console.command("sync", self.timeout.child("sync", 60))
        self.console.close()
        snapshot_mod.save(self.conn, self.dom.dom, self.dom.overlay, self.dom.workdir / "seed.iso", snap,
                          self.dom.seed.user_data, self.facts["preflight"])
        self.transcript.close()
        (snap.folder / "boot-console.log").write_bytes(self.transcript.path.read_bytes())

    # -- trigger, follow ---------------------------------------------------------------------------
    def trigger(self) -> None:
        if self.scenario.trigger == "nmi":
            self.host_event(HostEvent.TRIGGER, "libvirt inject-nmi (the guest has kernel.unknown_nmi_panic=1)")
            self.dom.inject_nmi()
        else:
            self.host_event(HostEvent.TRIGGER, self.console.trigger(self.scenario.trigger_cpu()))

    def follow(self) -> str:
        """Through the panic, stage by stage, until the verdict is certain or the guest stops progressing.
        A scenario with wait_for_login follows the rebooted guest to its login prompt instead, counts the
        vmcores from inside and shuts it down so that its disk can be checked."""
        reached = follow(self.console, self.dom, self.scenario, self.timeout, self.say, self.host_event,
                         Fault(self.dom, self.scenario, self.host_event), self.facts["preflight"])
        if reached == Stage.BACK_AT_LOGIN:
            self.console.login(self.timeout.child("login-again", 60), self.image.guest.getty_logs_in)
            self.facts["vmcore_in_guest"] = self.console.facts("lab-vmcore", self.timeout.child("vmcore-count", 60))
            self.say(f"vmcores on the guest's disk: {self.facts['vmcore_in_guest'].get('vmcore_count', '?')}")
            if self.dom.overlay is not None and self.dom.overlay.suffix == ".raw":
                self.shut_down_cleanly = self._poweroff(self.timeout.child("poweroff", 120))
        self.followed = True
        return reached

    def _remove_volumes(self) -> None:
        left = self.dom.remove_volumes()
        if left:
            self.facts["volumes_left"] = left
            self.say(f"volumes {', '.join(left)} stay on {self.dom.uri} until `lab clean --host URI` "
                     "takes them (the host is gone, or refused to delete them)")

    def _dump_to_check(self) -> Verdict | None:
        """The run's verdict if its disk may hold a dump (a capture kernel ran, or the verdict is dump);
        None if not, or if the run was interrupted or cut short (the user is waiting)."""
        if not self.followed:
            return None
        verdict = derive(self.transcript.events())
        captured = any(s.name == Stage.CAPTURE_KERNEL_BOOTED for s in verdict.stages)
        return verdict if captured or verdict.verdict == Outcome.DUMP else None

    def _host_checks_disk(self) -> bool:
        """Whether a check after the run reads the guest's disk: the vmcore's, or the filesystem's (a clean
        shutdown; e2fsck reads only a bare raw one); only then does a remote run's disk come back."""
        raw = self.dom.volumes.disk.name().endswith(".raw")
        return (raw and self.shut_down_cleanly) or self._dump_to_check() is not None

    def _check_vmcore(self) -> None:
        """Once the domain has stopped: the dump, read from its disk on the host (lab/vmcore.py)."""
        verdict = self._dump_to_check()
        if verdict is None or self.dom.overlay is None or not self.dom.overlay.exists():
            return
        panics = [e for e in self.transcript.events() if e.kind == GuestEvent.PANIC]
        console_panic = vmcore_mod.PANIC_TEXT.search(panics[0].text).group(0).strip() if panics else ""
        self.say("reading the vmcore from the guest's disk on the host")
        with self.timeout.step("vmcore"):
            result = vmcore_mod.check(self.dom.overlay, self.dom.workdir, self.transcript.path.parent, console_panic,
                                      expected=verdict.verdict == Outcome.DUMP, partitioned=self.dom.partitioned)
        self.facts["vmcore"] = result.to_json()
        self.say(f"vmcore check: {result.check}" + (f" ({result.why})" if result.why else
                                                     f": {result.count} dump file(s), {result.format or 'none'}"))

    def _poweroff(self, limit: Timeout) -> bool:
        """Shut the guest down from inside, so its filesystem can be checked from the host afterwards."""
        self.console.send("poweroff\r")
        while not limit.expired():
            try:
                self.console.pump(min(1.0, limit.remaining()))
            except ConsoleClosed:
                pass
            if self.dom.state() in ("shutoff", "absent"):
                self.host_event(HostEvent.POWERED_OFF, "guest shut down cleanly for the disk check")
                return True
        self.host_event(HostEvent.POWEROFF_TIMEOUT, f"guest did not power off within {limit.seconds:.0f} s")
        return False

    # -- what it came to ----------------------------------------------------------------------------
    def verdict(self) -> Verdict:
        return derive(self.transcript.events())

    def profile(self) -> dict:
        return domain_mod.describe_profile(self.scenario, self.dom.kdump)

    # -- teardown ----------------------------------------------------------------------------------
    def teardown(self) -> None:
        """Once, shielded from a second Ctrl-C: every step runs whatever the one before it did."""
        if self._torn_down:
            return
        self._torn_down = True
        disk_check: dict = {}
        steps = []
        if self.console:
            steps.append(("console", self.console.close))
        if self.dom and self.scenario.keep and self.followed:
            # Kept as it is, hung capture kernel and all: `lab ps` lists it, `lab stop` or `lab clean` ends it.
            steps += [("release", self.dom.keep),
                      ("keep", lambda: kept.record(self.dom.workdir, self.run_id, self.dom.name, self.dom.uri,
                                                   str(self.transcript.path.parent), derive(self.transcript.events())))]
            self.facts["kept"] = kept.how_to_reach(self.run_id, self.dom.name, self.dom.uri)
        elif self.dom:
            steps += [("destroy", self.dom.destroy)]
            if self.dom.volumes is not None and not self.dom.connection_lost() and self._host_checks_disk():
                steps.append(("disk read back", self.dom.fetch_disk))
            steps += [("vmcore", self._check_vmcore),
                      ("disk check", lambda: disk_check.update(self.dom.check_disk(self.shut_down_cleanly))),
                      ("volumes", self._remove_volumes),
                      ("scratch", self.dom.remove_files)]
        if self.transcript:
            steps.append(("transcript", self.transcript.close))
        steps.append(("snapshot lock", self._turn.close))
        with signals.teardown():
            try:
                run_each(steps)
            finally:
                self.facts["disk_check"] = disk_check


def run_each(steps: list[tuple[str, object]]) -> None:
    """Every step runs, whatever the ones before it did; the first failure is raised at the end, naming its step."""
    failed: HostError | None = None
    for name, step in steps:
        try:
            step()
        except Exception as exc:   # noqa: BLE001 - the next step must run all the same
            failed = failed or HostError("teardown", f"{name}: {exc}")
    if failed:
        raise failed


def make_snapshot(conn: libvirt.virConnect, scenario: Scenario, image: Image, accel: Accel,
                  say: Reporter, seconds: float) -> snapshot_mod.Snapshot:
    """The ready-to-panic snapshot of this configuration: booted once, to ready, and saved, under a lock
    so that it is made once."""
    snap = snapshot_mod.find(scenario, image.key, accel.name)
    with snapshot_mod.making(snap) as needed:
        if not needed:
            return snap
        say(f"no snapshot {snap.folder.name} yet: booting the configuration once to make it")
        with Lifecycle(conn, scenario, image, accel, f"snap-{snap.folder.name}", Timeout("snapshot", seconds), say) as life:
            life.prepare()
            life.record(life.dom.workdir)
            life.attach()
            life.boot()
            life.ready()
            life.save_snapshot(snap)
        say(f"snapshot {snap.folder.name} saved (armed: {life.armed})")
    return snap
