"""Input hygiene of the streaming reader: whatever the console or a mail client did to the log."""
from lab.transcript import Reader, clean, read


def kinds(data):
    return [e.kind for e in read(data)]


def test_line_ends_cr_crlf_and_doubled_cr():
    for nl in (b"\n", b"\r\n", b"\r\r\n"):
        log = b"Kernel panic - not syncing: sysrq triggered crash" + nl + b"Rebooting in 5 seconds.." + nl
        assert kinds(log) == ["panic", "reboot_announced"]


def test_ansi_escapes_nul_and_bad_utf8_do_not_hide_markers():
    log = b"\x1b[0;32m\x00[  OK  ]\x1b[0m \xff\xfe kdump-tools[250]: kdump-tools: saved vmcore in /var/crash/1.\r\n"
    events = read(log)
    assert [e.kind for e in events] == ["dump_saved"]
    assert "\x1b" not in events[0].text and "\x00" not in events[0].text


def test_kernel_and_host_timestamps_are_taken_off():
    assert clean("[   43.498453] Kernel panic - not syncing: x") == ("Kernel panic - not syncing: x", 43.498453)
    assert clean("2026-11-26T10:16:01.123Z [  1.5] Linux version 6.1")[0] == "Linux version 6.1"
    assert clean("[ T4333] Rebooting in 1 seconds..") == ("Rebooting in 1 seconds..", None)


def test_a_marker_split_across_chunks_is_found_once():
    reader = Reader()
    data = b"[ 1.0] Kernel panic - not sync" + b"ing: Fatal exception\n"
    got = reader.feed(data[:17]) + reader.feed(data[17:40]) + reader.feed(data[40:]) + reader.close()
    assert [e.kind for e in got] == ["panic"]


def test_multibyte_character_split_across_chunks():
    reader = Reader()
    text = "ü Kernel panic - not syncing: x\n".encode()
    reader.feed(text[:1])
    reader.feed(text[1:])
    assert reader.events[0].text.startswith("ü")


def test_prompt_without_newline_fires_once():
    reader = Reader()
    assert [e.kind for e in reader.feed(b"\r\npanic-lab login: ")] == ["login_prompt"]
    assert reader.feed(b"root\r\n") == []
    assert reader.close() == []


def test_an_automatic_login_is_a_login_prompt_once_whether_it_comes_whole_or_in_pieces():
    line = b"panic-lab login: root (automatic login)\r\n"
    assert kinds(b"\r\n" + line) == ["login_prompt"]
    reader = Reader()
    assert [e.kind for e in reader.feed(b"\r\npanic-lab login: ")] == ["login_prompt"]   # agetty writes it in two
    assert reader.feed(line[len(b"panic-lab login: "):]) == []
    assert kinds(b"panic-lab login: root (typed by someone)\n") == []


def test_end_marker_is_not_a_second_panic():
    assert kinds(b"Kernel panic - not syncing: x\n---[ end Kernel panic - not syncing: x ]---\n") == ["panic", "panic_end"]


def test_endless_line_is_read_in_pieces_not_buffered():
    reader = Reader()
    reader.feed(b"x" * 200_000)
    assert len(reader._pending) < 70_000
    got = reader.feed(b"\nKernel panic - not syncing: x\n")
    assert [(e.kind, e.line) for e in got] == [("panic", 2)]   # line numbers stay the file's


def test_a_long_line_full_of_markers_takes_time_in_proportion():
    """Eight times the line, about eight times the time: each match once looked for its line's start
    from where it was, which made a line of markers quadratic (51 times here, before)."""
    import time
    read(b"")   # the prefilter's database, compiled once, outside the timing

    def cpu_seconds(data: bytes) -> float:
        started = time.process_time()
        read(data)
        return time.process_time() - started
    line = b"Kernel panic - not syncing: "
    small, big = (cpu_seconds(line * n + b"\n") for n in (10_000, 80_000))
    assert big < 20 * small + 0.05, (small, big)


def test_line_numbers_follow_the_file():
    events = read(b"a\nb\nKernel panic - not syncing: x\n")
    assert events[0].line == 3


def _brute_force(data: bytes) -> list[tuple[str, int]]:
    """Every marker on every line: what the needle prefilter must reproduce exactly."""
    from lab import markers
    found = []
    for number, raw in enumerate(data.decode("utf-8", errors="replace").split("\n"), start=1):
        text, _ = clean(raw)
        if text:
            found += [(m.event, number) for m in markers.ALL if m.regex.search(text)]
    return found


def _logs():
    from conftest import CORPUS, ROOT
    paths = sorted((ROOT / "tests" / "transcripts").glob("*.log")) + sorted((ROOT / "tests" / "corpus").glob("*.log"))
    if CORPUS.exists():
        paths += sorted(CORPUS.glob("*.log"))
    return paths


def test_prefilter_finds_exactly_what_brute_force_finds():
    logs = _logs()
    assert logs
    for path in logs:
        data = path.read_bytes()
        got = [(e.kind, e.line) for e in read(data)]
        assert got == _brute_force(data), path.name


def test_prefilter_flags_every_line_each_marker_matches():
    """Per marker, not per line: a line picked out for the wrong marker would hide a miss above."""
    from lab import markers
    from lab.prefilter import Prefilter
    prefilter = Prefilter([m.regex.pattern for m in markers.ALL], 1 << 16)
    for path in _logs():
        data = path.read_bytes()
        data += b"" if data.endswith(b"\n") else b"\n"
        flagged = {index: ids for index, _, _, ids in prefilter.candidates(data)[0]}
        for index, raw in enumerate(data.decode("utf-8", errors="replace").split("\n")[:-1]):
            text, _ = clean(raw)
            for i, m in enumerate(markers.ALL):
                if m.regex.search(text):
                    assert i in flagged.get(index, ()), (path.name, index + 1, m.regex.pattern, text)


def test_prefilter_edge_cases_match_brute_force():
    """What the rewriting must get right: Unicode digits and spaces, ANSI inside a marker, an ESC that
    cuts a UTF-8 character, controls and CRs inside a line, a marker at the end of a long line."""
    log = ("Rebooting in \u0665 seconds..\n"                      # Arabic-Indic digit: \d in Python
           "[\u00a0\u00a0 1.0] Kernel panic - not syncing: x\n"  # NBSP before the timestamp
           "Kern\x1b[1mel panic - not\x1b[0m syncing: y\n"       # ANSI inside the words
           "rcu: INFO: rcu_pr\u00e9empt detected stalls on CPU\n"
           "Linux version 6.\u0661 (x\n").encode()
    log += b"caf\xc3\x1b[0m\xa9 reboot: Restarting system\n"     # an ESC cutting an e-acute
    log += b"reboot:\x00Restarting system\rreboot: System halted\r\r\n"
    log += b"\xff\xfe kdump-tools: saved vmcore in /var\n"
    log += b"x" * 70_000 + b" Kernel panic - not syncing: long\n"
    assert [(e.kind, e.line) for e in read(log)] == _brute_force(log)
    assert len(read(log)) >= 7


def test_a_block_heavy_with_ansi_reads_like_brute_force():
    """More ANSI in one block than a long line's length: its short lines are read scrubbed, the long
    one raw, in pieces; the events are what every regex on every cleaned line finds."""
    colour = b"\x1b[0;1;39m"
    lines = [colour * 40 + b"[  OK  ] Reached target " + colour + b"Kernel panic - not syncing: " + colour
             + str(n).encode() for n in range(2000)]
    log = b"\n".join(lines) + b"\n" + b"x" * 70_000 + colour + b" Rebooting in 5 seconds..\n"
    assert [(e.kind, e.line) for e in read(log)] == _brute_force(log)


def test_prefilter_refuses_what_it_cannot_rewrite():
    import pytest
    from lab.prefilter import Unsupported, hs_pattern
    for pattern in (r"(a)\1", r"(?i)panic", r"\x41", r"a{", r"[\u00e9]"):
        with pytest.raises(Unsupported):
            hs_pattern(pattern)
    # Anchors and the optional tail go; a space may be any control byte, which clean() makes a space.
    assert hs_pattern(r"^Kernel panic(?: - (.*))?$") == r"Kernel[\x20\x00-\x08\x0b-\x1f\x7f]panic"
    # A negated class matches the space a control byte becomes, whatever it excludes.
    assert hs_pattern("[^\x07]x") == "(?:[^\x07]|[\\x00-\\x08\\x0b-\\x1f\\x7f]|[\\x80-\\xff]+)x"


def _marker_lines() -> list[bytes]:
    """Lines of the logs that hold a marker: the material the fuzz test below mutates."""
    from lab import markers
    lines = set()
    for path in _logs():
        for raw in path.read_bytes().split(b"\n"):
            text, _ = clean(raw.decode("utf-8", errors="replace"))
            if any(m.regex.search(text) for m in markers.ALL):
                lines.add(raw[:300])
    return sorted(lines)


# Bytes that clean() or UTF-8 decoding treat specially, put anywhere in a marker line, even inside a word.
NOISE = [b"\x00", b"\r", b"\t", b"\x1b", b"\x1b[0m", b"\x1b[0;32m", b"\x1b]0;t\x07", b"\xc3\xa9", b"\xc3", b"\xa9",
         b"\xff", b"\xc2\xa0", b"\xd9\xa5", b"\xe2\x80\xa6", b"\x7f", b"[", b"]", b" ", b"  ", b"5", b"\n"]


def test_prefilter_equals_brute_force_on_mutated_marker_lines():
    from hypothesis import given, settings
    from hypothesis import strategies as st
    lines = _marker_lines()

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.lists(st.tuples(st.sampled_from(lines),
                              st.lists(st.tuples(st.integers(0, 400), st.sampled_from(NOISE)), max_size=4)),
                    min_size=1, max_size=6))
    def check(picked):
        log = b""
        for line, edits in picked:
            for at, noise in sorted(edits, reverse=True):
                line = line[:at] + noise + line[at:]
            log += line + b"\n"
        assert [(e.kind, e.line) for e in read(log)] == _brute_force(log)

    check()
