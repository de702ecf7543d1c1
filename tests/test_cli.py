import json

from conftest import run_lab

PANIC_HANG = b"Linux version 6.1.0 (x@y) (gcc)\nKernel panic - not syncing: sysrq triggered crash\n" \
             b"---[ end Kernel panic - not syncing: sysrq triggered crash ]---\n"


def lab(*args, stdin=b""):
    return run_lab(*args, input=stdin)


def test_classify_json_from_stdin():
    done = lab("classify", "--json", stdin=PANIC_HANG)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["verdict"], out["stage"]) == ("hang", "panicked")
    assert {e["line"] for e in out["evidence"]} == {2, 3}


def test_classify_a_missing_file_is_one_line():
    done = lab("classify", "/nonexistent/log")
    assert done.returncode == 2
    assert done.stderr.decode().strip() == "lab: classify: cannot read /nonexistent/log: No such file or directory"


def test_run_unknown_scenario_is_refused_before_anything_starts(tmp_path):
    done = lab("run", "nope", "--results", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.decode().count("\n") == 1
    assert "unknown scenario 'nope'" in done.stderr.decode()
    assert list(tmp_path.iterdir()) == []


def test_run_bad_value_is_refused(tmp_path):
    done = lab("run", "kdump", "--set", "memory_mib=lots", "--results", str(tmp_path))
    assert done.returncode == 2
    assert "lab: scenario: memory_mib='lots': expected a number" in done.stderr.decode()
    assert list(tmp_path.iterdir()) == []
