"""Recorded logs as test data, in the manner of syzkaller's testdata: a strict header, a `---` line,
then the console bytes exactly as recorded or published.

    VERDICT: hang
    STAGE: panicked
    SOURCE: where the log comes from (a lab run id, a list message-id, a URL, and a date)
    NOTES: why the label holds: the decisive lines, and what the reporter said happened
    ---
    <console bytes>

Each key once, in this order; any other key, a missing one, or an unknown verdict or stage is an error.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .transcript import Event, read
from .verdict import classify
from .vocabulary import NO_STAGE, Outcome, Stage

KEYS = ("VERDICT", "STAGE", "SOURCE", "NOTES")
SEPARATOR = b"\n---\n"


class MalformedLog(ValueError):
    pass


@dataclass(frozen=True)
class RecordedLog:
    path: Path
    verdict: str
    stage: str
    source: str
    notes: str
    console: bytes

    def with_label(self, verdict: str, stage: str) -> bytes:
        """The same file, relabelled (the update mode): only VERDICT and STAGE change."""
        header = "".join(f"{key}: {value}\n" for key, value in
                         zip(KEYS, (verdict, stage, self.source, self.notes)))
        return header.encode() + b"---\n" + self.console


def split(raw: bytes) -> tuple[dict[str, str] | None, bytes]:
    """(header, console) of a saved log; (None, raw) when it has no header at all."""
    head, sep, console = raw.partition(SEPARATOR)
    if not sep or not head.startswith(b"VERDICT:"):
        return None, raw
    return _header(head), console


def _header(head: bytes) -> dict[str, str]:
    try:
        lines = head.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise MalformedLog(f"header is not UTF-8 ({exc.reason})") from None
    found: dict[str, str] = {}
    for line in lines:
        key, colon, value = line.partition(":")
        if not colon or key not in KEYS:
            raise MalformedLog(f"unknown header line {line[:60]!r} (keys: {', '.join(KEYS)})")
        if key in found:
            raise MalformedLog(f"{key} given twice")
        found[key] = value.strip()
    if tuple(found) != KEYS:
        raise MalformedLog(f"header keys {', '.join(found)}; expected {', '.join(KEYS)}, in that order")
    if found["VERDICT"] not in set(Outcome):
        raise MalformedLog(f"VERDICT {found['VERDICT']!r} is not one of {', '.join(Outcome)}")
    if found["STAGE"] not in set(Stage) | {NO_STAGE}:
        raise MalformedLog(f"STAGE {found['STAGE']!r} is not a stage ({', '.join(Stage)}, {NO_STAGE})")
    return found


def load(path: Path) -> RecordedLog:
    try:
        header, console = split(Path(path).read_bytes())
    except MalformedLog as exc:
        raise MalformedLog(f"{path}: {exc}") from None
    if header is None:
        raise MalformedLog(f"{path}: no header (VERDICT: ... then a --- line)")
    return RecordedLog(Path(path), header["VERDICT"], header["STAGE"], header["SOURCE"], header["NOTES"], console)


class _Rest:
    """What is left of a stream after its header: the bytes already read, then the rest."""

    def __init__(self, first: bytes, rest):
        self.first, self.rest = first, rest

    def read(self, size: int) -> bytes:
        if self.first:
            out, self.first = self.first[:size], self.first[size:]
            return out
        return self.rest.read(size)


def console_of(stream) -> tuple[dict[str, str] | None, "_Rest"]:
    """(header, console stream) of a saved file: a recorded log's header is not console; any other file
    is all console (a header that does not parse included)."""
    first = stream.read(1 << 16)
    try:
        header, console = split(first)
    except MalformedLog:
        header = None
    return (None, _Rest(first, stream)) if header is None else (header, _Rest(console, stream))


def host_events_beside(path: Path) -> list[tuple[int, Event]] | None:
    """The live run's host events, when they were kept beside the transcript (`NAME.host-events.jsonl`,
    as the lab wrote it), each with the console lines read by then: what the host saw (resets, the
    fault, a stall deadline) is not in console.log."""
    beside = Path(path).with_suffix(".host-events.jsonl")
    if not beside.exists():
        return None
    events = []
    for n, raw in enumerate(beside.read_text().splitlines(), 1):
        try:
            data = json.loads(raw)
            data["t"], data["kind"], data["text"], data["after_line"]
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedLog(f"{beside}:{n}: not a host event with t, kind, text and after_line ({exc})") from None
        extra = {k: v for k, v in data.items() if k not in ("t", "kind", "text", "after_line")}
        events.append((data["after_line"], Event(data["kind"], 0, data["text"], "host", data["t"], None,
                                                 tuple(extra.items()))))
    return events


def replay(console_bytes: bytes, path: Path) -> list[Event]:
    """The events the live run derived its verdict from: the console's (the log at `path`, past its
    header), and the host's where it saw them (after the console lines read by then); the console's
    alone when no host events were kept beside it."""
    console = read(console_bytes)
    host = host_events_beside(path)
    if host is None:
        return console
    placed = [(e.line, 0, e) for e in console] + [(after + 0.5, n, e) for n, (after, e) in enumerate(host)]
    return [e for *_, e in sorted(placed, key=lambda item: item[:2])]


def classify_saved(stream):
    """A saved file, as `lab classify` reads it: a recorded log (tests/corpus, tests/transcripts) on its
    console part only, with its label {verdict, stage} beside the verdict; any other file whole."""
    header, console = console_of(stream)
    label = {"verdict": header["VERDICT"], "stage": header["STAGE"]} if header else None
    return classify(console), label
