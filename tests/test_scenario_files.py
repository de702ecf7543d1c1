"""Scenario files (TOML): runs, matrices, and refusals that name the file, the key and the reason."""
import json
from xml.etree import ElementTree as ET

import pytest

from lab import report
from lab import scenario as sc
from lab.errors import InputError
from lab.transcript import read
from lab.verdict import derive

from conftest import ROOT


def write(tmp_path, text):
    path = tmp_path / "runs.toml"
    path.write_text(text)
    return str(path)


def test_a_matrix_expands_every_scenario_over_every_axis(tmp_path):
    runs = sc.load_file(write(tmp_path, """
[[scenario]]
base = "hyperv-kdump-default"
name = "gen1"
repeat = 20

[[scenario]]
name = "plain"
profile = "hyperv-gen1"
kdump = true
expect = "dump"

[matrix]
kdump_config = ["default", "kb2858695"]
hv_crash = [false, true]
"""))
    assert [r.name for r in runs] == [
        "gen1-kdump-config-default-hv-crash-off", "gen1-kdump-config-default-hv-crash-on",
        "gen1-kdump-config-kb2858695-hv-crash-off", "gen1-kdump-config-kb2858695-hv-crash-on",
        "plain-kdump-config-default-hv-crash-off", "plain-kdump-config-default-hv-crash-on",
        "plain-kdump-config-kb2858695-hv-crash-off", "plain-kdump-config-kb2858695-hv-crash-on",
    ]
    gen1 = runs[:4]
    assert all(r.profile == "hyperv-gen1" and r.fault == "stale-vmbus" and r.repeat == 20 for r in gen1)
    assert [(r.kdump_config, r.hv_crash) for r in gen1] == [("default", False), ("default", True),
                                                             ("kb2858695", False), ("kb2858695", True)]


def test_plain_scenarios_without_a_matrix(tmp_path):
    runs = sc.load_file(write(tmp_path, """
[[scenario]]
name = "nmi-dump"
kdump = true
trigger = "nmi"
vcpus = 2
expect = "dump"

[[scenario]]
name = "second-cpu"
kdump = true
vcpus = 2
trigger = "cpu:1"
"""))
    assert [(r.name, r.trigger, r.vcpus) for r in runs] == [("nmi-dump", "nmi", 2), ("second-cpu", "cpu:1", 2)]


@pytest.mark.parametrize("text, words", [
    ("[[scenario]\nname = 1", "malformed TOML"),
    ('[[scenario]]\nname = "x"\ncolour = "blue"\n', "[[scenario]] #1: unknown key 'colour'"),
    ('[[scenario]]\nname = "x"\nmemory_mib = 512\nkdump = true\n', "memory_mib=512 leaves less than 384 MiB"),
    ('[[scenario]]\nname = "x"\nvcpus = 64\n', "host's cores"),
    ('[[scenario]]\nname = "x"\nstall_seconds = -1\n', "stall_seconds must be positive"),
    ('[[scenario]]\nname = "x"\nboot_seconds = 0\n', "boot_seconds must be positive"),
    ('[[scenario]]\nname = "x"\nkdump = "yes"\n', "kdump = 'yes': expected bool"),
    ('[[scenario]]\nname = "x"\ntrigger = "cpu:1"\n', "the guest has 1 vCPU(s)"),
    ('[[scenario]]\nname = "x"\nrepeat = 0\n', "repeat=0 is outside 1..100"),
    ('[[scenario]]\nbase = "nope"\n', "unknown scenario 'nope'"),
    ('[[scenario]]\nkdump = true\n', "needs a name"),
    ('[[scenario]]\nname = "x"\n[matrix]\nflavour = ["a"]\n', "[matrix]: unknown key 'flavour'"),
    ('[[scenario]]\nname = "x"\n[matrix]\nvcpus = []\n', "vcpus must be a non-empty list"),
    ('[[scenario]]\nname = "../../x"\n', "lowercase letters, digits and dashes"),
    ('name = "x"\n', "unknown top-level key 'name'"),
])
def test_bad_files_are_refused_naming_file_key_and_reason(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as err:
        sc.load_file(path)
    message = str(err.value)
    assert message.startswith(f"scenario: {path}") and words in message, message
    assert "\n" not in message


def _recorded(name: str, scenario: str, expect: str) -> dict:
    """A report built from one of the lab's recorded transcripts (as the runner builds it)."""
    path = ROOT / "tests" / "transcripts" / name
    text = path.read_bytes().split(b"\n---\n", 1)[1]
    v = derive(read(text))
    return {"run_id": f"{scenario}-1", "scenario": {"name": scenario, "expect": expect}, "verdict": v.verdict,
            "stage": v.stage, "diagnosis": v.diagnosis, "expectation_met": v.verdict == expect,
            "stages": [vars(s) for s in v.stages], "evidence": [{"line": e.line, "text": e.text} for e in v.evidence],
            "host_events": [], "cut_short": None, "timings": {"wall_seconds": 90.0}, "artifacts": {}}


def test_summary_gives_rates_and_junit_one_testcase_per_run(tmp_path):
    runs = [_recorded("kdump-tools-dump-then-reboot.log", "kdump", "dump"),
            _recorded("panic-reboot-kernel-panic-5.log", "kdump", "dump"),
            _recorded("panic-hang-kernel-panic-0.log", "panic-hang", "hang")]
    folder = tmp_path / "lab-1"
    folder.mkdir()
    data = report.write_invocation(folder, runs, parallel=2, wall=200.0)
    kdump = data["scenarios"]["kdump"]
    assert kdump["runs"] == 2 and kdump["counts"]["dump"] == 1 and kdump["counts"]["reboot"] == 1
    assert kdump["rates"] == {"reboot": 0.5, "dump": 0.5} and kdump["expectation_met"] == 1
    assert data["all_expectations_held"] is False
    assert json.loads((folder / "summary.json").read_text())["runs"] == 3
    suite = ET.parse(folder / "junit.xml").getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    failed = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert [c.get("classname") for c in failed] == ["panic-lab.kdump"]
    assert "expected dump, got reboot" in failed[0].find("failure").get("message")


def test_a_plain_scenario_keeps_the_defaults_it_does_not_set(tmp_path):
    (plain,) = sc.load_file(write(tmp_path, '[[scenario]]\nname = "p"\nkdump = true\n'))
    assert (plain.profile, plain.fault, plain.kernel_panic, plain.repeat) == ("default", "", 0, 1)


def test_the_html_report_escapes_what_it_shows(tmp_path):
    run = _recorded("panic-hang-kernel-panic-0.log", "panic-hang", "hang")
    run["diagnosis"] = "<script>alert(1)</script>"
    data = report.summary([run], "lab-x", 1, 10.0)
    page = report.html_report([run], data)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '<table id="matrix">' in page and "panic-hang" in page


class _Terminal:
    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_the_progress_board_keeps_one_line_per_run():
    from lab.runner import Board
    term = _Terminal()
    board = Board(term)
    board.write("[   0.3s] kdump-1: started panic-lab-kdump-1 under tcg; waiting for the login prompt\n")
    board.write("[   1.0s] kdump-2: started panic-lab-kdump-2 under tcg; waiting for the login prompt\n")
    board.write("[  49.0s] kdump-1: stage panicked\n")
    last = term.text.rsplit("\x1b[J", 1)[-1].splitlines()   # what the screen shows after the last redraw
    assert [line.split()[:2] for line in last] == [["kdump-1", "panicked"], ["kdump-2", "starting"]]
    board.write("lab: kdump-2: host: libvirt went away\n")   # other lines go above the board
    assert "lab: kdump-2: host: libvirt went away\n" in term.text
