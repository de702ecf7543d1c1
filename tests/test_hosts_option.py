"""Many hosts, the user's side (issue 18): which libvirt hosts `lab run` and `lab clean` use (--host,
a scenario file's [hosts], LAB_HOSTS), refused in one line when wrong, and the host of each run in
the reports. No libvirt: `lab run --dry-run` contacts none, and a refusal comes before anything."""
import json

import pytest

from conftest import run_lab

from lab import report, results
from lab import scenario as sc
from lab.errors import InputError
from lab.hosts_option import chosen_hosts, checked_uri, short_uri

LOCAL, REMOTE, OTHER = "qemu:///system", "qemu+ssh://root@h1/system", "qemu+tls://h2.example/system"
# Should a bad host slip through, the run stops at an unreachable libvirt instead of booting a guest.
NO_LIBVIRT = {"LAB_URI": "qemu+unix:///system?socket=/nonexistent/libvirt-sock"}


def hosts_file(tmp_path, uris: str, name="runs.toml") -> str:
    path = tmp_path / name
    path.write_text(f'[[scenario]]\nbase = "panic-reboot"\nname = "{path.stem}"\n\n[hosts]\nuris = {uris}\n')
    return str(path)


# -- the choice ---------------------------------------------------------------------------------------
def test_the_command_line_wins_then_the_files_then_lab_hosts_then_the_default():
    env = {"LAB_HOSTS": OTHER}
    assert chosen_hosts([REMOTE], [LOCAL], env) == [REMOTE]
    assert chosen_hosts([], [LOCAL], env) == [LOCAL]
    assert chosen_hosts([], [], env) == [OTHER]
    assert chosen_hosts([], [], {}) is None                  # the single default host, as before
    assert chosen_hosts([], [], {"LAB_HOSTS": " ,\n "}) is None   # set but empty is not a host


def test_order_is_kept_and_repeats_are_dropped():
    assert chosen_hosts([REMOTE, LOCAL, REMOTE, OTHER, LOCAL], [], {}) == [REMOTE, LOCAL, OTHER]
    assert chosen_hosts([], [OTHER, LOCAL, OTHER], {}) == [OTHER, LOCAL]
    assert chosen_hosts([], [], {"LAB_HOSTS": f"{REMOTE},{LOCAL}  {REMOTE}\n\t{OTHER},,"}) == [REMOTE, LOCAL, OTHER]


@pytest.mark.parametrize("uri", [LOCAL, "qemu:///session", REMOTE, OTHER, "test:///default",
                                 "qemu+ssh://root@h:2222/system?keyfile=/root/.ssh/lab&no_verify=1",
                                 "qemu+unix:///system?socket=/run/libvirt/libvirt-sock"])
def test_libvirt_uris_of_the_qemu_and_test_drivers_are_taken(uri):
    assert checked_uri(uri, "--host") == uri


@pytest.mark.parametrize("uri", ["", "system", "qemu", "qemu:/system", "qemu://", "qemu+ssh://root@h",
                                 "http://h/system", "xen:///system", "lxc:///", "qemu:///sys tem",
                                 "qemu:///system\n", "qemu://h\x00/system", "QEMU:///system", 5])
def test_anything_else_is_refused_in_one_line_that_says_where_it_came_from(uri):
    with pytest.raises(InputError) as err:
        checked_uri(uri, "LAB_HOSTS")
    assert err.value.stage == "hosts" and "\n" not in str(err.value)
    assert str(err.value).startswith("hosts: LAB_HOSTS: ") and "qemu:///system" in str(err.value)


def test_a_bad_uri_is_refused_from_every_source_even_one_that_is_not_used():
    with pytest.raises(InputError, match="--host: 'qemu:/x'"):
        chosen_hosts(["qemu:/x"], [], {})
    with pytest.raises(InputError, match="LAB_HOSTS: 'ssh://h/'"):
        chosen_hosts([LOCAL], [], {"LAB_HOSTS": f"{LOCAL} ssh://h/"})


def test_the_table_shows_a_uri_without_its_parameters_and_cut_short():
    assert short_uri("qemu+ssh://root@h1/system?keyfile=/root/.ssh/id&no_tty=1") == REMOTE
    assert short_uri(LOCAL) == LOCAL and short_uri(None) == "-"
    long = "qemu+ssh://administrator@hypervisor-17.lab.example.org/system"
    assert len(short_uri(long)) == 40 and short_uri(long).startswith("qemu+ssh://administrator@") \
        and short_uri(long).endswith("...")


# -- [hosts] in a scenario file --------------------------------------------------------------------------
def test_a_file_names_its_hosts_and_its_runs_are_read_as_before(tmp_path):
    path = hosts_file(tmp_path, f'["{LOCAL}", "{REMOTE}"]')
    assert [s.name for s in sc.load_file(path)] == ["runs"]
    assert sc.load_file_hosts(path) == [LOCAL, REMOTE]
    plain = tmp_path / "plain.toml"
    plain.write_text('[[scenario]]\nbase = "kdump"\nname = "plain"\n')
    assert sc.load_file_hosts(str(plain)) == []


@pytest.mark.parametrize("table, words", [
    ('uris = ["http://h/system"]', "[hosts] uris: 'http://h/system': expected a libvirt URI"),
    ('uris = ["qemu:///system", 7]', "[hosts] uris: 7: expected a libvirt URI"),
    ("uris = []", "[hosts] uris: expected a non-empty list of libvirt URIs"),
    ('uris = "qemu:///system"', "[hosts] uris: expected a non-empty list of libvirt URIs"),
    ("", "[hosts] uris: expected a non-empty list"),
    ('uri = ["qemu:///system"]', "[hosts]: unknown key 'uri' (expected uris)"),
])
def test_a_bad_hosts_table_names_the_file_and_the_key(tmp_path, table, words):
    path = tmp_path / "runs.toml"
    path.write_text(f'[[scenario]]\nbase = "kdump"\n\n[hosts]\n{table}\n')
    for read in (sc.load_file, sc.load_file_hosts):
        with pytest.raises(InputError) as err:
            read(str(path))
        assert str(err.value).startswith(f"hosts: {path}: {words}") and "\n" not in str(err.value)


def test_hosts_that_is_not_a_table_is_refused(tmp_path):
    path = tmp_path / "runs.toml"
    path.write_text(f'hosts = ["{LOCAL}"]\n[[scenario]]\nbase = "kdump"\n')
    with pytest.raises(InputError, match=r"runs.toml: \[hosts\]: expected a table with uris"):
        sc.load_file(str(path))


# -- the command line -------------------------------------------------------------------------------------
def dry_run(tmp_path, *args, env=None):
    env = {"LAB_CACHE_DIR": str(tmp_path / "cache"), "LAB_URI": "test:///nowhere", "LAB_HOSTS": "", **(env or {})}
    return run_lab("run", *args, "--dry-run", "--results", str(tmp_path / "r"), env=env, text=True, timeout=120)


def test_a_dry_run_says_which_hosts_and_follows_the_precedence(tmp_path):
    file = hosts_file(tmp_path, f'["{OTHER}", "{LOCAL}"]')
    asked = dry_run(tmp_path, file, "--host", REMOTE, "--host", LOCAL, "--host", REMOTE, env={"LAB_HOSTS": OTHER})
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.splitlines()[0] == f"hosts: {REMOTE}, {LOCAL}"
    from_file = dry_run(tmp_path, file, env={"LAB_HOSTS": REMOTE})
    assert from_file.stdout.splitlines()[0] == f"hosts: {OTHER}, {LOCAL}"
    from_env = dry_run(tmp_path, "panic-reboot", env={"LAB_HOSTS": f"{REMOTE},{OTHER}"})
    assert from_env.stdout.splitlines()[0] == f"hosts: {REMOTE}, {OTHER}"
    default = dry_run(tmp_path, "panic-reboot")
    assert default.stdout.splitlines()[0] == "hosts: test:///nowhere (the default host: LAB_URI or qemu:///system)"
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("args, env, words", [
    (["panic-reboot", "--host", "qemu+ssh://root@h1"], {}, "lab: hosts: --host: 'qemu+ssh://root@h1': expected"),
    (["panic-reboot"], {"LAB_HOSTS": f"{LOCAL},ftp://h/x"}, "lab: hosts: LAB_HOSTS: 'ftp://h/x': expected"),
])
def test_a_bad_host_is_one_line_exit_2_and_nothing_is_made(tmp_path, args, env, words):
    done = run_lab("run", *args, "--results", str(tmp_path / "r"), env={**NO_LIBVIRT, **env}, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith(words), done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "r").exists()


def test_a_bad_hosts_table_in_a_file_is_one_line(tmp_path):
    file = hosts_file(tmp_path, '["qemu:///system", "vbox:///session"]')
    done = run_lab("run", file, "--host", LOCAL, "--results", str(tmp_path / "r"), env=NO_LIBVIRT, text=True,
                   timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"lab: hosts: {file}: [hosts] uris: 'vbox:///session': expected a libvirt URI such as " \
                          "qemu:///system or qemu+ssh://root@host/system\n"
    assert not (tmp_path / "r").exists()


def test_lab_clean_refuses_a_bad_host_before_it_contacts_any(tmp_path):
    done = run_lab("clean", "--host", "qemu:///system?x\x7f", env={**NO_LIBVIRT, "LAB_CACHE_DIR": str(tmp_path)},
                   text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("lab: hosts: --host: ") and done.stderr.count("\n") == 1
    assert "libvirt unreachable" not in done.stderr   # refused before the connection was tried


# -- the host in every report, and in what is made of them ------------------------------------------------
def test_a_run_that_never_started_and_an_interrupted_one_carry_their_host():
    kdump = sc.resolve("kdump")
    error = report.ErrorReport(kdump, "host", "host: libvirt unreachable", host_uri=REMOTE).to_json()
    assert error["host"] == {"uri": REMOTE}
    assert report.ErrorReport(kdump, "host", "x").to_json()["host"] is None   # not known: null, never left out
    stopped = report.InterruptedReport("kdump-1", kdump, "tcg", "debian12", {"by": "user", "why": "Ctrl-C"},
                                       host_uri=LOCAL).to_json()
    assert stopped["host"] == {"uri": LOCAL}
    with pytest.raises(TypeError):   # a keyword, so that a positional field added later cannot take its place
        report.ErrorReport(kdump, "host", "x", REMOTE)


def _run(name: str, uri: str | None, verdict: str = "reboot") -> dict:
    return {"run_id": f"{name}-{verdict}", "scenario": {"name": name, "expect": "reboot"}, "verdict": verdict,
            "stage": "reset", "diagnosis": "reset after the panic", "expectation_met": verdict == "reboot",
            "accel": {"name": "tcg"}, "timings": {"wall_seconds": 80.0}, "stages": [], "host_events": [],
            "cut_short": None, "artifacts": {}, "host": {"uri": uri, "machine": "m", "kernel": "k"} if uri else None}


def test_the_table_summary_junit_and_page_say_which_host_ran_each_run(tmp_path):
    keyed = f"{REMOTE}?keyfile=/root/.ssh/lab_key"
    runs = [_run("a", LOCAL), _run("a", keyed), _run("a", keyed, "hang"), _run("b", LOCAL),
            {**report.ErrorReport(sc.resolve("kdump"), "host", "host: gone").to_json()}]
    folder = tmp_path / "lab-1"
    folder.mkdir()
    data = results.write_invocation(folder, runs, parallel=2, wall=100.0)
    assert data["scenarios"]["a"]["hosts"] == {LOCAL: 1, keyed: 2}   # the full URI in JSON
    assert data["scenarios"]["b"]["hosts"] == {LOCAL: 1} and data["scenarios"]["kdump"]["hosts"] == {}
    assert data["hosts"] == [LOCAL, keyed]
    assert [r["host"] for r in data["run_list"]] == [LOCAL, keyed, keyed, LOCAL, None]
    assert json.loads((folder / "summary.json").read_text())["scenarios"]["a"]["hosts"] == {LOCAL: 1, keyed: 2}
    junit = (folder / "junit.xml").read_text()
    assert junit.count(f'<property name="host" value="{keyed}" />') == 2 and '<property name="host" value="" />' in junit
    lines = results.table(runs).splitlines()
    assert lines[0].split()[:3] == ["scenario", "host", "accel"]
    assert [line.split()[1] for line in lines[1:]] == [LOCAL, REMOTE, REMOTE, LOCAL, "-"]   # no ?keyfile
    assert "keyfile" not in results.table(runs)
    page = (folder / "report.html").read_text()
    assert "<th>hosts</th>" in page
    assert (f'<td class="hosts"><span title="{LOCAL}">{LOCAL}</span> (1), '
            f'<span title="{keyed}">{REMOTE}</span> (2)</td>') in page
    assert page.count(f'host <span title="{keyed}">{REMOTE}</span>;') == 2


def test_one_host_keeps_the_table_as_narrow_as_its_uri():
    lines = results.table([_run("panic-reboot", LOCAL), _run("panic-hang", LOCAL, "hang")]).splitlines()
    assert lines[0].index("accel") - lines[0].index("host") == len(LOCAL) + 2
