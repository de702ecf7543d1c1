"""Nested deadlines, as in LAVA: a child never outlives its parent."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Deadline:
    name: str
    seconds: float
    parent: "Deadline | None" = None
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ValueError(f"deadline {self.name!r} must be positive, got {self.seconds}")
        self.expires = self.started + self.seconds
        if self.parent is not None:
            self.expires = min(self.expires, self.parent.expires)

    def child(self, name: str, seconds: float) -> "Deadline":
        return Deadline(f"{self.name}/{name}", seconds, parent=self)

    def remaining(self) -> float:
        return max(0.0, self.expires - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.expires
