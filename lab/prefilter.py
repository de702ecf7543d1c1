"""Which console lines can hold a marker: one Hyperscan pass over a block of lines for every marker.

A block with an ESC first loses its ANSI sequences, as clean() (lab/transcript.py) does to one line.
Each marker's Python regex is rewritten into a Hyperscan pattern that matches a superset of what the
regex matches in the cleaned line, then the regexes run on those lines only:
  - an atom that may match a space may match a control byte too, which clean() makes a space (so the
    block needs no pass that maps them);
  - zero-width parts (^ $ \\b \\B \\A \\Z, lookarounds) are dropped: the cleaned line starts after
    prefixes the scrubbed line still has, and dropping a condition only widens the match;
  - Python matches characters, Hyperscan bytes: an atom that may match a non-ASCII character (\\d \\w \\s
    \\S . and classes that use them or are negated) may also match a run of bytes >= 0x80 (a character's
    UTF-8 bytes, or the invalid bytes Python decodes to U+FFFD);
  - a trailing optional part is cut (X(.*) becomes X): one report per line is enough, not one per byte.
Anything else (backreferences, inline flags, \\x escapes) is refused when the first reader is made,
never guessed.
"""
from __future__ import annotations

import functools
import re

import hyperscan

HIGH = r"[\x80-\xff]+"   # one non-ASCII character as UTF-8 bytes, or an invalid run (U+FFFD to Python)
CONTROLS = r"\x00-\x08\x0b-\x1f\x7f"   # the bytes clean() turns into spaces (all controls but \t and \n)
SHORTHAND = "dDwWsS"
# transcript.ANSI for bytes, with no newline inside an OSC sequence: a scrubbed line stays one line.
ANSI_BYTES = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b\n]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


class Unsupported(ValueError):
    pass


# -- regex rewriting --------------------------------------------------------------------------------
# A parsed sequence is a list of alternatives; each alternative a list of [atom, quantifier], where an
# atom is a rendered Hyperscan string or a nested sequence (a group).

def _byte(c: str) -> str:
    return "".join(f"\\x{b:02x}" for b in c.encode())


def _class(p: str, i: int) -> tuple[str, int]:
    """A [...] class starting at p[i]: (Hyperscan text, index after it)."""
    j = i + 1
    negated = p[j:j + 1] == "^"
    j += negated
    if p[j:j + 1] == "]":
        j += 1   # a leading ] is a literal
    wide = False
    while j < len(p) and p[j] != "]":
        if p[j] == "\\":
            e = p[j + 1]
            if e in SHORTHAND:
                wide = True
            elif e.isalnum() and e not in "nt":
                raise Unsupported(f"escape \\{e} in a class")
            j += 2
        else:
            if not p[j].isascii():
                raise Unsupported("non-ASCII character in a class")
            j += 1
    if j >= len(p):
        raise Unsupported("unterminated class")
    # A class that may match a space may match a control byte (clean() makes it one): take them all in.
    if negated:
        return f"(?:{p[i:j + 1]}|[{CONTROLS}]|{HIGH})", j + 1
    body = p[i + 1:j]
    body = "[" + CONTROLS + ("\\x" + f"{ord(body[0]):02x}" + body[1:] if body[0] in "]-" else body) + "]"
    return (f"(?:{body}|{HIGH})" if wide else body), j + 1


def _quantifier(p: str, i: int) -> tuple[str, int]:
    if p[i] == "{":
        m = re.compile(r"\{(\d*)(?:(,)(\d*))?\}").match(p, i)
        if not m or not (m.group(1) or m.group(3)):
            raise Unsupported(f"quantifier at {i}")
        q, i = m.group(0), m.end()
    else:
        q, i = p[i], i + 1
    if i < len(p) and p[i] in "?+":   # lazy or possessive: the same matches or fewer, so the greedy form covers them
        i += 1
    return q, i


def _seq(p: str, i: int) -> tuple[list, int]:
    alts: list[list] = [[]]
    while i < len(p) and p[i] != ")":
        c = p[i]
        if c == "|":
            alts.append([])
            i += 1
            continue
        if c in "*+?{":
            if not alts[-1] or alts[-1][-1][1]:
                raise Unsupported(f"quantifier with nothing to repeat at {i}")
            alts[-1][-1][1], i = _quantifier(p, i)
            continue
        atom = None
        if c == "\\":
            e = p[i + 1]
            if e == "s":
                atom = f"(?:[\\s{CONTROLS}]|{HIGH})"
            elif e in SHORTHAND:
                atom = f"(?:\\{e}|{HIGH})"
            elif e in "bBAZ":
                pass   # an assertion: dropped
            elif e in "nt":
                atom = "\\" + e
            elif e.isalnum():
                raise Unsupported(f"escape \\{e}")
            else:
                atom = _byte(e)
            i += 2
        elif c == "[":
            atom, i = _class(p, i)
        elif c == "(":
            look = p.startswith(("(?=", "(?!", "(?<=", "(?<!"), i)
            if p.startswith("(?:", i):
                start = i + 3
            elif p.startswith("(?P<", i):
                start = p.index(">", i) + 1
            elif look:
                start = i + (3 if p[i + 2] in "=!" else 4)
            elif p.startswith("(?", i):
                raise Unsupported(f"group {p[i:i + 3]}")
            else:
                start = i + 1
            inner, i = _seq(p, start)
            if i >= len(p):
                raise Unsupported("unbalanced (")
            i += 1
            atom = None if look else inner
        elif c in "^$":
            i += 1
        elif c == ".":
            atom, i = f"(?:.|{HIGH})", i + 1
        else:
            # Everything but ASCII letters and digits as \xHH: no character means more to Hyperscan than to re.
            atom = c if c.isascii() and c.isalnum() else _byte(c) if c.isascii() else f"(?:{_byte(c)})"
            if c == " ":
                atom = f"[\\x20{CONTROLS}]"
            i += 1
        if atom is not None:
            alts[-1].append([atom, ""])
        elif i < len(p) and p[i] in "*+?{":
            _, i = _quantifier(p, i)   # a repeated assertion is still only an assertion
    return alts, i


def _trim(alt: list) -> list:
    """Drop what may match nothing at the end of an alternative: a match of the rest is one too."""
    alt = [list(a) for a in alt]
    while alt:
        atom, q = alt[-1]
        if q in ("*", "?") or q.startswith(("{0,", "{,")):
            alt.pop()
        elif q:
            alt[-1][1] = "" if q == "+" else "{" + re.match(r"\{(\d+)", q).group(1) + "}"
            break
        elif isinstance(atom, list) and len(atom) == 1:   # a group of one alternative: trim inside it
            inner = _trim(atom[0])
            if inner:
                alt[-1][0] = [inner]
                break
            alt.pop()
        else:
            break
    return alt


def _render(alts: list) -> str:
    def one(atom):
        return atom if isinstance(atom, str) else f"(?:{_render(atom)})"
    return "|".join("".join(one(a) + q for a, q in alt) for alt in alts)


def hs_pattern(pattern: str) -> str:
    """The Hyperscan pattern that finds, in raw console bytes, every line where `pattern` matches the
    cleaned text (and some more)."""
    alts, end = _seq(pattern, 0)
    if end != len(pattern):
        raise Unsupported(f"unbalanced ) at {end}")
    return _render([_trim(alt) for alt in alts])


# -- scanning ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _database(patterns: tuple[str, ...]) -> hyperscan.Database:
    """Marker i is expression i. Compiled once per table (~0.15 s)."""
    expressions = [hs_pattern(p).encode() for p in patterns]
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=expressions, ids=list(range(len(expressions))), elements=len(expressions),
               flags=[0] * len(expressions))
    return db


@functools.lru_cache(maxsize=1)
def _esc_after_high() -> hyperscan.Database:
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(expressions=[rb"[\x80-\xff]\x1b"], ids=[0], elements=1, flags=[0])
    return db


def _ends_a_character(data: bytes, end: int) -> bool:
    """Do the bytes before data[end] end with a whole UTF-8 character (or with ASCII)?"""
    lead = end - 1
    while lead > max(end - 4, 0) and 0x80 <= data[lead] < 0xC0:   # back over continuation bytes
        lead -= 1
    try:
        bytes(data[lead:end]).decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


class Prefilter:
    """For one marker table; one per reader (its scratch space is not shared between threads)."""

    def __init__(self, patterns: list[str], max_line: int):
        self.db = _database(tuple(patterns))
        self.scratch = hyperscan.Scratch(self.db)
        self.marker_count = len(patterns)
        self.esc_db = _esc_after_high()
        self.esc_scratch = hyperscan.Scratch(self.esc_db)
        self.max_line = max_line

    def _splits_a_character(self, block: bytes) -> bool:
        """Does an ESC cut a UTF-8 character short? Only there may removing ANSI from bytes, then decoding,
        give other text than decoding, then removing (b"\\xc3" ESC[0m b"\\xa9": an e-acute, or two U+FFFD)."""
        def on_match(id_, start, end, flags, context):
            return not _ends_a_character(block, end - 1)   # True stops the scan: one is enough

        try:
            self.esc_db.scan(block, match_event_handler=on_match, scratch=self.esc_scratch)
        except hyperscan.ScanTerminated:
            return True
        return False

    def _hits(self, view, base, off: int) -> list[tuple[int, int, set[int]]]:
        """(start, end, markers that may match) of each line of base that a marker may match, in order, end
        at the line's newline; view is base[off:], whole lines."""
        found: list[int] = []
        found_at = found.append
        width = self.marker_count

        def on_match(id_, start, end, flags, context):
            found_at((off + end - 1) * width + id_)   # the match's last byte and its marker, as one number

        self.db.scan(view, match_event_handler=on_match, scratch=self.scratch)
        found.sort()   # Hyperscan does not promise matches in order; in order, each line is searched once
        lines: list[tuple[int, int, set[int]]] = []
        rfind, find = base.rfind, base.find
        line_end = off - 1   # the newline before view (or -1)
        markers: set[int] = set()
        for key in found:
            at, marker = divmod(key, width)
            if at > line_end:   # a new line: from the last one's newline to this match, then on to its own
                start = rfind(b"\n", max(line_end, 0), at) + 1
                line_end = find(b"\n", at)
                markers = {marker}
                lines.append((start, line_end, markers))
            else:
                markers.add(marker)
        return lines

    def candidates(self, data, lo: int = 0, hi: int | None = None) -> tuple[list[tuple[int, bytes, bool, set[int]]], int]:
        """(line index, line, scrubbed, markers that may match) of each line of data[lo:hi] that may hold a
        marker, in order, and the number of lines. data[lo:hi] is whole lines, each ending in \\n, and is
        read in place. A line comes back raw, or with its ANSI sequences removed (scrubbed) where that
        cleans to the same text."""
        hi = len(data) if hi is None else hi
        view = memoryview(data)[lo:hi]
        escaped = data.find(b"\x1b", lo, hi) >= 0
        raw_only, removed = False, 0
        if escaped:
            # ANSI sequences never hold a newline (see ANSI_BYTES): line k of scrubbed is line k of data.
            # Control bytes stay: the patterns take them for the spaces clean() makes of them.
            base, off = ANSI_BYTES.sub(b"", view), 0
            removed = len(view) - len(base)
            # A scrubbed line cleans to what its raw line does, but where an ESC cuts a character short,
            # and for a raw line over max_line, which is matched in pieces: those take the raw line.
            raw_only = self._splits_a_character(view)
            hits = self._hits(base, base, 0)
            top = len(base)
        else:
            base, off, top = data, lo, hi
            hits = self._hits(view, data, lo)
        raw_lines = None
        out = []
        index, counted = 0, off
        for start, end, markers in hits:
            index += base.count(b"\n", counted, start)
            counted = start
            if escaped and (raw_only or end - start + removed > self.max_line):
                # What the whole block lost bounds what this line lost; past that bound the raw line itself
                # decides (else an ANSI-heavy block sends every line the slow way).
                raw_lines = raw_lines or bytes(view).split(b"\n")
                if raw_only or len(raw_lines[index]) > self.max_line:
                    out.append((index, raw_lines[index], False, markers))
                    continue
            out.append((index, base[start:end], escaped, markers))
        return out, index + base.count(b"\n", counted, top)
