"""Stage 4, transcript: console bytes in, cleaned lines and marker events out; one code path for live and saved logs.

The raw bytes are written to disk untouched, as they arrive. Host-side annotations (lifecycle events,
stalls, the trigger) go to a separate JSON-lines file and never into the guest's transcript.
"""
from __future__ import annotations

import codecs
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable

from . import markers as M

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
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]+")   # \n is kept: lines are split on it
MAX_LINE = 64 * 1024  # a line longer than this is cut: binary junk must not grow memory


@dataclass
class Event:
    kind: str
    line: int                 # 1-based line in the transcript; 0 for host annotations
    text: str
    stack: str = "host"
    t: float | None = None    # host seconds since the transcript started (live runs)
    kt: float | None = None   # kernel timestamp printed on the line, where there is one
    groups: tuple = field(default_factory=tuple)

    def to_json(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if v not in (None, ())}
        data["groups"] = list(self.groups)
        return data


def clean(raw: str) -> tuple[str, float | None]:
    """One console line as a reader sees it, and its kernel timestamp if it has one."""
    text = ANSI.sub("", raw) if "\x1b" in raw else raw
    text = CONTROL.sub(" ", text.rstrip("\r")).strip()
    for _ in range(3):
        stripped = HOST_PREFIXES.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    kt = None
    m = KERNEL_TS.match(text)
    if m:
        kt = float(m.group(1)) if m.group(1) else None
        text = text[m.end():]
    return text, kt


class Reader:
    """Streaming: feed() chunks as they come, get events back; close() flushes the last line."""

    def __init__(self, table: Iterable[M.Marker] = M.ALL, clock=None):
        self.table = list(table)
        self.prompts = [m for m in self.table if m.prompt]
        # Most console lines match no marker at all: find the few that hold a marker's literal needle
        # with str.find over the whole chunk, and run the regexes on those lines only.
        wanted = {n for m in self.table for n in (m.needles or ())}
        # A needle that contains another one finds nothing the shorter one does not.
        self._needles = sorted(n for n in wanted if not any(o != n and o in n for o in wanted))
        self._all_lines = any(m.needles is None for m in self.table)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._prompt_fired_on = 0
        self.lines = 0
        self.events: list[Event] = []
        self.clock = clock

    def feed(self, data: bytes | str, t: float | None = None) -> list[Event]:
        if t is None and self.clock is not None:
            t = self.clock()
        text = self._decoder.decode(data) if isinstance(data, bytes) else data
        new: list[Event] = []
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        while len(self._pending) > MAX_LINE:
            lines.append(self._pending[:MAX_LINE])
            self._pending = self._pending[MAX_LINE:]
        if lines and max(map(len, lines)) > MAX_LINE:
            lines = [line[i:i + MAX_LINE] for line in lines for i in range(0, max(len(line), 1), MAX_LINE)]
        first = self.lines + 1
        for index in self._candidates(lines):
            lineno = first + index
            new += self._match(lines[index], lineno, t, skip_prompts=self._prompt_fired_on == lineno)
        self.lines += len(lines)
        if self._pending and self._prompt_fired_on != self.lines + 1:
            cleaned, kt = clean(self._pending)
            for marker in self.prompts:
                m = marker.regex.search(cleaned)
                if m:
                    self._prompt_fired_on = self.lines + 1
                    new.append(Event(marker.event, self.lines + 1, cleaned, marker.stack, t, kt, m.groups()))
                    break
        self.events += new
        return new

    def close(self, t: float | None = None) -> list[Event]:
        tail = self._decoder.decode(b"", final=True)
        new = self.feed(tail + "\n", t) if (self._pending or tail) else []
        return new

    def _candidates(self, lines: list[str]) -> list[int]:
        """Indexes of the lines that contain at least one needle (after the same scrubbing as clean())."""
        if self._all_lines:
            return list(range(len(lines)))
        block = "\n".join(lines)
        if "\x1b" in block:
            block = ANSI.sub("", block)
        block = CONTROL.sub(" ", block)
        hits = set()
        for needle in self._needles:
            pos = block.find(needle)
            while pos >= 0:
                hits.add(pos)
                pos = block.find(needle, block.find("\n", pos) + 1 or len(block))  # next line on
        found, line, last = [], 0, 0
        for pos in sorted(hits):
            line += block.count("\n", last, pos)
            last = pos
            if not found or found[-1] != line:
                found.append(line)
        return found

    def _match(self, raw: str, lineno: int, t, skip_prompts: bool) -> list[Event]:
        text, kt = clean(raw)
        if not text:
            return []
        found = []
        for marker in self.table:
            if skip_prompts and marker.prompt:
                continue
            m = marker.regex.search(text)
            if m:
                found.append(Event(marker.event, lineno, text, marker.stack, t, kt, m.groups()))
        return found


def read(data: bytes | str) -> list[Event]:
    """Offline: a whole saved log through the same streaming code."""
    reader = Reader()
    reader.feed(data)
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
        self._raw.write(data)
        self._raw.flush()
        self.last_output = time.monotonic()
        return self.reader.feed(data)

    def annotate(self, kind: str, text: str, **extra) -> Event:
        event = Event(kind, 0, text, "host", self.elapsed(), None, tuple(extra.items()))
        self.host_events.append(event)
        self._host.write(json.dumps({"t": event.t, "kind": kind, "text": text, **extra}) + "\n")
        self._host.flush()
        return event

    def events(self) -> list[Event]:
        """Guest and host events in time order (host events carry no line number)."""
        return sorted(self.reader.events + self.host_events, key=lambda e: (e.t or 0.0))

    def close(self) -> None:
        self.reader.close()
        for f in (self._raw, self._host):
            if not f.closed:
                f.close()
