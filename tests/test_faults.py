"""Fault injection: the lab is killed at each stage of a run, with SIGINT, SIGTERM and SIGKILL.

After SIGINT/SIGTERM the lab must have removed everything itself; after any signal, `lab clean` must
leave the libvirt domain list, the cache, the temporary directory and the process table exactly as
they were before the run started.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_lab, spawn_lab, wait_until
from lab import host, paths

pytestmark = pytest.mark.live

# stage -> (scenario, the lab's progress line that says the stage is reached, extra wait in seconds)
POINTS = {
    "image_build": ("panic-reboot", r"^image: mmdebstrap ", 5.0),   # mmdebstrap has mounted proc/sys by then
    "image_build_late": ("panic-reboot", r"^image: mmdebstrap ", 20.0),   # installing packages in the chroot
    "defined": ("panic-reboot", r": created panic-lab-\S+ \(paused\)", 0.0),
    "booting": ("panic-reboot", r": started panic-lab-\S+ under", 8.0),
    "booting_late": ("panic-reboot", r": started panic-lab-\S+ under", 25.0),   # userspace, cloud-init
    "panicked": ("kdump", r": stage panicked$", 0.0),
    "capture_kernel": ("kdump", r": stage capture_kernel_booted$", 0.0),
}
# Past the panic, the run is restored from the kdump snapshot (made once, before any state is compared):
# what is killed there is the panic and the capture kernel, not a cold boot, which the points before cover.
FROM_SNAPSHOT = {"panicked", "capture_kernel"}
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]
# A closed terminal (SIGHUP) unwinds like SIGTERM: tried while the guest boots and once it has panicked.
INJECTIONS = [(stage, sig) for stage in POINTS for sig in SIGNALS] + [("booting", signal.SIGHUP), ("panicked", signal.SIGHUP)]
# make test: each point but the late build once, every signal at least once (make test-faults: all of INJECTIONS).
REPRESENTATIVE = [("image_build", signal.SIGTERM), ("defined", signal.SIGKILL), ("booting", signal.SIGHUP),
                  ("booting_late", signal.SIGINT), ("panicked", signal.SIGTERM), ("capture_kernel", signal.SIGKILL)]
CARRIED_OUT: list[str] = []   # injections done in this session (pytest runs them in this process)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def _lab_processes() -> set[str]:
    """Console, QEMU and builder processes that belong to lab runs."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (paths.NAME_PREFIX in cmd and ("virsh" in cmd or "qemu" in cmd)) or "mmdebstrap" in cmd or "lab.reaper" in cmd:
            found.add(f"{proc.name} {cmd[:120]}")
    return found


def _lab_env(tmp_path: Path, **extra) -> dict:
    """The lab's environment in a test: its own temporary folder, so that what it leaves there is seen
    (and nothing else that runs on this machine meanwhile)."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return dict(os.environ, LAB_RESULTS_DIR=str(tmp_path / "results"), TMPDIR=str(tmp_path / "tmp"), **extra)


def _state(cache: Path, tmp: Path) -> dict:
    conn = host.connect()
    try:
        domains = sorted(d.name() for d in conn.listAllDomains())
    finally:
        host.disconnect(conn)
    return {"domains": domains, "cache": _tree(cache), "tmp": set(os.listdir(tmp)),
            "processes": _lab_processes()}


_lab = spawn_lab


def _layout_of_a_machine_that_ran_the_lab(env: dict) -> None:
    """The marked cache, scratch folder and memory ledger that the first run of the lab makes: they stay,
    by design."""
    subprocess.run([sys.executable, "-c", "from lab import budget, paths; paths.scratch_root(); budget.Ledger().release('')"],
                   cwd=ROOT, env=env, check=True)


@pytest.fixture
def fresh_cache(tmp_path):
    """A cache without the image (the lab makes and marks the folder itself, then `images/` is there as on
    any machine that ran the lab once)."""
    return tmp_path / "cache"


def _injections(config) -> list:
    return INJECTIONS if config.getoption("--all-faults") else REPRESENTATIVE


def pytest_generate_tests(metafunc):
    if metafunc.definition.originalname == "test_killed_lab_leaves_nothing_behind":
        chosen = _injections(metafunc.config)
        metafunc.parametrize("stage,sig", chosen, ids=[f"{s}-{g.name}" for s, g in chosen])


def test_killed_lab_leaves_nothing_behind(stage, sig, tmp_path, fresh_cache, request):
    scenario, progress, extra = POINTS[stage]
    how = ()
    if stage in FROM_SNAPSHOT:
        request.getfixturevalue("kdump_snapshot")
        how = ("--snapshot",)
    env = _lab_env(tmp_path)
    cache = paths.cache_dir()
    if stage.startswith("image_build"):   # a cache without the image, so that the run has to build it
        env["LAB_CACHE_DIR"] = str(fresh_cache)
        cache = fresh_cache
    _layout_of_a_machine_that_ran_the_lab(env)
    (cache / "images").mkdir(exist_ok=True)
    before = _state(cache, tmp_path / "tmp")

    lab = _lab("run", scenario, *how, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    seen = []
    deadline = time.monotonic() + 300
    for line in lab.stderr:
        seen.append(line.rstrip())
        if re.search(progress, line.rstrip()):
            break
        assert time.monotonic() < deadline, f"{stage} not reached in 300 s:\n" + "\n".join(seen[-10:])
    else:
        pytest.fail(f"the lab ended before {stage}:\n" + "\n".join(seen[-10:]))
    time.sleep(extra)
    lab.send_signal(sig)
    _, rest = lab.communicate(timeout=180)
    seen += rest.splitlines()
    _record(stage, sig)

    if sig != signal.SIGKILL:
        assert lab.returncode == 130, "\n".join(seen[-10:])
        assert f"lab: interrupted ({sig.name})" in seen[-1]
        assert _state(cache, tmp_path / "tmp") == before, "the lab left something behind without `lab clean`"
    else:   # libvirt destroys a started domain when the killed lab's connection closes (autodestroy); a
        # restored one (libvirt's restore has no such flag) is destroyed by the lab's watcher (lab/reaper.py)
        assert wait_until(lambda: _state(cache, tmp_path / "tmp")["domains"] == before["domains"], 15), "a domain outlived kill -9"
    cleaned = run_lab("clean", env=env, text=True, timeout=120)
    assert cleaned.returncode == 0, cleaned.stderr
    assert _state(cache, tmp_path / "tmp") == before, cleaned.stdout


def test_a_stopped_benchmark_leaves_nothing_behind(tmp_path):
    """`make bench` runs for an hour: stopping it half-way must not strand its guest."""
    env = _lab_env(tmp_path)
    _layout_of_a_machine_that_ran_the_lab(env)
    before = _state(paths.cache_dir(), tmp_path / "tmp")
    bench = subprocess.Popen([sys.executable, "-m", "lab.bench", "--only", "scenarios", "--runs", "1",
                              "--out", str(tmp_path / "bench.json"), "panic-reboot"],
                             cwd=ROOT, env=env, text=True, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    seen = []
    for line in bench.stderr:
        seen.append(line.rstrip())
        if "waiting for the login prompt" in line:
            break
    else:
        pytest.fail("the benchmark ended before its first guest started:\n" + "\n".join(seen[-10:]))
    bench.send_signal(signal.SIGTERM)
    _, rest = bench.communicate(timeout=180)
    seen += rest.splitlines()
    assert bench.returncode == 130 and "bench: interrupted (SIGTERM)" in seen[-1], "\n".join(seen[-10:])
    assert _state(paths.cache_dir(), tmp_path / "tmp") == before, "the benchmark left something behind"
    assert not (tmp_path / "bench.json").exists()


def test_a_second_ctrl_c_does_not_cut_the_cleanup_short(tmp_path):
    """Two Ctrl-C in quick succession while the guest boots: the second lands while the lab unwinds or
    cleans up; it is reported, and the cleanup still leaves nothing behind."""
    env = _lab_env(tmp_path)
    _layout_of_a_machine_that_ran_the_lab(env)
    before = _state(paths.cache_dir(), tmp_path / "tmp")
    lab = _lab("run", "panic-reboot", env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    seen = []
    for line in lab.stderr:
        seen.append(line.rstrip())
        if re.search(POINTS["booting"][1], line):
            break
    time.sleep(5)
    lab.send_signal(signal.SIGINT)
    time.sleep(0.05)
    lab.send_signal(signal.SIGINT)
    _, rest = lab.communicate(timeout=180)
    seen += rest.splitlines()
    assert lab.returncode == 130, "\n".join(seen[-10:])
    assert any("Ctrl-C again to abandon" in line for line in seen), "\n".join(seen[-10:])
    assert _state(paths.cache_dir(), tmp_path / "tmp") == before, "the second Ctrl-C cut the cleanup short"


def _record(stage, sig):
    CARRIED_OUT.append(f"{stage}-{sig.name}")


def test_every_selected_injection_was_carried_out(request):
    """Runs after the injections (same module, in order): each one carried out, 20 or more with
    --all-faults (make test-faults), each point and each signal with the representative set (make test)."""
    wanted = _injections(request.config)
    selected = [i for i in request.session.items if i.originalname == "test_killed_lab_leaves_nothing_behind"]
    ledger = list(CARRIED_OUT)
    if len(selected) < len(wanted):
        pytest.skip(f"only {len(selected)} of {len(wanted)} injections selected")
    print(f"fault injections in this session: {len(ledger)}")
    assert len(ledger) == len(selected) == len(wanted), ledger
    assert len(ledger) >= 20 if request.config.getoption("--all-faults") else len(ledger) >= 6
    assert {sig for _stage, sig in wanted} >= set(SIGNALS) | {signal.SIGHUP}
    assert {stage for stage, _sig in wanted} >= set(POINTS) - {"image_build_late"}


def test_a_libvirtd_restart_ends_the_run_as_a_host_error_and_cleanup_still_works(tmp_path):
    env = _lab_env(tmp_path)
    _layout_of_a_machine_that_ran_the_lab(env)
    before = _state(paths.cache_dir(), tmp_path / "tmp")
    lab = _lab("run", "panic-reboot", "--json", env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    for line in lab.stderr:
        if re.search(POINTS["booting"][1], line):
            break
    time.sleep(5)
    subprocess.run(["pkill", "-x", "libvirtd"], check=True)
    for _ in range(40):
        if subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode != 0:
            break
        time.sleep(0.25)
    subprocess.run([str(ROOT / "scripts" / "start-libvirt.sh")], check=True, capture_output=True)
    out, err = lab.communicate(timeout=180)
    (report,) = json.loads(out)
    assert report["cut_short"]["by"] == "host", report["cut_short"]
    assert "the libvirt connection closed" in report["cut_short"]["why"]
    assert report["verdict"] is None and lab.returncode == 1, err[-1000:]
    assert _state(paths.cache_dir(), tmp_path / "tmp") == before   # the domain was destroyed over a new connection
