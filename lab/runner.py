"""One run, end to end: image -> domain -> console -> transcript -> verdict -> report.

The guest is panicked for real and followed stage by stage (lab/lifecycle.py); each step has its own
timeout, nested in the run's. The domain, its overlay and the console process are gone when run()
returns or raises, and the run's libvirt connection is closed.
"""
from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING


from . import accel as accel_mod
from . import host, kdumpconf, storage
from . import image as image_mod
from . import report as report_mod
from .errors import HostError, LabError
from .lifecycle import Lifecycle, make_snapshot
from .progress import Reporter, sink_for
from .timeout import Timeout

if TYPE_CHECKING:   # types only
    from .scenario import Scenario

RUN_SECONDS = 1500.0


def new_run_id(scenario: Scenario) -> str:
    return f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def run(scenario: Scenario, results: Path, log=sys.stderr, snapshot: bool = False,
        uri: str | None = None) -> report_mod.RunReport:
    """Run one scenario on a real guest; return its report (also written to report.json).

    snapshot=True restores the guest, ready to panic, from a snapshot of its configuration (made by a
    first cold boot if there is none) instead of booting it. `uri` is the libvirt host (default: LAB_URI);
    a remote one gets everything through libvirt's storage API, and boots cold (snapshots stay here)."""
    top = Timeout("run", RUN_SECONDS)
    with top.step("connect"):
        conn = host.connect(uri)
    try:
        return _run(conn, scenario, results, sink_for(log), snapshot, top)
    finally:
        host.disconnect(conn)   # libvirt destroys any domain this connection still holds (autodestroy)


def _run(conn, scenario: Scenario, results: Path, sink, snapshot: bool, top: Timeout) -> report_mod.RunReport:
    run_id = new_run_id(scenario)
    artifacts = results / run_id
    say = Reporter(run_id, sink, top.started)
    uri = host.uri_of(conn)
    image = image_mod.ensure(scenario.image, log=sink, kernel=scenario.kernel)   # a build, when needed, is not lab overhead
    warnings = kdumpconf.lint(kdumpconf.CONFIGS[scenario.kdump_config], image.guest.flavour)
    for warning in warnings:
        say(f"warning: {warning}")
    remote = None
    if host.is_remote(uri):
        with top.step("storage"):
            remote = storage.stage_image(conn, image, say)
    with top.step("accel"):
        # A published image keeps its kernel inside its disk: a probe, if one is needed, boots the offline image's.
        def probe_kernel() -> str:
            if remote:
                return remote.kernel or storage.stage_image(conn, image_mod.ensure(image_mod.DEFAULT, log=sink), say).kernel
            return str(image.kernel or image_mod.ensure(image_mod.DEFAULT, log=sink).kernel)
        accel = accel_mod.detect(conn, probe_kernel)
    snap = None
    if snapshot and remote:
        say(f"snapshots stay on this machine: on {uri} the guest boots cold")
    elif snapshot:
        snap = make_snapshot(conn, scenario, image, accel, say, RUN_SECONDS)   # a first boot is not lab overhead either
    life = Lifecycle(conn, scenario, image, accel, run_id, top, say, snapshot=snap, remote=remote)
    try:
        with top.step("prepare"):
            life.prepare()
            life.record(report_mod.run_folder(artifacts))
            report_mod.keep_inputs(artifacts, life.dom.xml, life.dom.seed)
    except BaseException:
        life.teardown()
        raise
    cut_short = None
    try:
        life.attach()
        life.boot()
        life.ready()
        say(f"ready: kernel.panic={life.facts['preflight'].get('kernel.panic')}, kdump "
            f"{'armed' if life.armed else 'not armed'}; triggering the panic")
        life.trigger()
        life.follow()
    except KeyboardInterrupt as exc:
        cut_short = {"by": "user", "why": f"interrupted ({exc.args[0] if exc.args else 'Ctrl-C'})"}
        raise
    except LabError as exc:
        cut_short = {"by": "host" if isinstance(exc, HostError) else "lab", "why": str(exc)}
        if isinstance(exc, host.Refused):
            cut_short["refused"] = True   # a batch over several hosts gives that host no more runs
        say(f"cut short: {exc}")
    except Exception as exc:   # libvirt, the OS: still this run's host error, never the whole invocation's
        cut_short = {"by": "host", "why": f"host: {type(exc).__name__}: {exc}"}
        say(f"cut short: {cut_short['why']}")
    finally:
        with top.step("teardown"):
            life.teardown()
        if cut_short and cut_short["by"] == "user":
            report_mod.write(artifacts, report_mod.InterruptedReport(run_id, scenario, accel.name, image.name, cut_short,
                                                                     host_uri=uri))
    with top.step("classify"):
        verdict = life.verdict()
    facts = life.facts
    facts["console"] = {"took_over_from_another_viewer": life.console.took_over}
    report = report_mod.build(uri=uri, run_id=run_id, scenario=scenario, accel=accel, image=image, verdict=verdict,
                              facts=facts, transcript=life.transcript, artifacts=artifacts, timings=top.spent,
                              wall=top.elapsed(), cut_short=cut_short, profile=life.profile(), warnings=warnings,
                              snapshot={"key": snap.folder.name, "clock": facts.get("clock")} if snap else None,
                              steps=top.steps)
    report_mod.write(artifacts, report)
    say(f"verdict {verdict.verdict} at {verdict.stage}: {verdict.diagnosis}", verdict=verdict.verdict)
    if report.kept:
        say(f"kept {report.kept['domain']} as it is: `{report.kept['attach']}` (its serial console), "
            f"`{report.kept['stop']}` ends it; or `{report.kept['virsh']}`")
    return report
