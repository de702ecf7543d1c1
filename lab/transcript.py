"""Stage 4, transcript: console bytes in, cleaned lines and marker events out; one code path for live and saved logs.

The raw bytes are written to disk untouched, as they arrive. Host-side annotations (lifecycle events,
stalls, the trigger) go to a separate JSON-lines file and never into the guest's transcript.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable

from . import markers as M
from .compact import Compactor, Events
from .prefilter import Prefilter
from .errors import HostError

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
KERNEL_TS = re.compile(r"^\[\s*(\d+\.\d+)\]\s?(?:\[\s*[TC]\d+\]\s?)?|^\[\s*[TC]\d+\]\s?")
# Prefixes other tools put in front of console lines: host timestamps, syslog headers, mail quotes.
HOST_PREFIXES = re.compile(
    r"^(?:"
    r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?\s*[|:]?\s*"   # ISO 8601
    r"|\[\d{4}-\d\d-\d\d[T ][\d:.,]+(?:Z|[+-]\d\d:?\d\d)?\]\s*"                        # [ISO 8601]
    r"|[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ (?:kernel: )?"                        # syslog
    r"|>+ ?"                                                                          # mail quoting
    r")")
# Control characters become spaces one for one (\t and \n are kept), in text and in bytes alike.
_CONTROLS = [c for c in range(32) if c not in (9, 10)] + [127]
CONTROL_STR = {c: 32 for c in _CONTROLS}
CONTROL_BYTES = bytes(32 if b in _CONTROLS else b for b in range(256))
MAX_LINE = 64 * 1024  # a longer line is read in pieces of this size: binary junk must not grow memory


@dataclass(slots=True)   # thousands per log: no per-instance dict
class Event:
    kind: str
    line: int                 # 1-based line in the transcript; 0 for host annotations
    text: str
    stack: str = "host"
    t: float | None = None    # host seconds since the transcript started (live runs)
    kt: float | None = None   # kernel timestamp printed on the line, where there is one
    groups: tuple = field(default_factory=tuple)

    @property
    def value(self) -> str:
        """What the marker captured (a command line's arguments), or the whole line if it captured nothing."""
        return self.groups[0] if self.groups else self.text


def clean(raw: str) -> tuple[str, float | None]:
    """One console line as a reader sees it, and its kernel timestamp if it has one."""
    text = ANSI.sub("", raw) if "\x1b" in raw else raw
    return _tidy(text.translate(CONTROL_STR))


def console_lines(raw: bytes) -> list[str]:
    """A saved console, cleaned line by line and numbered (from 1) as events' `line` counts it."""
    return [clean(line)[0] for line in raw.decode("utf-8", errors="replace").split("\n")]


def clean_bytes(raw: bytes, scrubbed: bool = False) -> tuple[str, float | None]:
    """clean() of raw decoded as UTF-8 (bad bytes replaced); scrubbed: its ANSI sequences are already
    gone (a second pass could join what is left into a new one). Without ESC, control bytes can become
    spaces before decoding, which is cheaper and gives the same text: no UTF-8 sequence holds one."""
    if not scrubbed and b"\x1b" in raw:
        return clean(raw.decode("utf-8", errors="replace"))
    return _tidy(raw.translate(CONTROL_BYTES).decode("utf-8", errors="replace"))


def _tidy(text: str) -> tuple[str, float | None]:
    text = text.strip()
    for _ in range(3):
        m = HOST_PREFIXES.match(text)   # match, not sub: sub would try every position against the ^
        if not m:
            break
        text = text[m.end():]
    kt = None
    m = KERNEL_TS.match(text)
    if m:
        stamp = m.group(1)
        kt = float(stamp) if stamp else None
        text = text[m.end():]
    return text, kt


class Reader:
    """Streaming: feed() chunks as they come, get events back; close() flushes the last line.

    Works on bytes: only the lines that hold a marker's needle are decoded and matched. Line numbers
    are the file's own (a line longer than MAX_LINE is read in pieces that keep its number).
    """

    def __init__(self, table: Iterable[M.Marker] = M.ALL, clock=None, compact: bool = False):
        """compact: self.events keeps only what a verdict can read (lab/compact.py), so that memory stays
        bounded on a log that repeats one marker line; feed() still returns every event."""
        self.table = list(table)
        self.prompts = [m for m in self.table if m.prompt]
        # Most console lines match no marker at all: one Hyperscan pass over each block finds the few that
        # may, and which markers to try on them; only those lines are decoded and matched.
        self._prefilter = Prefilter([m.regex.pattern for m in self.table], MAX_LINE)
        self._pending = b""
        self._prompt_fired_on = 0
        self.lines = 0            # complete lines read so far
        self._compactor = Compactor() if compact else None
        self.events = self._compactor.events if compact else Events()
        self.clock = clock

    def feed(self, data: bytes | str, t: float | None = None) -> list[Event]:
        if t is None and self.clock is not None:
            t = self.clock()
        if isinstance(data, str):
            data = data.encode("utf-8", errors="replace")
        new: list[Event] = []
        cut = data.rfind(b"\n") + 1
        if cut:
            # The pending line ends in data: that line first, then the rest of data read in place (a
            # copy of a whole chunk costs more than the scan of it).
            lo = 0
            if self._pending:
                lo = data.find(b"\n") + 1
                new += self._scan(self._pending + data[:lo], t)
            if cut > lo:
                new += self._scan(data, t, lo, cut)
            self._pending = bytes(data[cut:])
        else:
            self._pending += bytes(data)
        if len(self._pending) > MAX_LINE:   # an endless line: read it in pieces, keep only the rest
            pending = self._pending
            rest = (len(pending) - 1) // MAX_LINE * MAX_LINE   # every piece is cut from the one copy
            for i in range(0, rest, MAX_LINE):
                new += self._piece(pending[i:i + MAX_LINE], t)
            self._pending = pending[rest:]
        if self._pending and self._prompt_fired_on != self.lines + 1:
            cleaned, kt = clean_bytes(self._pending)
            for marker in self.prompts:
                m = marker.regex.search(cleaned)
                if m:
                    self._prompt_fired_on = self.lines + 1
                    new.append(Event(marker.event, self.lines + 1, cleaned, marker.stack, t, kt, m.groups()))
                    break
        if self._compactor:
            self._compactor.keep(new)
        else:
            self.events += new
        return new

    def close(self, t: float | None = None) -> list[Event]:
        return self.feed(b"\n", t) if self._pending else []

    def _scan(self, data, t, lo: int = 0, hi: int | None = None) -> list[Event]:
        """Events of a run of complete lines, data[lo:hi] (it ends with a newline)."""
        first = self.lines + 1
        new: list[Event] = []
        candidates, lines = self._prefilter.candidates(data, lo, hi)
        for index, raw, scrubbed, markers in candidates:
            lineno = first + index
            if len(raw) <= MAX_LINE:
                new += self._match(raw, lineno, t, self._prompt_fired_on == lineno, markers, scrubbed)
                continue
            for i in range(0, len(raw), MAX_LINE):
                new += self._match(raw[i:i + MAX_LINE], lineno, t, self._prompt_fired_on == lineno, markers, scrubbed)
        self.lines += lines
        return new

    def _piece(self, piece: bytes, t) -> list[Event]:
        """A MAX_LINE piece of an endless line, matched only against the markers the prefilter names."""
        found = self._prefilter.candidates(piece + b"\n")[0]
        return [e for _, raw, scrubbed, markers in found
                for e in self._match(raw, self.lines + 1, t, False, markers, scrubbed)]

    def _match(self, raw: bytes, lineno: int, t, skip_prompts: bool, markers: set | None = None,
               scrubbed: bool = False) -> list[Event]:
        text, kt = clean_bytes(raw, scrubbed)
        if not text:
            return []
        found = []
        # Table order, so that the events of one line come out in a fixed order.
        table = self.table
        if markers is not None:
            table = [table[i] for i in (markers if len(markers) == 1 else sorted(markers))]
        for marker in table:
            if skip_prompts and marker.prompt:
                continue
            m = marker.regex.search(text)
            if m:
                found.append(Event(marker.event, lineno, text, marker.stack, t, kt, m.groups()))
        return found


CHUNK = 1 << 20


def read(data: bytes | str | BinaryIO, compact: bool = False) -> list[Event]:
    """Offline: a whole saved log, or a binary file read in CHUNK pieces (bounded memory), through the
    same streaming code as a live console; compact: see Reader."""
    reader = Reader(compact=compact)
    if isinstance(data, str):
        data = data.encode("utf-8", errors="replace")
    if isinstance(data, bytes):   # in CHUNK pieces too: the blocks a file is read in, whatever the log's size
        for i in range(0, len(data), CHUNK):
            reader.feed(data[i:i + CHUNK])
    elif hasattr(data, "readinto"):   # one buffer for every chunk: no new megabyte to fault in each time
        buffer = bytearray(CHUNK)
        while n := data.readinto(buffer):
            reader.feed(buffer if n == CHUNK else buffer[:n])
    else:
        while chunk := data.read(CHUNK):
            reader.feed(chunk)
    reader.close()
    return reader.events


class Transcript:
    """The live transcript of one run: raw bytes to disk (flushed per chunk), events to the caller."""

    def __init__(self, directory: Path):
        self.path = directory / "console.log"
        self.host_path = directory / "host-events.jsonl"
        self._raw: BinaryIO = open(self.path, "wb")
        self._host = open(self.host_path, "w")
        self.started = time.monotonic()
        self.reader = Reader(clock=self.elapsed)
        self.host_events: list[Event] = []
        self.last_output = self.started

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def write(self, data: bytes) -> list[Event]:
        try:
            self._raw.write(data)
            self._raw.flush()
        except OSError as exc:   # a full disk: the run stops, it does not go on without its transcript
            raise HostError("transcript", f"cannot write {self.path}: {exc.strerror}") from None
        self.last_output = time.monotonic()
        return self.reader.feed(data)

    def annotate(self, kind: str, text: str, **extra) -> Event:
        event = Event(kind, 0, text, "host", self.elapsed(), None, tuple(extra.items()))
        self.host_events.append(event)
        try:
            # after_line: the console lines read by then, so that a replay of console.log can put the
            # host's events where the live run saw them (recorded.replay).
            self._host.write(json.dumps({"t": event.t, "kind": kind, "text": text, **extra,
                                         "after_line": self.reader.lines}) + "\n")
            self._host.flush()
        except OSError as exc:
            raise HostError("transcript", f"cannot write {self.host_path}: {exc.strerror}") from None
        return event

    def events(self) -> list[Event]:
        """Guest and host events in time order (host events carry no line number)."""
        return sorted(self.reader.events + self.host_events, key=lambda e: (e.t or 0.0))

    def close(self) -> None:
        self.reader.close()
        for f in (self._raw, self._host):
            try:
                f.close()
            except OSError:
                pass   # already reported by write(); what reached the disk stays
