"""Every recorded transcript under tests/transcripts/ must classify as its header says.

File format: header lines `KEY: value` (VERDICT, STAGE, SOURCE, NOTES), one line `---`, then the raw
console bytes exactly as the lab recorded them.
"""
from pathlib import Path

import pytest

from lab.transcript import read
from lab.verdict import derive

HERE = Path(__file__).parent / "transcripts"
FILES = sorted(HERE.glob("*.log"))


def split(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    head, sep, raw = data.partition(b"\n---\n")
    assert sep, f"{path.name}: no '---' line after the header"
    header = {}
    for line in head.decode().splitlines():
        key, _, value = line.partition(":")
        header[key.strip().upper()] = value.strip()
    return header, raw


def test_there_are_recorded_transcripts():
    assert len(FILES) >= 3


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_recorded_transcript(path):
    header, raw = split(path)
    assert {"VERDICT", "STAGE", "SOURCE"} <= header.keys(), f"{path.name}: incomplete header"
    v = derive(read(raw))
    assert (v.verdict, v.stage) == (header["VERDICT"], header["STAGE"]), v.diagnosis
    assert v.evidence, "a verdict without evidence lines"
