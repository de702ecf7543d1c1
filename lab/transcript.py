"""Stage 4, transcript: console bytes in, cleaned lines and marker events out; one code path for live and saved logs.

The raw bytes are written to disk untouched, as they arrive. Host-side annotations (lifecycle events,
stalls, the trigger) go to a separate JSON-lines file and never into the guest's transcript.
"""
from __future__ import annotations

import difflib
import functools
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable

from . import markers as M
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
ANSI_BYTES = re.compile(ANSI.pattern.encode())
# Control characters become spaces one for one (\t and \n are kept): the same mapping for bytes and str,
# so a needle found in a scrubbed block is exactly a needle found in the cleaned line.
_CONTROLS = [c for c in range(32) if c not in (9, 10)] + [127]
CONTROL_BYTES = bytes(32 if b in _CONTROLS else b for b in range(256))
CONTROL_STR = {c: 32 for c in _CONTROLS}
MAX_LINE = 64 * 1024  # a longer line is read in pieces of this size: binary junk must not grow memory


@dataclass
class Event:
    kind: str
    line: int                 # 1-based line in the transcript; 0 for host annotations
    text: str
    stack: str = "host"
    t: float | None = None    # host seconds since the transcript started (live runs)
    kt: float | None = None   # kernel timestamp printed on the line, where there is one
    groups: tuple = field(default_factory=tuple)


def clean(raw: str) -> tuple[str, float | None]:
    """One console line as a reader sees it, and its kernel timestamp if it has one."""
    text = ANSI.sub("", raw) if "\x1b" in raw else raw
    text = text.translate(CONTROL_STR).strip()
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


MERGE_MIN = 11   # needles sharing a run this long are searched for by that run: fewer passes over the data


@functools.lru_cache(maxsize=8)
def _merged_needles(wanted: frozenset[str]) -> list[str]:
    """Fewer needles that still find every line the given ones find.

    A needle that contains another is dropped; two needles that share a substring of MERGE_MIN or more
    characters are replaced by it. Each pass over the data costs the same whatever the needle, so this
    trades a few more candidate lines for fewer passes.
    """
    def minimal(items):
        return sorted(n for n in items if not any(o != n and o in n for o in items))

    needles = minimal(wanted)
    while True:
        # Only pairs that share a MERGE_MIN-gram can share a run that long.
        holders: dict[str, set[str]] = {}
        for n in needles:
            for i in range(len(n) - MERGE_MIN + 1):
                holders.setdefault(n[i:i + MERGE_MIN], set()).add(n)
        pairs = {tuple(sorted(pair)) for group in holders.values() if len(group) > 1
                 for pair in itertools.combinations(sorted(group), 2)}
        best = ""
        for a, b in sorted(pairs):
            match = difflib.SequenceMatcher(None, a, b, autojunk=False).find_longest_match(0, len(a), 0, len(b))
            if match.size > len(best):
                best, pair = a[match.a:match.a + match.size], (a, b)
        if not best:
            return needles
        needles = minimal([n for n in needles if n not in pair] + [best])


class Reader:
    """Streaming: feed() chunks as they come, get events back; close() flushes the last line.

    Works on bytes: only the lines that hold a marker's needle are decoded and matched. Line numbers
    are the file's own (a line longer than MAX_LINE is read in pieces that keep its number).
    """

    def __init__(self, table: Iterable[M.Marker] = M.ALL, clock=None):
        self.table = list(table)
        self.prompts = [m for m in self.table if m.prompt]
        # Most console lines match no marker at all: find the few that hold a marker's literal needle
        # with bytes.find over the whole chunk, and run the regexes on those lines only.
        wanted = {n for m in self.table for n in (m.needles or ())}
        # A needle that contains another one finds nothing the shorter one does not.
        kept = _merged_needles(frozenset(wanted))
        self._needles = [n.encode() for n in kept]
        # For each kept needle, the markers a line holding it may match: a line is tried on those only.
        self._markers_of = {n.encode(): {i for i, m in enumerate(self.table) if m.needles and any(n in o for o in m.needles)}
                            for n in kept}
        self._all_lines = any(m.needles is None for m in self.table)
        self._pending = b""
        self._prompt_fired_on = 0
        self.lines = 0            # complete lines read so far
        self.events: list[Event] = []
        self.clock = clock

    def feed(self, data: bytes | str, t: float | None = None) -> list[Event]:
        if t is None and self.clock is not None:
            t = self.clock()
        if isinstance(data, str):
            data = data.encode("utf-8", errors="replace")
        buffer = self._pending + data
        cut = buffer.rfind(b"\n") + 1
        block, self._pending = buffer[:cut], buffer[cut:]
        new: list[Event] = []
        if block:
            new += self._scan(block, t)
        while len(self._pending) > MAX_LINE:   # an endless line: read it in pieces, keep only the rest
            piece, self._pending = self._pending[:MAX_LINE], self._pending[MAX_LINE:]
            new += self._match(piece, self.lines + 1, t, False)
        if self._pending and self._prompt_fired_on != self.lines + 1:
            cleaned, kt = clean(self._pending.decode("utf-8", errors="replace"))
            for marker in self.prompts:
                m = marker.regex.search(cleaned)
                if m:
                    self._prompt_fired_on = self.lines + 1
                    new.append(Event(marker.event, self.lines + 1, cleaned, marker.stack, t, kt, m.groups()))
                    break
        self.events += new
        return new

    def close(self, t: float | None = None) -> list[Event]:
        return self.feed(b"\n", t) if self._pending else []

    def _scan(self, block: bytes, t) -> list[Event]:
        """Events of a run of complete lines (block ends with a newline)."""
        first = self.lines + 1
        new: list[Event] = []
        for index, raw, markers in self._candidates(block):
            lineno = first + index
            for i in range(0, max(len(raw), 1), MAX_LINE):
                new += self._match(raw[i:i + MAX_LINE], lineno, t, self._prompt_fired_on == lineno, markers)
        self.lines += block.count(b"\n")
        return new

    def _candidates(self, block: bytes) -> list[tuple[int, bytes, set | None]]:
        """(index, raw bytes, markers to try) of the lines that hold at least one needle, after the same
        scrubbing as clean(); None stands for every marker."""
        if self._all_lines:
            return [(i, raw, None) for i, raw in enumerate(block.split(b"\n")[:-1])]
        escaped = b"\x1b" in block
        # ANSI sequences vanish, so offsets move (newlines, never inside one, stay); control bytes map 1:1.
        scrubbed = (ANSI_BYTES.sub(b"", block) if escaped else block).translate(CONTROL_BYTES)
        hits = []
        for needle in self._needles:
            pos = scrubbed.find(needle)
            while pos >= 0:
                hits.append((pos, needle))
                pos = scrubbed.find(needle, scrubbed.index(b"\n", pos) + 1)
        if not hits:
            return []
        hits.sort()
        found: list[tuple[int, bytes, set]] = []
        lines = block.split(b"\n") if escaped else None
        line, last = 0, 0
        for pos, needle in hits:
            line += scrubbed.count(b"\n", last, pos)
            last = pos
            if found and found[-1][0] == line:
                found[-1][2].update(self._markers_of[needle])
                continue
            if lines is not None:
                raw = lines[line]
            else:   # offsets in the scrubbed block are the block's own
                raw = block[scrubbed.rfind(b"\n", 0, pos) + 1:block.index(b"\n", pos)]
            found.append((line, raw, set(self._markers_of[needle])))
        return found

    def _match(self, raw: bytes, lineno: int, t, skip_prompts: bool, markers: set | None = None) -> list[Event]:
        text, kt = clean(raw.decode("utf-8", errors="replace"))
        if not text:
            return []
        found = []
        # Table order, so that the events of one line come out in a fixed order.
        for marker in self.table if markers is None else [self.table[i] for i in sorted(markers)]:
            if skip_prompts and marker.prompt:
                continue
            m = marker.regex.search(text)
            if m:
                found.append(Event(marker.event, lineno, text, marker.stack, t, kt, m.groups()))
        return found


CHUNK = 1 << 20


def read(data: bytes | str | BinaryIO) -> list[Event]:
    """Offline: a whole saved log, or a binary file read in CHUNK pieces (bounded memory), through the
    same streaming code as a live console."""
    reader = Reader()
    if isinstance(data, (bytes, str)):
        reader.feed(data)
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
            self._host.write(json.dumps({"t": event.t, "kind": kind, "text": text, **extra}) + "\n")
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
