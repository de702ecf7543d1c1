"""Shared by every test: where things are, how a test runs the `lab` command, the test tiers.

Tiers (markers, pyproject.toml):
  (none)    no libvirt, no guest: the specification of the pure parts; `make check`, under a minute
  libvirt   talks to libvirtd, boots nothing (seconds)
  live      boots real guests (minutes each)
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CORPUS = Path(os.environ.get("LAB_CORPUS") or ROOT.parent / "shared" / "corpus")
TRANSCRIPTS = ROOT / "tests" / "transcripts"
TIERS = {"libvirt": 1, "live": 2}
# The live tier's order (node id prefixes; the rest after them, in file order). The published image's run
# boots one guest for about five minutes in the background: it starts first, goes on beside the tests
# that boot one guest at a time (the second core is theirs otherwise idle) and the live batch (three guests
# on two cores while it lasts), and is checked after them. After that check no other guest runs: test_faults compares the host's domains and processes
# before and after each killed run, and side_by_side starts three guests at once.
LIVE_ORDER = (
    "tests/test_published_image.py::test_a_published_image_not_in_the_cache_is_pulled_once_and_verified",
    "tests/test_many_hosts.py",
    "tests/test_snapshot.py",
    "tests/test_keep.py", "tests/test_live.py", "tests/test_releases.py",   # the live batch (lab_run)
    "tests/test_published_image.py::test_run_boots_a_published_image_through_its_own_grub_and_dumps",
)


def lab_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lab", *args]


def run_lab(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """`lab ARGS` to its end, from the checkout, with the test's environment on top of this one's."""
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 900)
    return subprocess.run(lab_command(*args), cwd=ROOT, env={**os.environ, **(env or {})}, **kw)


def wait_until(check, seconds: float, every: float = 0.5):
    """check()'s first truthy answer within `seconds`, asked every `every` seconds; None if it never came."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got or None
        time.sleep(every)


def spawn_lab(*args: str, env: dict, **kw) -> subprocess.Popen:
    """`lab ARGS` in the background, for tests that stop it half-way."""
    kw.setdefault("text", True)
    return subprocess.Popen(lab_command(*args), cwd=ROOT, env=env, **kw)


def pytest_addoption(parser):
    parser.addoption("--update-recorded", action="store_true",
                     help="rewrite the VERDICT and STAGE of tests/transcripts/*.log to what the engine says now "
                          "(review the diff before committing it)")
    parser.addoption("--all-scenarios", action="store_true",
                     help="every base scenario, and every release's kdump scenarios, on a real guest (make "
                          "test-scenarios, make test-releases); without it, the representative ones each test "
                          "module names (REPRESENTATIVE_SCENARIOS, REPRESENTATIVE_RUNS)")
    parser.addoption("--all-faults", action="store_true",
                     help="every fault-injection point with every signal (make test-faults); without it, "
                          "each point once, the signals rotated over them")


def pytest_configure(config):
    # A CI job stopped with SIGTERM (or its terminal closed) unwinds like Ctrl-C: a live run still
    # destroys its domain.
    from lab import signals
    signals.install()


def pytest_collection_modifyitems(config, items):
    # The fast tiers first, so a broken classifier fails in seconds, not after the guests.
    def tier(item):
        return max((rank for name, rank in TIERS.items() if item.get_closest_marker(name)), default=0)

    def place_in_live_tier(item):
        return next((n for n, prefix in enumerate(LIVE_ORDER) if item.nodeid.startswith(prefix)), len(LIVE_ORDER))
    items.sort(key=lambda item: (tier(item), place_in_live_tier(item) if tier(item) == TIERS["live"] else 0))
    if not config.getoption("--all-scenarios"):
        _keep_representative_scenarios(config, items)


def _keep_representative_scenarios(config, items):
    """Deselect (visibly: pytest counts them, and the header names them) live tests of scenarios that a
    module does not list in REPRESENTATIVE_SCENARIOS, or of runs (parameter ids) not in REPRESENTATIVE_RUNS,
    unless a test was asked for by its full id."""
    left_out, kept = set(), []
    for item in items:
        callspec = getattr(item, "callspec", None)
        scenario = callspec and callspec.params.get("scenario")
        scenarios = getattr(item.module, "REPRESENTATIVE_SCENARIOS", None)
        runs = getattr(item.module, "REPRESENTATIVE_RUNS", None)
        asked = any(arg.split("::", 1)[-1] == item.nodeid.split("::", 1)[-1] for arg in config.args if "[" in arg)
        if scenarios is not None and scenario and scenario not in scenarios and not asked:
            left_out.add(scenario)
        elif runs is not None and callspec and callspec.id not in runs and not asked:
            left_out.add(callspec.id)
        else:
            kept.append(item)
    if left_out:
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept
        config._lab_left_out = sorted(left_out)


def pytest_report_collectionfinish(config):
    left_out = getattr(config, "_lab_left_out", None)
    if left_out:
        return ("live runs left to make test-scenarios and make test-releases (--all-scenarios): "
                f"{', '.join(left_out)}")


# test_matrix.py's scenario file: the other panic triggers, two runs of one invocation side by side.
TRIGGER_MATRIX = """
[[scenario]]
base = "panic-reboot"
name = "trigger"
vcpus = 2
expect = "reboot"

[matrix]
trigger = ["nmi", "cpu:1"]
"""


class Invocation:
    """One finished `lab run … --json`: exit code, reports, stderr, and its results folder."""

    def __init__(self, proc: subprocess.Popen, out: str, err: str):
        self.returncode, self.stderr = proc.returncode, err
        self.reports = json.loads(out) if proc.returncode in (0, 1) and out.strip() else []
        found = re.search(r"results in (\S+)", err)
        self.folder = Path(found.group(1)) if found else None


@pytest.fixture(scope="session")
def side_by_side(tmp_path_factory):
    """Two `lab run` invocations started at one moment on one host, as two developers would: the
    trigger matrix (two runs at once; test_matrix.py) and one panic-reboot (test_isolation.py checks
    that the three runs kept apart). One results root and one scratch root for both; three guests on
    this host's two cores, which the deadlines must take."""
    tmp = tmp_path_factory.mktemp("side-by-side")
    (tmp / "triggers.toml").write_text(TRIGGER_MATRIX)
    work = qemu_passable_folder("side-by-side")
    (tmp / "work").symlink_to(work)   # for the test's eyes; the lab is given the real path
    env = dict(os.environ, LAB_WORK_DIR=str(work), LAB_RESULTS_DIR=str(tmp / "results"))
    try:
        procs = [spawn_lab("run", str(tmp / "triggers.toml"), "--parallel", "2", "--json", env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE),
                 spawn_lab("run", "panic-reboot", "--json", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)]
        try:
            matrix, single = (Invocation(p, *p.communicate(timeout=1200)) for p in procs)
        finally:
            for p in procs:   # a timed-out invocation unwinds like Ctrl-C: its guests are destroyed
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
                    p.wait(timeout=180)
        yield tmp, matrix, single
    finally:
        shutil.rmtree(work, ignore_errors=True)


def qemu_passable_folder(purpose: str) -> Path:
    """A folder for LAB_WORK_DIR that QEMU's unprivileged user can pass through: pytest's own temporary
    folders are 0700 (the caller removes it)."""
    folder = Path(tempfile.mkdtemp(prefix=f"panic-lab-{purpose}-", dir="/var/tmp"))
    folder.chmod(0o711)
    return folder


@pytest.fixture
def passable_tmp():
    folder = qemu_passable_folder("test")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def kdump_snapshot():
    """The kdump scenario's ready-to-panic snapshot, made now if there is none (test_faults.py restores
    it for the points past the panic, test_snapshot.py for a repeat)."""
    import time
    from lab import accel, host, image, lifecycle, progress
    from lab import scenario as sc
    conn = host.connect()
    try:
        img = image.ensure(image.DEFAULT)
        found = accel.detect(conn, lambda: str(img.kernel))
        say = progress.Reporter("snapshot", progress.sink_for(sys.stderr), time.monotonic())
        return lifecycle.make_snapshot(conn, sc.resolve("kdump"), img, found, say, 900)
    finally:
        host.disconnect(conn)


@pytest.fixture
def need_tool():
    def need(tool: str) -> str:
        path = shutil.which(tool)
        if not path:
            pytest.skip(f"{tool} is not installed")
        return path
    return need
