import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CORPUS = Path(os.environ.get("LAB_CORPUS") or ROOT.parent / "shared" / "corpus")


def pytest_configure(config):
    # A CI job stopped with SIGTERM (or its terminal closed) unwinds like Ctrl-C: a live run still
    # destroys its domain.
    from lab import signals
    signals.install()


def pytest_collection_modifyitems(config, items):
    # Live runs are slow: run the fast unit tests first so a broken classifier fails in seconds.
    items.sort(key=lambda item: 1 if item.get_closest_marker("live") else 0)


@pytest.fixture
def need_tool():
    def need(tool: str) -> str:
        path = shutil.which(tool)
        if not path:
            pytest.skip(f"{tool} is not installed")
        return path
    return need
