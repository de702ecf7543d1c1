"""Where the lab reads its recipes and writes its cache, runs and artifacts."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
IMAGES = PROJECT / "images"
DOMAINS = PROJECT / "domains"

NAME_PREFIX = "panic-lab-"
METADATA_NS = "https://panic-lab.invalid/run/1"


def cache_dir() -> Path:
    base = os.environ.get("LAB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "panic-lab")
    return Path(base)


def work_dir() -> Path:
    """Per-run scratch (overlays, seeds): removed when the run ends. LAB_WORK_DIR puts it elsewhere
    (a Gen1 run copies the whole disk: about 1.3 GB)."""
    return Path(os.environ.get("LAB_WORK_DIR") or cache_dir() / "runs")


def results_dir() -> Path:
    return Path(os.environ.get("LAB_RESULTS_DIR") or (PROJECT / "results"))


@contextlib.contextmanager
def locked(folder: Path):
    """An exclusive flock on a folder itself, held for the block: no lock file is left behind."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
