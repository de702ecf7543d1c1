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


def test_end_marker_is_not_a_second_panic():
    assert kinds(b"Kernel panic - not syncing: x\n---[ end Kernel panic - not syncing: x ]---\n") == ["panic", "panic_end"]


def test_endless_line_is_read_in_pieces_not_buffered():
    reader = Reader()
    reader.feed(b"x" * 200_000)
    assert len(reader._pending) < 70_000
    got = reader.feed(b"\nKernel panic - not syncing: x\n")
    assert [(e.kind, e.line) for e in got] == [("panic", 2)]   # line numbers stay the file's


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
    paths = sorted((ROOT / "tests" / "transcripts").glob("*.log"))
    if CORPUS.exists():
        paths += sorted(CORPUS.glob("*.log"))
    return paths


def test_needle_prefilter_finds_exactly_what_brute_force_finds():
    logs = _logs()
    assert logs
    for path in logs:
        data = path.read_bytes()
        got = [(e.kind, e.line) for e in read(data)]
        assert got == _brute_force(data), path.name


def test_every_marker_has_needles_that_its_matches_contain():
    from lab import markers
    for m in markers.ALL:
        assert m.needles, m.regex.pattern
    for path in _logs():
        for raw in path.read_bytes().decode("utf-8", errors="replace").split("\n"):
            text, _ = clean(raw)
            for m in markers.ALL:
                if m.regex.search(text):
                    assert any(n in text for n in m.needles), (m.regex.pattern, text)
