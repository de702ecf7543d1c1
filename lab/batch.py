"""Many runs: every repeat of every scenario, a few at a time, each holding its share of the host's
memory (lab/budget.py) while it runs. One run's failure is that run's error; the others go on."""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import budget, host, signals
from . import image as image_mod
from .console import CANCEL
from .errors import HostError, LabError
from .placement import Placement
from .progress import Board, sink_for
from .report import ErrorReport
from .runner import run
from .scenario import Scenario


def default_parallel(scenarios: list[Scenario], placement: Placement | None = None) -> int:
    """One run per core, as many as the free memory holds: this machine's, or, over several hosts, their
    room added up as each one's libvirt reports it. Measured (make bench, TCG, 2 cores, panic-reboot
    batches): 1 at once 0.61 runs/min, 2 at once 1.08, 3 at once about 1.0 with every run ~60 % slower
    (and nearer its stage deadlines): a run under TCG keeps a core busy, so more runs than cores only queue."""
    need = max(budget.HOST_MIB_PER_GUEST_MIB * s.memory_mib for s in scenarios)
    runs = sum(s.repeat for s in scenarios)
    if placement:
        return max(1, min(placement.capacity(need), runs))
    return max(1, min(os.cpu_count() or 1, budget.available_mib() // need, runs))


def likely_length(scenario: Scenario) -> int:
    """A rough rank of how long a run lasts: a capture kernel boots a second time, saving a dump takes
    longest of all, and following a reset guest to its login boots it again; a reset or a halt alone
    ends sooner. A kept guest ranks last: under TCG a kernel spinning in panic() keeps a host core busy
    until it is stopped, so it should not share the host with the rest of the batch."""
    if scenario.keep:
        return -1
    capture = scenario.kdump and scenario.crashkernel != "0"
    return int(capture) + int(capture and scenario.expect == "dump") + int(scenario.wait_for_login)


def run_many(scenarios: list[Scenario], results: Path, parallel: int, log=sys.stderr, snapshot: bool = False,
             hosts: list[str] | Placement | None = None) -> list[dict]:
    """Every repeat of every scenario, `parallel` at a time. Returns one report per run, in order, as
    report.json has it (the invocation's summary, junit.xml and report.html are made from that).
    `hosts` (libvirt URIs, or the Placement the caller opened to refuse them early) spreads the runs over
    those hosts (lab/placement.py); None is this one."""
    placement = hosts if isinstance(hosts, Placement) or not hosts else Placement.open(hosts, log)
    for name, kernel in dict.fromkeys((s.image, s.kernel) for s in scenarios):
        try:
            image_mod.ensure(name, log=log, kernel=kernel)   # built once, here, before any run needs it
        except LabError as exc:   # only the runs on this image fail (each as its own host error), not the batch
            print(f"lab: {exc}; the runs that need it will fail", file=log, flush=True)
    runs = [s for s in scenarios for _ in range(s.repeat)]
    ledger = budget.Ledger()
    log = Board(log) if len(runs) > 1 else sink_for(log)
    CANCEL.clear()   # a cancelled earlier batch in this process must not stop this one

    def placed(scenario: Scenario) -> dict:
        """One run on the host with most room; a host that drops before the run starts passes it on."""
        need = budget.HOST_MIB_PER_GUEST_MIB * scenario.memory_mib
        while True:
            chosen = placement.take(need, CANCEL)
            if chosen is None:
                return ErrorReport(scenario, "host", "no host left: every host given was dropped").to_json()
            drop_why, suspect = None, False   # why the host takes no more runs; or whether to measure it anew
            try:
                report = on_host(scenario, chosen.uri, need)
                cut_short = report.get("cut_short") or {}
                drop_why = cut_short["why"] if cut_short.get("refused") else None
                suspect = cut_short.get("by") == "host"   # lost mid-run? measured anew
                return report
            except host.Unreachable as exc:   # nothing of this run started there: it goes elsewhere
                drop_why = exc.message
                continue
            except host.Refused as exc:
                drop_why = str(exc)
                return failed(scenario, exc, chosen.uri)
            except HostError as exc:
                suspect = True
                return failed(scenario, exc, chosen.uri)
            except LabError as exc:   # the run's own (an image, the input): the host is not to blame
                return failed(scenario, exc, chosen.uri)
            except Exception as exc:   # libvirt, the OS: this run's error
                suspect = True
                return failed(scenario, HostError("host", f"{type(exc).__name__}: {exc}"), chosen.uri)
            finally:
                placement.give_back(chosen, need, drop_why, suspect)

    def on_host(scenario: Scenario, uri: str, need: int) -> dict:
        if host.is_remote(uri):
            return run(scenario, results, log, snapshot=snapshot, uri=uri).to_json()
        with ledger.reserve(need, CANCEL, lambda: None):   # this machine's memory, shared with other labs
            return run(scenario, results, log, snapshot=snapshot, uri=uri).to_json()

    def failed(scenario: Scenario, error: LabError, uri: str) -> dict:
        log.write(f"lab: {scenario.name}: {error}\n")
        return ErrorReport(scenario, error.stage, str(error), host_uri=uri).to_json()

    def one(scenario: Scenario) -> dict:
        if placement:
            return placed(scenario)
        need = budget.HOST_MIB_PER_GUEST_MIB * scenario.memory_mib
        waiting = lambda: log.write(f"lab: {scenario.name}: waiting for {need} MiB of host memory "  # noqa: E731
                                    "(other lab runs on this host hold the rest)\n")
        with ledger.reserve(need, CANCEL, waiting):
            try:
                return run(scenario, results, log, snapshot=snapshot).to_json()
            except Exception as exc:   # libvirt, the OS: still this run's error, never the whole batch's
                error = exc if isinstance(exc, LabError) else HostError("host", f"{type(exc).__name__}: {exc}")
                log.write(f"lab: {scenario.name}: {error}\n")
                return ErrorReport(scenario, error.stage, str(error), host_uri=host.uri()).to_json()
    if parallel <= 1:
        return [one(s) for s in runs]
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="lab-run")
    # The longest runs start first, so that the short ones fill the other slots beside them.
    futures = {n: pool.submit(one, runs[n]) for n in sorted(range(len(runs)), key=lambda n: -likely_length(runs[n]))}
    try:
        return [futures[n].result() for n in range(len(runs))]
    except BaseException:
        CANCEL.set()   # the workers stop at their next console read and clean up
        for f in futures.values():
            f.cancel()
        with signals.teardown():
            pool.shutdown(wait=True)
        raise
    finally:
        pool.shutdown(wait=True)
        CANCEL.clear()
