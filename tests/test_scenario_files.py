"""Scenario files (TOML): runs, matrices, and refusals that name the file, the key and the reason."""
import json
import time
from xml.etree import ElementTree as ET

import pytest

from lab import recorded, results
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
    ('[[scenario]]\nname = "x"\nstall_seconds = nan\n', "stall_seconds=nan: expected a finite number"),
    ('[[scenario]]\nname = "x"\nboot_seconds = inf\n', "boot_seconds=inf: expected a finite number"),
    ('[[scenario]]\nname = "x"\nboot_seconds = -inf\n', "boot_seconds=-inf: expected a finite number"),
    ('[[scenario]]\nname = "x"\nstall_seconds = 1' + "0" * 400 + '\n', "stall_seconds=inf: expected a finite"),
    ('[[scenario]]\nname = "x"\nstall_seconds = 7200\n', "stall_seconds=7200 is above 3600"),
    ('[[scenario]]\nname = "x"\n[matrix]\nboot_seconds = [60, nan]\n', "boot_seconds=nan: expected a finite"),
    ('[[scenario]]\nname = "x\\n"\n', "'x\\n': a scenario name is lowercase letters"),
    ('[[scenario]]\nname = "x"\ncrashkernel = "256M\\n"\n', "crashkernel='256M\\n': expected a size"),
    ('[[scenario]]\nname = "x"\nkdump_cmdline_append = "a\\rb"\n', "may not carry quotes, newlines"),
    ('[[scenario]]\nname = 5\n', "[[scenario]] #1: name = 5: expected str"),
    ('[[scenario]]\nbase = ["kdump"]\n', "[[scenario]] #1: base = ['kdump']: expected str"),
    ('scenario = 5\n', "no [[scenario]] table"),
    ('x = ' + "[" * 2000 + "]" * 2000 + '\n', "malformed TOML: arrays or tables nested too deeply"),
    ('[[scenario]]\nname = "x"\n[[scenario]]\nname = "x"\nkdump = true\n',
     "two runs would be named x ([[scenario]] #1; [[scenario]] #2)"),
    ('[[scenario]]\nname = "x"\n[matrix]\nextra_cmdline = ["quiet", "QUIET"]\n',
     "two runs would be named x-extra-cmdline-quiet ([[scenario]] #1, extra_cmdline = 'quiet'; "
     "[[scenario]] #1, extra_cmdline = 'QUIET')"),
    ('[[scenario]]\nname = "' + "a" * 60 + '"\n[matrix]\nkdump_config = ["default", "kb2858695"]\n',
     f"two runs would be named {'a' * 60}-kdu ([[scenario]] #1, kdump_config = 'default'; "
     "[[scenario]] #1, kdump_config = 'kb2858695'): a name is cut to 64 characters"),
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


def test_bad_bytes_are_refused_as_not_utf8(tmp_path):
    path = tmp_path / "runs.toml"
    path.write_bytes('[[scenario]]\nname = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(InputError, match=r"runs.toml: not UTF-8 text \(byte 24 is 0xe9\)"):
        sc.load_file(str(path))


def test_a_matrix_is_counted_before_it_is_expanded(tmp_path):
    # Six axes of ten values: a million runs from a few hundred bytes. The first combination is not even
    # valid (kernel_panic=-2): the count comes first, and nothing is expanded.
    axes = {"kernel_panic": [-2, *range(1, 10)], "memory_mib": list(range(1024, 1034)),
            "stall_seconds": list(range(60, 70)), "boot_seconds": list(range(100, 110)),
            "kdump_cmdline_append": [f"a{i}" for i in range(10)], "extra_cmdline": [f"b{i}" for i in range(10)]}
    text = '[[scenario]]\nname = "x"\n[matrix]\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in axes.items())
    path = write(tmp_path, text)
    started = time.monotonic()
    with pytest.raises(InputError) as err:
        sc.load_file(path)
    assert time.monotonic() - started < 2
    assert str(err.value) == (f"scenario: {path}: expands to 1000000 runs (1 scenario(s) x 1000000 matrix "
                              f"combination(s), repeats included); the limit is {sc.MAX_RUNS}")


@pytest.mark.parametrize("text, runs", [
    ('[[scenario]]\nname = "x"\nrepeat = 10\n[matrix]\nkernel_panic = [0,1,2,3,4,5,6,7,8,9]\n'
     'memory_mib = [1024,1025,1026,1027,1028,1029,1030,1031,1032,1033]\n', 1000),
    ('[[scenario]]\nname = "x"\nrepeat = 11\n[matrix]\nkernel_panic = [0,1,2,3,4,5,6,7,8,9]\n'
     'memory_mib = [1024,1025,1026,1027,1028,1029,1030,1031,1032,1033]\n', 1100),
    ('[[scenario]]\nname = "x"\n[matrix]\nkernel_panic = [0,1,2,3,4,5,6,7,8,9]\nrepeat = [50, 51]\n', 1010),
    ('[[scenario]]\nname = "x"\nrepeat = 100\n' + '[[scenario]]\nbase = "kdump"\nrepeat = 100\n' * 9
     + '[[scenario]]\nbase = "panic-hang"\nrepeat = 1\n', 1001),
])
def test_the_run_limit_counts_repeats(tmp_path, text, runs):
    path = write(tmp_path, text)
    if runs <= sc.MAX_RUNS:
        assert sum(s.repeat for s in sc.load_file(path)) == runs
        return
    with pytest.raises(InputError, match=rf"expands to {runs} runs .*; the limit is {sc.MAX_RUNS}$"):
        sc.load_file(path)


def test_check_total_limits_runs_over_all_files_and_names():
    kdump = sc.with_overrides(sc.resolve("kdump"), ["repeat=100"])
    sc.check_total([kdump] * 10)
    with pytest.raises(InputError, match=rf"11 scenario\(s\) add up to 1100 runs, repeats included; the limit is "
                                         rf"{sc.MAX_RUNS} per invocation"):
        sc.check_total([kdump] * 11)


def test_check_total_refuses_two_different_scenarios_under_one_name(tmp_path):
    a = sc.load_file(write(tmp_path, '[[scenario]]\nname = "kdump"\nkdump = true\n'))
    sc.check_total([sc.resolve("kdump"), sc.resolve("kdump")])   # the same scenario twice just runs twice
    with pytest.raises(InputError) as err:
        sc.check_total([sc.resolve("kdump"), *a], sources=["built-in kdump", str(tmp_path / "runs.toml")])
    assert str(err.value) == (f"scenario: two different scenarios are named kdump (from built-in kdump and from "
                              f"{tmp_path / 'runs.toml'}): their runs would be merged under that name")
    with pytest.raises(InputError, match="from scenario #1 of the list and from scenario #2 of the list"):
        sc.check_total([sc.resolve("kdump"), *a])


def _recorded(name: str, scenario: str, expect: str) -> dict:
    """A report built from one of the lab's recorded transcripts (as the runner builds it)."""
    path = ROOT / "tests" / "transcripts" / name
    v = derive(read(recorded.load(path).console))
    return {"run_id": f"{scenario}-1", "scenario": {"name": scenario, "expect": expect}, "verdict": v.verdict,
            "stage": v.stage, "diagnosis": v.diagnosis, "expectation_met": v.verdict == expect,
            "stages": [vars(s) for s in v.stages], "evidence": [{"line": e.line, "text": e.text} for e in v.evidence],
            "host_events": [], "cut_short": None, "timings": {"wall_seconds": 90.0}, "artifacts": {}}


def test_summary_gives_rates_and_junit_one_testcase_per_run(tmp_path):
    runs = [_recorded("kdump-tools-dump-then-reboot.log", "kdump", "dump"),
            _recorded("panic-reboot-kernel-panic-5.log", "kdump", "dump"),
            _recorded("panic-hang-kernel-panic-0.log", "panic-hang", "hang")]
    for run, uri in zip(runs, ["qemu:///system", "qemu+ssh://root@h1/system", "qemu:///system"]):
        run["host"] = {"uri": uri, "machine": "m", "kernel": "k"}
    folder = tmp_path / "lab-1"
    folder.mkdir()
    data = results.write_invocation(folder, runs, parallel=2, wall=200.0)
    kdump = data["scenarios"]["kdump"]
    assert kdump["runs"] == 2 and kdump["counts"]["dump"] == 1 and kdump["counts"]["reboot"] == 1
    assert kdump["rates"] == {"reboot": 0.5, "dump": 0.5} and kdump["expectation_met"] == 1
    assert kdump["hosts"] == {"qemu:///system": 1, "qemu+ssh://root@h1/system": 1}
    assert data["scenarios"]["panic-hang"]["hosts"] == {"qemu:///system": 1}
    assert data["all_expectations_held"] is False
    assert json.loads((folder / "summary.json").read_text())["runs"] == 3
    suite = ET.parse(folder / "junit.xml").getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    failed = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert [c.get("classname") for c in failed] == ["panic-lab.kdump"]
    assert "expected dump, got reboot" in failed[0].find("failure").get("message")
    hosts = [c.find("properties/property[@name='host']").get("value") for c in suite.iter("testcase")]
    assert hosts == ["qemu:///system", "qemu+ssh://root@h1/system", "qemu:///system"]


def test_a_plain_scenario_keeps_the_defaults_it_does_not_set(tmp_path):
    (plain,) = sc.load_file(write(tmp_path, '[[scenario]]\nname = "p"\nkdump = true\n'))
    assert (plain.profile, plain.fault, plain.kernel_panic, plain.repeat) == ("default", "", 0, 1)


def test_the_html_report_escapes_what_it_shows(tmp_path):
    run = _recorded("panic-hang-kernel-panic-0.log", "panic-hang", "hang")
    run["diagnosis"] = "<script>alert(1)</script>"
    data = results.summary([run], "lab-x", 1, 10.0)
    page = results.html_report([run], data)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '<table id="matrix">' in page and "panic-hang" in page
