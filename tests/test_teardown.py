"""Teardown and containment, without libvirt: every cleanup step runs whatever the one before did, one
run's unexpected error stays that run's, and no console byte is lost when the console closes."""
import dataclasses
import threading

import pexpect
import pytest

from lab import batch, lifecycle, runner
from lab.console import CANCEL, Console
from lab.errors import HostError
from lab.scenario import BASE_SCENARIOS
from lab.transcript import Transcript


def test_every_teardown_step_runs_and_the_first_failure_names_its_step():
    ran = []

    def broken():
        ran.append("destroy")
        raise OSError("libvirtd went away")
    with pytest.raises(HostError, match=r"teardown: destroy: libvirtd went away"):
        lifecycle.run_each([("console", lambda: ran.append("console")), ("destroy", broken),
                         ("scratch", lambda: ran.append("scratch")), ("snapshot lock", lambda: ran.append("lock"))])
    assert ran == ["console", "destroy", "scratch", "lock"]


class Reported(dict):
    """What the scheduler gets from a run: an object that gives its report.json form."""
    def to_json(self):
        return dict(self)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))   # the memory ledger lives there


def test_a_run_that_raises_anything_is_its_own_host_error_and_the_others_go_on(tmp_path, monkeypatch):
    monkeypatch.setattr(batch.image_mod, "ensure", lambda name, log=None, kernel="": None)

    def run(scenario, results, log, snapshot=False):
        if scenario.name == "panic-hang":
            raise OSError(28, "No space left on device")
        return Reported({"scenario": {"name": scenario.name}, "verdict": "reboot"})
    monkeypatch.setattr(batch, "run", run)
    reports = batch.run_many([BASE_SCENARIOS["panic-reboot"], BASE_SCENARIOS["panic-hang"]], tmp_path, parallel=2)
    assert reports[0]["verdict"] == "reboot"
    assert reports[1]["verdict"] is None
    assert reports[1]["cut_short"]["by"] == "host"
    assert "OSError" in reports[1]["error"] and "No space left" in reports[1]["error"]


def test_an_interrupted_batch_does_not_cancel_the_next_one(tmp_path, monkeypatch):
    monkeypatch.setattr(batch.image_mod, "ensure", lambda name, log=None, kernel="": None)
    CANCEL.set()   # what an interrupted earlier batch in this process leaves
    seen = []
    monkeypatch.setattr(batch, "run", lambda s, r, log, snapshot=False: seen.append(CANCEL.is_set()) or Reported({"verdict": "hang"}))
    batch.run_many([BASE_SCENARIOS["panic-hang"]], tmp_path, parallel=1)
    assert seen == [False]
    assert not CANCEL.is_set()


def test_each_run_closes_its_libvirt_connection(tmp_path, monkeypatch):
    closed = threading.Event()

    class Conn:
        callback = True

        def unregisterCloseCallback(self):   # else libvirt keeps the connection open (a reference)
            self.callback = False

        def close(self):
            if not self.callback:
                closed.set()
    monkeypatch.setattr(runner.host, "connect", lambda uri=None: Conn())
    monkeypatch.setattr(runner, "_run", lambda *a: (_ for _ in ()).throw(HostError("image", "cannot build")))
    with pytest.raises(HostError):
        runner.run(BASE_SCENARIOS["panic-hang"], tmp_path)
    assert closed.is_set()


def test_closing_the_console_keeps_what_was_still_unread(tmp_path):
    transcript = Transcript(tmp_path)
    console = Console("test:///default", "none", transcript)
    console.child = pexpect.spawn("sh", ["-c", "printf 'Escape character is ^]\\nguest line 1\\nguest line 2\\n'; sleep 1"],
                                  encoding=None, echo=False, timeout=None)
    console.child.expect(rb"Escape character is [^\n]*\n")   # as attach() does: pexpect may read past it
    console.close()
    transcript.close()
    assert (tmp_path / "console.log").read_bytes().replace(b"\r", b"") == b"guest line 1\nguest line 2\n"


def test_the_longest_runs_start_first_and_the_reports_keep_the_order_asked(tmp_path, monkeypatch):
    """A capture kernel's run outlasts a reset or a halt: started last, it would leave a slot idle beside it."""
    monkeypatch.setattr(batch.image_mod, "ensure", lambda name, log=None, kernel="": None)
    started, gate = [], threading.Barrier(2, timeout=10)

    def run(scenario, results, log, snapshot=False):
        started.append(scenario.name)
        if len(started) <= 2:
            gate.wait()   # both slots taken before either run ends: the first two starts are the pool's choice
        return Reported({"scenario": {"name": scenario.name}, "verdict": "hang"})
    monkeypatch.setattr(batch, "run", run)
    kept = dataclasses.replace(BASE_SCENARIOS["panic-hang"], name="kept-hang", keep=True)
    scenarios = [kept, BASE_SCENARIOS["panic-reboot"], BASE_SCENARIOS["hyperv-kdump-default"],
                 BASE_SCENARIOS["hyperv-kdump-kb2858695"]]
    reports = batch.run_many(scenarios, tmp_path, parallel=2)
    assert set(started[:2]) == {"hyperv-kdump-kb2858695", "hyperv-kdump-default"}
    assert [r["scenario"]["name"] for r in reports] == [s.name for s in scenarios]
    # The rank behind it: a dump, then another capture kernel, then a reset or a halt; a kept guest keeps a
    # core busy until it is stopped, so it starts last.
    ranked = sorted(scenarios, key=batch.likely_length, reverse=True)
    assert [s.name for s in ranked] == ["hyperv-kdump-kb2858695", "hyperv-kdump-default", "panic-reboot", "kept-hang"]
