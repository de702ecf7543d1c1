"""The pytest plugin's Run and ConsoleText, on the lab's recorded transcripts (no VM), and its refusals."""
from pathlib import Path

import pytest

from lab import recorded

pytest_plugins = ["pytester"]
TRANSCRIPTS = sorted((Path(__file__).parent / "transcripts").glob("*.log"))


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_a_saved_log_loads_into_the_same_run_object(lab_recorded, path):
    run = lab_recorded(path)
    label = recorded.load(path)
    assert (run.verdict, run.report["stage"]) == (label.verdict, label.stage)
    assert run.transcript.contains("Kernel panic - not syncing")
    assert run.stage("panicked").t is None            # a saved log has no host times
    first = run.stage("booted") if "booted" in run.stages else run.stage("panicked")
    assert run.transcript.lines[first.line - 1].endswith(first.text)


def test_markers_in_order_and_stage_slices(lab_recorded):
    run = lab_recorded(Path(__file__).parent / "transcripts" / "kdump-tools-dump-then-reboot.log")
    run.transcript.assert_in_order(r"Kernel panic - not syncing", r"elfcorehdr=", r"saved vmcore in", r"login:")
    with pytest.raises(AssertionError, match="not found after line"):
        run.transcript.assert_in_order(r"saved vmcore in", r"Kernel panic - not syncing: sysrq")
    capture = run.transcript.stage_slice("capture_kernel")
    assert capture[0].startswith("Linux version") and not any("saved vmcore" in line for line in capture)
    with pytest.raises(KeyError, match="not reached"):
        run.stage("no_such_stage")


def test_lab_run_without_a_scenario_is_a_usage_error(pytester):
    pytester.makepyfile("def test_x(lab_run):\n    pass\n")
    result = pytester.runpytest_subprocess()
    result.stdout.fnmatch_lines(["*lab_run needs @pytest.mark.lab(scenario=...)*"])
    assert result.ret != 0


def test_options_are_registered(pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--lab-image=*", "*--lab-accel=*", "*--lab-results=*"])
