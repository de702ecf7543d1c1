"""Many hosts, the user's side (issue 18): which libvirt hosts `lab run` and `lab clean` use (--host,
a scenario file's [hosts], LAB_HOSTS), refused in one line when wrong, and the host of each run in
the reports. No libvirt: `lab run --dry-run` contacts none, and a refusal comes before anything."""
import pytest

from conftest import run_lab

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
