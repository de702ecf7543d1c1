"""A scenario file with a matrix, two runs at once, on real guests: the other panic triggers, the
results folder (summary.json, junit.xml, one folder per run) and the exit code. It runs beside a
second invocation (conftest.side_by_side), which test_isolation.py checks it kept apart from."""
import json
import re
import subprocess
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from conftest import ROOT
from lab.vocabulary import HostEvent

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def matrix_run(side_by_side):
    """The trigger matrix (conftest.TRIGGER_MATRIX), run beside another invocation."""
    _, matrix, _ = side_by_side
    return matrix, matrix.folder


def test_a_matrix_runs_side_by_side_and_reports(matrix_run):
    done, folder = matrix_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert folder.parent.name == "results"
    assert "2 run(s), 2 at a time" in done.stderr
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["all_expectations_held"] and summary["parallel"] == 2
    assert {name: row["counts"]["reboot"] for name, row in summary["scenarios"].items()} == \
        {"trigger-trigger-nmi": 1, "trigger-trigger-cpu-1": 1}
    suite = ET.parse(folder / "junit.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "0" and suite.get("errors") == "0"
    runs = [Path(r["folder"]) for r in summary["run_list"]]
    assert all(run.parent == folder and (run / "console.log").exists() for run in runs)
    nmi = json.loads(next(r for r in runs if "nmi" in r.name).joinpath("report.json").read_text())
    assert nmi["preflight"]["kernel.unknown_nmi_panic"] == "1"
    assert [e["text"] for e in nmi["host_events"] if e["kind"] == HostEvent.TRIGGER] == \
        ["libvirt inject-nmi (the guest has kernel.unknown_nmi_panic=1)"]
    cpu1_folder = next(r for r in runs if "cpu-1" in r.name)
    cpu1 = json.loads((cpu1_folder / "report.json").read_text())
    assert [e["text"] for e in cpu1["host_events"] if e["kind"] == HostEvent.TRIGGER] == \
        ["taskset -c 1 sh -c 'echo c > /proc/sysrq-trigger'"]
    # The oops that sysrq c prints names the CPU it ran on.
    assert re.search(r"CPU: 1 PID: \d+ Comm: (sh|bash)", (cpu1_folder / "console.log").read_text(errors="replace"))


def test_the_html_report_renders_in_a_real_browser(matrix_run, need_tool):
    chromium = need_tool("chromium")
    _, folder = matrix_run
    page = (folder / "report.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="matrix"' in dom.stdout and "trigger-trigger-nmi" in dom.stdout and "trigger-trigger-cpu-1" in dom.stdout
    # Each run's timeline, drawn by the browser from the report: these runs reset after the panic.
    assert dom.stdout.count("<svg") == 2 and ">panic</text>" in dom.stdout and ">reset</text>" in dom.stdout
    # Each run names the kernel that booted, links its console and folds each stage's evidence in context;
    # these runs went on after their panic, so no timeline has a hang point.
    assert dom.stdout.count(">console.log</a>") == 2 and dom.stdout.count(", kernel <b>") == 2
    reports = [json.loads(p.read_text()) for p in folder.glob("*/report.json")]
    with_lines = sum(1 for r in reports for s in r["stages"] if s.get("line"))   # a reset seen by the host has none
    assert with_lines >= 4 and dom.stdout.count("<details>") == with_lines and "hang point" not in dom.stdout
    artifacts = ROOT / "results" / "test-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / f"report-{folder.name}.png"
    done = subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,900", page],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
