"""Property tests: a log's verdict and stage do not depend on how its bytes arrive, nor on the noise a
console or a paste adds. Every tests/corpus and tests/transcripts log is fed through the live path
(Transcript.write, as lab/console.py does for each chunk it reads) in random chunks, with CRLF line
ends, ANSI sequences and NUL bytes put in, and must get the verdict and stage the clean file gets
offline (lab classify).

Where the noise goes: ANSI sequences anywhere between two printable ASCII bytes outside an existing
sequence (clean() removes them whole, so the text is the same); NULs only at a line's start or end
(clean() makes a NUL a space, so one inside a word would change the text for any reader).
"""
import bisect
import functools
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab import recorded
from lab.prefilter import ANSI_BYTES
from lab.transcript import Transcript
from lab.verdict import classify, derive

ROOT = Path(__file__).resolve().parent.parent
LOGS = sorted((ROOT / "tests" / "corpus").glob("*.log")) + sorted((ROOT / "tests" / "transcripts").glob("*.log"))
SEQUENCES = [b"\x1b[0m", b"\x1b[0;32m", b"\x1b[0;1;39m", b"\x1b[1;31m", b"\x1b[K", b"\x1b[2J", b"\x1b[?7l",
             b"\x1b]0;panic-lab\x07", b"\x1bM"]
PROPS = settings(max_examples=3, deadline=None, database=None,   # no .hypothesis folder in the project
                 suppress_health_check=[HealthCheck.too_slow])


@functools.lru_cache(maxsize=None)
def console(path: Path) -> bytes:
    _, body = recorded.split(path.read_bytes())
    return body


@functools.lru_cache(maxsize=None)
def offline(path: Path) -> tuple[str, str]:
    v = classify(console(path))
    return v.verdict, v.stage


def live(data: bytes, cuts: list[int]) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(prefix="panic-lab-props-") as tmp:
        transcript = Transcript(Path(tmp))
        bounds = [0] + sorted({c % len(data) for c in cuts} - {0}) + [len(data)]
        for a, b in zip(bounds, bounds[1:]):
            transcript.write(data[a:b])
        transcript.close()
        v = derive(transcript.events())
    return v.verdict, v.stage


def with_ansi(data: bytes, picks: list[tuple[int, int]]) -> bytes:
    spans = [m.span() for m in ANSI_BYTES.finditer(data)]
    starts = [s for s, _ in spans]
    places = {}
    for at, which in picks:
        at = 1 + at % (len(data) - 1)
        k = bisect.bisect_right(starts, at) - 1
        inside = k >= 0 and spans[k][0] < at < spans[k][1]
        if 0x20 <= data[at - 1] < 0x7f and 0x20 <= data[at] < 0x7f and not inside:
            places[at] = SEQUENCES[which % len(SEQUENCES)]
    out, last = [], 0
    for at in sorted(places):
        out += [data[last:at], places[at]]
        last = at
    return b"".join(out + [data[last:]])


def with_nuls(data: bytes, picks: list[tuple[int, int]]) -> bytes:
    ends = [i for i, b in enumerate(data) if b == 0x0A]
    places = {}
    for k, n in picks:
        if ends:
            end = ends[k % len(ends)]
            places[end + (k // len(ends)) % 2] = b"\x00" * (1 + n % 3)   # just before or just after the newline
    out, last = [], 0
    for at in sorted(places):
        out += [data[last:at], places[at]]
        last = at
    return b"".join(out + [data[last:]])


@pytest.mark.parametrize("path", LOGS, ids=[p.name[:40] for p in LOGS])
@PROPS
@given(cuts=st.lists(st.integers(min_value=0, max_value=2**31), max_size=200),
       crlf=st.booleans(),
       ansi=st.lists(st.tuples(st.integers(min_value=0, max_value=2**31), st.integers(min_value=0, max_value=99)), max_size=40),
       nuls=st.lists(st.tuples(st.integers(min_value=0, max_value=2**31), st.integers(min_value=0, max_value=9)), max_size=20))
def test_verdict_and_stage_survive_chunking_and_noise(path, cuts, crlf, ansi, nuls):
    data = console(path)
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    data = with_nuls(with_ansi(data, ansi), nuls)
    assert live(data, cuts) == offline(path)
