"""Timeouts nest as LAVA's do (a child never outlives its parent), and every lab step is recorded."""
import time

import pytest

from lab.timeout import Timeout


def test_a_child_never_outlives_its_parent():
    parent = Timeout("run", 0.2)
    child = parent.child("boot", 60)
    assert child.name == "run/boot" and child.remaining() <= 0.2


@pytest.mark.parametrize("seconds", [0, -1, float("nan")])
def test_a_timeout_must_be_positive(seconds):
    with pytest.raises(ValueError):
        Timeout("x", seconds)


def test_each_step_is_recorded_however_it_ends():
    top = Timeout("run", 60)
    with top.step("attach", 20) as limit:
        assert limit.name == "run/attach"
        time.sleep(0.01)
    with pytest.raises(OSError), top.step("attach"):
        raise OSError("no pty")
    assert [(s["step"], s["ended"]) for s in top.steps] == [("attach", "ok"), ("attach", "OSError")]
    assert top.spent["attach"] >= 0.01
