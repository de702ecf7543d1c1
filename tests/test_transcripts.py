"""Every transcript the lab recorded (tests/transcripts/) classifies as its header says.

Format: lab/recorded.py (strict header, then the raw console bytes exactly as the lab recorded them).
`pytest tests/test_transcripts.py --update-recorded` rewrites the labels to what the engine says now,
as syzkaller's -update does; the diff is then reviewed like any other change.
"""
import pytest

from conftest import TRANSCRIPTS
from lab import recorded
from lab.transcript import read
from lab.verdict import derive

FILES = sorted(TRANSCRIPTS.glob("*.log"))


def test_there_are_recorded_transcripts():
    assert len(FILES) >= 3


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_recorded_transcript(path, request):
    log = recorded.load(path)
    v = derive(recorded.replay(log.console, path))   # with the live run's host events where they were kept beside it
    if request.config.getoption("--update-recorded") and (v.verdict, v.stage) != (log.verdict, log.stage):
        path.write_bytes(log.with_label(v.verdict, v.stage))
        log = recorded.load(path)
    assert (v.verdict, v.stage) == (log.verdict, log.stage), v.diagnosis
    assert v.evidence, "a verdict without evidence lines"


@pytest.mark.parametrize("head, why", [
    (b"VERDICT: hang\nSTAGE: panicked\nSOURCE: x\nNOTES: y\nLABEL: z", "unknown header line"),
    (b"VERDICT: hang\nSTAGE: panicked\nSOURCE: x", "expected VERDICT, STAGE, SOURCE, NOTES"),
    (b"VERDICT: hang\nSOURCE: x\nSTAGE: panicked\nNOTES: y", "in that order"),
    (b"VERDICT: crashed\nSTAGE: panicked\nSOURCE: x\nNOTES: y", "VERDICT 'crashed' is not one of"),
    (b"VERDICT: hang\nSTAGE: panic\nSOURCE: x\nNOTES: y", "STAGE 'panic' is not a stage"),
    (b"VERDICT: hang\nVERDICT: hang\nSTAGE: panicked\nSOURCE: x\nNOTES: y", "VERDICT given twice"),
])
def test_a_malformed_header_is_refused(tmp_path, head, why):
    path = tmp_path / "x.log"
    path.write_bytes(head + b"\n---\nKernel panic - not syncing: x\n")
    with pytest.raises(recorded.MalformedLog, match=why):
        recorded.load(path)


def test_relabelling_keeps_the_console_bytes(tmp_path):
    source = FILES[0]
    log = recorded.load(source)
    (tmp_path / "x.log").write_bytes(log.with_label("unknown", "none"))
    again = recorded.load(tmp_path / "x.log")
    assert (again.verdict, again.stage, again.source, again.notes) == ("unknown", "none", log.source, log.notes)
    assert again.console == log.console


def test_the_host_events_kept_beside_a_transcript_give_the_live_verdict_the_console_alone_cannot():
    with_host = [p for p in FILES if recorded.host_events_beside(p) is not None]
    assert with_host, "no transcript kept with its run's host events"
    for path in with_host:
        log = recorded.load(path)
        replayed, alone = derive(recorded.replay(log.console, path)), derive(read(log.console))
        assert (replayed.verdict, replayed.stage) == (log.verdict, log.stage)
        if log.verdict == "hang":   # a stuck capture kernel: only the host's stall deadline says so
            assert alone.verdict == "unknown" and replayed.confidence == "likely"


def test_host_events_that_are_not_the_lab_s_are_refused(tmp_path):
    path = tmp_path / "x.log"
    path.write_bytes(b"VERDICT: unknown\nSTAGE: panicked\nSOURCE: x\nNOTES: y\n---\nKernel panic - not syncing: x\n")
    path.with_suffix(".host-events.jsonl").write_text('{"t": 1.0, "kind": "stall", "text": "no after_line"}\n')
    log = recorded.load(path)
    with pytest.raises(recorded.MalformedLog, match="x.host-events.jsonl:1: not a host event"):
        recorded.replay(log.console, path)
