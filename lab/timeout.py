"""Time limits, nested as in LAVA's pipeline: each step of a run gets its own timeout, a child never
outlives its parent, and every step records how long it took (the run's report lists the lab's own
steps, so its overhead is measured and not guessed)."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator


class Timeout:
    def __init__(self, name: str, seconds: float, parent: "Timeout | None" = None):
        if not seconds > 0:   # also refuses NaN
            raise ValueError(f"timeout {name!r} must be positive, got {seconds}")
        self.name, self.seconds, self.parent = name, seconds, parent
        self.started = time.monotonic()
        self.expires = self.started + seconds
        if parent is not None:
            self.expires = min(self.expires, parent.expires)
        self.spent: dict[str, float] = {}   # on the root: seconds per lab step, summed over repeats
        self.steps: list[dict] = []         # on the root: each step as it ended (start, seconds, how)

    def child(self, name: str, seconds: float) -> "Timeout":
        return Timeout(f"{self.name}/{name}", seconds, parent=self)

    def remaining(self) -> float:
        return max(0.0, self.expires - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.expires

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def root(self) -> "Timeout":
        return self if self.parent is None else self.parent.root

    @contextlib.contextmanager
    def step(self, name: str, seconds: float | None = None) -> Iterator["Timeout"]:
        """A step of the lab's own (not the guest's): its time is added to root.spent[name] and the step
        is recorded in root.steps, however it ends."""
        limit = self.child(name, seconds) if seconds else self
        started = time.monotonic()
        how = "ok"
        try:
            yield limit
        except BaseException as exc:
            how = type(exc).__name__
            raise
        finally:
            root = self.root
            took = time.monotonic() - started
            root.spent[name] = round(root.spent.get(name, 0.0) + took, 3)
            root.steps.append({"step": name, "started": round(started - root.started, 3), "seconds": round(took, 3),
                               "ended": how})
