"""What a run tells its user while it goes: structured notes, drawn as lines in a log or as a live
board (one row per run) on a terminal. The board reads the notes' fields, never their prose."""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Note:
    run_id: str
    elapsed: float              # seconds since the run started
    text: str
    stage: str | None = None    # set when the run reached a new stage
    verdict: str | None = None  # set on the run's last note

    def line(self) -> str:
        return f"[{self.elapsed:6.1f}s] {self.run_id}: {self.text}"


class Lines:
    """Notes as plain lines, for a log file or a CI console."""

    def __init__(self, out=sys.stderr):
        self.out = out

    def note(self, note: Note) -> None:
        print(note.line(), file=self.out, flush=True)

    def write(self, text: str) -> int:
        self.out.write(text)
        return len(text)

    def flush(self) -> None:
        self.out.flush()


def sink_for(log) -> "Lines | Board":
    return log if hasattr(log, "note") else Lines(log)


class Reporter:
    """One run's voice: every note carries the run id and the time since the run started."""

    def __init__(self, run_id: str, sink, started: float):
        self.run_id, self.sink, self.started = run_id, sink, started

    def __call__(self, text: str, stage: str | None = None, verdict: str | None = None) -> None:
        self.sink.note(Note(self.run_id, time.monotonic() - self.started, text, stage, verdict))


class Board:
    """The progress of a set of runs, one row each (run, current stage, elapsed), redrawn in place on a
    terminal; elsewhere (a CI log) each note passes through as its line. Other text goes above it."""

    def __init__(self, out=sys.stderr):
        self.out = out
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.rows: dict[str, list] = {}   # run id -> [stage, last note, started]
        self.drawn = 0
        self.lock = threading.Lock()

    def note(self, note: Note) -> None:
        with self.lock:
            if not self.tty:
                print(note.line(), file=self.out, flush=True)
                return
            row = self.rows.setdefault(note.run_id, ["starting", "", time.monotonic() - note.elapsed])
            if note.verdict:
                row[0] = f"verdict {note.verdict}"
            elif note.stage:
                row[0] = note.stage
            row[1] = note.text
            self._draw()

    def write(self, text: str) -> int:
        with self.lock:
            if self.tty:
                self._clear()
            self.out.write(text)
            if self.tty:
                self._draw()
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def _clear(self) -> None:
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def _draw(self) -> None:
        self._clear()
        now = time.monotonic()
        for run_id, (stage, message, started) in self.rows.items():
            self.out.write(f"{run_id:<48} {stage:<28} {now - started:6.0f}s  {message[:60]}\n")
        self.drawn = len(self.rows)
        self.out.flush()
