"""Host memory is one budget for every lab process on the host (lab/budget.py): a second invocation
waits for memory the first one holds, and a killed invocation's share comes back."""
import os
import subprocess
import sys
import time

from conftest import ROOT
from lab import budget

HOLDER = """
import sys, time
from lab import budget
with budget.Ledger().reserve(int(sys.argv[1])):
    print("granted", time.monotonic(), flush=True)
    time.sleep(float(sys.argv[2]))
print("released", time.monotonic(), flush=True)
"""


def _lab_process(env, mib, hold):
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(mib), str(hold)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)


def _times(proc) -> dict[str, float]:
    out, _ = proc.communicate(timeout=60)
    return {word: float(t) for word, t in (line.split() for line in out.splitlines())}


def test_a_second_invocation_waits_for_memory_the_first_holds(tmp_path):
    env = dict(os.environ, LAB_CACHE_DIR=str(tmp_path), LAB_HOST_MEMORY_MIB="3000")
    first = _lab_process(env, 2048, 2)
    first.stdout.readline()   # granted
    second = _lab_process(env, 2048, 0)
    released = float(first.stdout.readline().split()[1])
    first.wait()
    assert _times(second)["granted"] >= released


def test_two_that_fit_run_together(tmp_path):
    env = dict(os.environ, LAB_CACHE_DIR=str(tmp_path), LAB_HOST_MEMORY_MIB="5000")
    first, second = _lab_process(env, 2048, 1.5), _lab_process(env, 2048, 1.5)
    a, b = _times(first), _times(second)
    assert b["granted"] < a["released"] and a["granted"] < b["released"]


def test_a_killed_invocations_share_comes_back(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    env = dict(os.environ, LAB_HOST_MEMORY_MIB="3000")
    holder = _lab_process(env, 2048, 60)
    holder.stdout.readline()
    holder.kill()
    holder.wait()
    started = time.monotonic()
    with budget.Ledger(capacity_mib=3000).reserve(2048):
        assert time.monotonic() - started < 5


def test_a_run_bigger_than_the_host_still_runs_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    with budget.Ledger(capacity_mib=1000).reserve(4096):
        assert budget.Ledger(capacity_mib=1000).try_reserve(1) is None
