"""Offline classification in bounded memory: what a compacting transcript.Reader keeps of a log that says
the same things again and again, and how a verdict still counts what was folded away. (A live run keeps
every event: its logs are short, and the report cites their lines.)"""
from __future__ import annotations

from itertools import islice

from . import markers as M
from .vocabulary import GuestEvent as G

# Compacting (offline): of a run of events of one kind in a row, the first RUN_KEEP and the latest are kept.
# The rules read no other event of such a run (verdict.py: the first of a kind, the first three Hyper-V
# storage complaints, the last of a kind, and their order). Panics and banners each start a cycle or a
# boot, so none of them is dropped.
RUN_KEEP = 3
NOT_COMPACTED = frozenset({G.PANIC, G.KERNEL_BANNER, G.FIRMWARE})
# Panics in a row with nothing between are the exception: from the third on, each is a cycle of its own
# (a boot of its own, with kdump no longer loaded), so the middle ones differ in nothing but their line.
# The first PANICS_KEPT are kept (the first two may be a capture kernel's, not cycles; then the three
# cycles a verdict shows), and the last two (the final cycle and the panic before it); the others are
# counted (Events.folded), and the verdict counts them among its omitted cycles.
PANICS_KEPT = 5


# Cycles (panic to next panic) that repeat one another are folded too, one at a time or two by two (a
# crash, then the capture kernel's own panic): of a run of alike blocks (same kinds and texts) the first
# CYCLES_KEPT and the last two stay. The first two may read differently (a boot's capture-ness carries
# over two cycles); the verdict shows three crashes, reads the first three and the last of a kind, and a
# cycle's boot may begin in the cycle before.
CYCLES_KEPT = 5
PERIODS = (1, 2)


class Events(list):
    """A reader's events, with how many panics in a row were folded away (compact only), and for each
    kept block of cycles that stands for folded ones like it, (how many, cycles in a block), keyed by
    id() of its first event."""
    folded = 0

    def __init__(self):
        super().__init__()
        self.stands_for: dict[int, tuple[int, int]] = {}


def folded_crashes(events: list, starts: list[int]) -> int:
    """The crashes a compacting reader folded away: each panic in a row counted, and for each block
    that stands for folded ones like it (its cycles, panic to panic), as many crash starts as it holds.
    `starts`: where the kept crashes start (verdict.crash_starts)."""
    total, stands_for = getattr(events, "folded", 0), getattr(events, "stands_for", None)
    if stands_for:
        at = set(starts)
        for i, e in enumerate(events):
            if id(e) in stands_for:
                times, cycles = stands_for[id(e)]
                later_panics = (j for j in range(i + 1, len(events)) if events[j].kind == G.PANIC)
                end = next(islice(later_panics, cycles - 1, None), len(events))   # where its block ends
                total += times * sum(1 for j in range(i, end) if j in at)
    return total


def _alike(events: list, a: int, b: int, length: int, near: dict[int, int]) -> bool:
    """events[a:a + length] and events[b:b + length] carry the same events; `near`: for a wrapped command
    line, its distance from the last command line (verdict.capture_boots reads it)."""
    for i in range(length):
        x, y = events[a + i], events[b + i]
        if x.kind != y.kind or x.text != y.text or near.get(id(x)) != near.get(id(y)):
            return False
    return True


def _leans_on_cycle_before(events: list, start: int, end: int, near: dict[int, int]) -> bool:
    """Does a wrapped command line in events[start:end] count only through a command line in the cycle
    before? Then that cycle must stay: the verdict measures the distance on the lines kept."""
    own_cmdline = False
    for e in events[start:end]:
        if e.kind == G.KERNEL_CMDLINE:
            own_cmdline = True
        elif e.kind == G.CMDLINE_WRAPPED and not own_cmdline and near.get(id(e), M.WRAP_LINES + 1) <= M.WRAP_LINES:
            return True
    return False


class Compactor:
    """Keeps a reader's events as a verdict needs them (see RUN_KEEP, PANICS_KEPT, CYCLES_KEPT)."""

    def __init__(self):
        self.events = Events()
        self._run = 0   # events of the last kept event's kind in a row
        self._cycles: list[int] = []   # where the last kept cycles start in self.events
        self._periodic = dict.fromkeys(PERIODS, 0)   # period -> cycles at the end that repeat with it
        self._cmdline_line = None        # the last command line's line number (for wrapped ones)
        self._near: dict[int, int] = {}   # id of a kept wrapped command line -> lines from the last command line

    def keep(self, new: list) -> None:
        events = self.events
        for e in new:
            if e.kind == G.KERNEL_CMDLINE:
                self._cmdline_line = e.line
            elif e.kind == G.CMDLINE_WRAPPED and self._cmdline_line is not None:
                self._near[id(e)] = min(e.line - self._cmdline_line, M.WRAP_LINES + 1)
            if e.kind == G.PANIC and events and events[-1].kind == G.PANIC:
                self._run += 1
                if self._run > PANICS_KEPT + 2:
                    events[-2] = events[-1]   # the latest two stay: the one before becomes a counted one
                    events[-1] = e
                    events.folded += 1
                    continue
                self._fold_repeated_cycle()
                self._cycle_starts()
                events.append(e)
                continue
            if e.kind == G.PANIC:
                self._fold_repeated_cycle()
                self._cycle_starts()
            if events and e.kind == events[-1].kind and e.kind not in NOT_COMPACTED:
                self._run += 1
                if self._run > RUN_KEEP + 1:
                    self._near.pop(id(events[-1]), None)
                    events[-1] = e   # the run's latest so far replaces the one before
                    continue
            else:
                self._run = 1
            events.append(e)

    def _cycle_starts(self) -> None:
        """A panic is about to be kept: a cycle starts at it."""
        self._cycles = self._cycles[-3 * max(PERIODS):] + [len(self.events)]

    def _fold_repeated_cycle(self) -> None:
        """A panic is about to start a new cycle, so the last one is whole. For each period: does it repeat
        the cycle that many before? Past CYCLES_KEPT + 2 blocks in a row, the third last block goes and the
        block after it stands for it (one period at a time: the shortest first)."""
        events, cycles, n = self.events, self._cycles, len(self.events)
        if not cycles:
            return
        last, length = cycles[-1], n - cycles[-1]
        for p in PERIODS:
            repeats = False
            if len(cycles) > p:
                before = cycles[-1 - p]   # the cycle p before the last one
                repeats = cycles[-p] - before == length and _alike(events, before, last, length, self._near)
            self._periodic[p] = self._periodic[p] + 1 if repeats else min(p, len(cycles))
        for p in PERIODS:
            if self._periodic[p] > (CYCLES_KEPT + 2) * p and self._fold_block(p):
                return

    def _fold_block(self, p: int) -> bool:
        events, cycles = self.events, self._cycles
        gone, kept, last = cycles[-3 * p], cycles[-2 * p], cycles[-p]
        counts = events.stands_for
        inside = [counts[id(e)] for e in events[gone:last] if id(e) in counts]
        if any(cycles_each != p for _times, cycles_each in inside) or _leans_on_cycle_before(events, kept, last, self._near):
            return False
        times = counts.pop(id(events[kept]), (0, p))[0] + counts.pop(id(events[gone]), (0, p))[0] + 1
        for e in events[gone:kept]:
            self._near.pop(id(e), None)
        del events[gone:kept]
        counts[id(events[gone])] = (times, p)
        shift = kept - gone
        self._cycles = cycles[:-3 * p] + [c - shift for c in cycles[-2 * p:]]
        for q in PERIODS:   # the cycles gone were inside every run that reached back past them
            self._periodic[q] = self._periodic[q] - p if self._periodic[q] >= 3 * p else min(self._periodic[q], 2 * p)
        return True
