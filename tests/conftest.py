"""Shared by every test: where things are, how a test runs the `lab` command, the test tiers.

Tiers (markers, pyproject.toml):
  (none)    no libvirt, no guest: the specification of the pure parts; `make check`, under a minute
  libvirt   talks to libvirtd, boots nothing (seconds)
  live      boots real guests (minutes each)
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CORPUS = Path(os.environ.get("LAB_CORPUS") or ROOT.parent / "shared" / "corpus")
TRANSCRIPTS = ROOT / "tests" / "transcripts"
TIERS = {"libvirt": 1, "live": 2}


def lab_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lab", *args]


def run_lab(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """`lab ARGS` to its end, from the checkout, with the test's environment on top of this one's."""
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 900)
    return subprocess.run(lab_command(*args), cwd=ROOT, env={**os.environ, **(env or {})}, **kw)


def spawn_lab(*args: str, env: dict, **kw) -> subprocess.Popen:
    """`lab ARGS` in the background, for tests that stop it half-way."""
    kw.setdefault("text", True)
    return subprocess.Popen(lab_command(*args), cwd=ROOT, env=env, **kw)


def pytest_addoption(parser):
    parser.addoption("--update-recorded", action="store_true",
                     help="rewrite the VERDICT and STAGE of tests/transcripts/*.log to what the engine says now "
                          "(review the diff before committing it)")
    parser.addoption("--all-scenarios", action="store_true",
                     help="every base scenario on a real guest (make test-scenarios); without it, the "
                          "representative ones each test module names (REPRESENTATIVE)")
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
    items.sort(key=tier)
    if not config.getoption("--all-scenarios"):
        _keep_representative_scenarios(config, items)


def _keep_representative_scenarios(config, items):
    """Deselect (visibly: pytest counts them, and the header names them) live tests of scenarios that a
    module does not list in REPRESENTATIVE."""
    left_out, kept = set(), []
    for item in items:
        chosen = getattr(item.module, "REPRESENTATIVE", None)
        scenario = getattr(item, "callspec", None) and item.callspec.params.get("scenario")
        if chosen is not None and scenario and scenario not in chosen:
            left_out.add(scenario)
        else:
            kept.append(item)
    if left_out:
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept
        config._lab_left_out = sorted(left_out)


def pytest_report_collectionfinish(config):
    left_out = getattr(config, "_lab_left_out", None)
    if left_out:
        return f"live scenarios left to make test-scenarios (--all-scenarios): {', '.join(left_out)}"


@pytest.fixture
def need_tool():
    def need(tool: str) -> str:
        path = shutil.which(tool)
        if not path:
            pytest.skip(f"{tool} is not installed")
        return path
    return need
