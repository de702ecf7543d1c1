"""A scenario file with a matrix, two runs at once, on real guests: the other panic triggers, the
results folder (summary.json, junit.xml, one folder per run) and the exit code."""
import json
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parent.parent
MATRIX = """
[[scenario]]
base = "kdump"
name = "trigger"
vcpus = 2
expect = "dump"

[matrix]
trigger = ["nmi", "cpu:1"]
"""


def test_a_matrix_runs_side_by_side_and_reports(tmp_path):
    (tmp_path / "triggers.toml").write_text(MATRIX)
    done = subprocess.run([sys.executable, "-m", "lab", "run", str(tmp_path / "triggers.toml"), "--parallel", "2",
                           "--results", str(tmp_path / "results")], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 run(s), 2 at a time" in done.stderr
    (folder,) = (tmp_path / "results").iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["all_expectations_held"] and summary["parallel"] == 2
    assert {name: row["counts"]["dump"] for name, row in summary["scenarios"].items()} == \
        {"trigger-trigger-nmi": 1, "trigger-trigger-cpu-1": 1}
    suite = ET.parse(folder / "junit.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "0" and suite.get("errors") == "0"
    runs = [Path(r["folder"]) for r in summary["run_list"]]
    assert all(run.parent == folder and (run / "console.log").exists() for run in runs)
    nmi = json.loads(next(r for r in runs if "nmi" in r.name).joinpath("report.json").read_text())
    assert nmi["preflight"]["kernel.unknown_nmi_panic"] == "1"
    assert [e["text"] for e in nmi["host_events"] if e["kind"] == "trigger"] == \
        ["libvirt inject-nmi (the guest has kernel.unknown_nmi_panic=1)"]
    cpu1 = json.loads(next(r for r in runs if "cpu-1" in r.name).joinpath("report.json").read_text())
    assert [e["text"] for e in cpu1["host_events"] if e["kind"] == "trigger"] == \
        ["taskset -c 1 sh -c 'echo c > /proc/sysrq-trigger'"]
    assert any("CPU: 1 " in e["text"] for e in cpu1["evidence"]) or \
        "CPU: 1 " in (runs[0].parent / next(r for r in runs if "cpu-1" in r.name).name / "console.log").read_text(errors="replace")
