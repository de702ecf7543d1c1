"""pytest plugin (entry point pytest11): serial-log assertions on real runs and on saved logs.

    @pytest.mark.lab(scenario="hyperv-kdump-kb2858695")
    def test_dump(lab_run):
        assert lab_run.verdict == "dump"
        assert lab_run.transcript.contains("saved vmcore")
        assert lab_run.stage("capture_kernel").duration < 120

Each distinct scenario (with its overrides) runs once per session, however many tests ask for it; the
first test that needs one runs all the session's scenarios as one batch, side by side.
`lab_recorded(path)` loads a saved log into the same Run object, with no VM.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import paths, recorded
from .transcript import console_lines
from .verdict import derive
from .vocabulary import Stage


@dataclass
class StageView:
    name: str
    t: float | None          # host seconds since the domain was resumed (None for saved logs)
    duration: float | None   # until the next stage was reached (or the run ended)
    line: int
    text: str


class ConsoleText:
    """The console log, cleaned line by line (no ANSI escapes, CRs or timestamps), with the raw bytes kept."""

    def __init__(self, raw: bytes, stages: list[dict] | None = None):
        self.raw = raw
        self.lines = console_lines(raw)
        self._stages = stages or []

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def contains(self, needle: str) -> bool:
        return any(needle in line for line in self.lines)

    def search(self, pattern: str) -> list[tuple[int, str]]:
        """(1-based line number, line) of every line the regex matches."""
        regex = re.compile(pattern)
        return [(n, line) for n, line in enumerate(self.lines, start=1) if regex.search(line)]

    def stage_slice(self, name: str) -> list[str]:
        """The lines from the given stage's first evidence up to the next stage's."""
        ordered = sorted((s for s in self._stages if s.get("line")), key=lambda s: s["line"])
        for n, stage in enumerate(ordered):
            if _stage_matches(stage["name"], name):
                end = ordered[n + 1]["line"] - 1 if n + 1 < len(ordered) else len(self.lines)
                return self.lines[stage["line"] - 1:end]
        raise KeyError(f"stage {name!r} not reached (reached: {', '.join(s['name'] for s in ordered)})")

    def assert_in_order(self, *patterns: str) -> None:
        """Each regex matches a line after the line the previous one matched."""
        after = 0
        for pattern in patterns:
            hits = [n for n, _ in self.search(pattern) if n > after]
            assert hits, f"{pattern!r} not found after line {after}"
            after = hits[0]


def _stage_matches(stage: str, wanted: str) -> bool:
    return stage == wanted or stage.startswith(wanted + "_")   # "capture_kernel" finds capture_kernel_booted


class Run:
    """One run's outcome: the report's verdict and stages, the transcript, the folder with the artifacts."""

    def __init__(self, report: dict, transcript: ConsoleText, folder: Path | None):
        self.report = report
        self.transcript = transcript
        self.folder = folder

    verdict = property(lambda self: self.report["verdict"])
    diagnosis = property(lambda self: self.report["diagnosis"])

    @property
    def stages(self) -> list[str]:
        return [s["name"] for s in self.report["stages"]]

    def stage(self, name: str) -> StageView:
        ordered = self.report["stages"]
        for n, s in enumerate(ordered):
            if _stage_matches(s["name"], name):
                nxt = ordered[n + 1]["t"] if n + 1 < len(ordered) else self.report.get("timings", {}).get("wall_seconds")
                duration = round(nxt - s["t"], 3) if s.get("t") is not None and nxt is not None else None
                return StageView(s["name"], s.get("t"), duration, s["line"], s["text"])
        raise KeyError(f"stage {name!r} not reached (reached: {', '.join(self.stages)})")

    @classmethod
    def from_report(cls, report: dict) -> "Run":
        if "artifacts" not in report:   # the run ended before it had a guest (its error is in the report)
            return cls({"stages": [], "diagnosis": report.get("error"), "stage": None, **report}, ConsoleText(b""), None)
        folder = Path(report["artifacts"]["dir"])
        return cls(report, ConsoleText((folder / "console.log").read_bytes(), report["stages"]), folder)

    @classmethod
    def from_log(cls, path: str | Path) -> "Run":
        """A saved log; a recorded log's header (lab/recorded.py) above it is checked and skipped, and the
        run's host events, where they were kept beside it, are replayed with it."""
        _header, raw = recorded.split(Path(path).read_bytes())
        v = derive(recorded.replay(raw, Path(path))).to_json()
        return cls(v, ConsoleText(raw, v["stages"]), None)


def pytest_addoption(parser):
    group = parser.getgroup("panic-lab")
    group.addoption("--lab-image", default=None, help="guest image for @pytest.mark.lab runs (default: the scenario's)")
    group.addoption("--lab-accel", choices=("kvm", "tcg"), default=None, help="skip the KVM probe (sets LAB_ACCEL)")
    group.addoption("--lab-results", default=None, help="where lab runs write their folders")


def pytest_configure(config):
    config.addinivalue_line("markers", "lab(scenario, **overrides): run the scenario on a real guest; "
                                       "the lab_run fixture holds the outcome")
    if config.getoption("--lab-accel", None):
        os.environ["LAB_ACCEL"] = config.getoption("--lab-accel")
    config._lab_runs = {}


@pytest.fixture(scope="session")
def lab_results(request) -> Path:
    given = request.config.getoption("--lab-results")
    folder = Path(given) if given else paths.results_dir() / f"pytest-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _scenario_of(item, config):
    from . import scenario as sc
    marker = item.get_closest_marker("lab")
    if marker is None or "scenario" not in marker.kwargs:
        return None
    overrides = [f"{k}={v}" for k, v in sorted(marker.kwargs.items()) if k != "scenario"]
    if config.getoption("--lab-image"):
        overrides.append(f"image={config.getoption('--lab-image')}")
    return sc.with_overrides(sc.resolve(marker.kwargs["scenario"]), overrides)


def _run_all(session, results: Path) -> dict:
    """Every scenario the session's selected tests ask for, once, side by side as one batch: guests
    under TCG each keep a core busy, so the batch runs as many at once as the host has cores and memory."""
    from . import batch
    wanted = list(dict.fromkeys(s for s in (_scenario_of(item, session.config) for item in session.items) if s))
    # batch.run_many starts the longest runs first, and keeps the reports in this order.
    reports = batch.run_many(wanted, results, batch.default_parallel(wanted))
    return {scenario: Run.from_report(report) for scenario, report in zip(wanted, reports)}


@pytest.fixture
def lab_run(request, lab_results) -> Run:
    scenario = _scenario_of(request.node, request.config)
    if scenario is None:
        raise pytest.UsageError(f"{request.node.nodeid}: lab_run needs @pytest.mark.lab(scenario=...)")
    runs = request.config._lab_runs
    if scenario not in runs:
        runs.update(_run_all(request.session, lab_results))
    request.node._lab_run = runs[scenario]
    return runs[scenario]


@pytest.fixture
def lab_recorded():
    return Run.from_log


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    result = outcome.get_result()
    run = getattr(item, "_lab_run", None)
    if result.failed and run is not None:
        tail = "\n".join(run.transcript.lines[-30:])
        result.sections.append(("panic-lab run", f"verdict {run.verdict} at {run.report['stage']}: {run.diagnosis}\n"
                                                 f"artifacts: {run.folder}\nreport: "
                                                 f"{json.dumps({k: run.report[k] for k in ('cut_short', 'kdump')}, default=str)}\n"
                                                 f"last console lines:\n{tail}"))


__all__ = ["Run", "ConsoleText", "StageView", "Stage"]
