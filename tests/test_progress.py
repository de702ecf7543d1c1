"""Progress while runs go (lab/progress.py): one row per run on a terminal, fed with structured notes."""
from lab.progress import Board, Note


class _Terminal:
    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_the_progress_board_keeps_one_line_per_run():
    term = _Terminal()
    board = Board(term)
    board.note(Note("kdump-1", 0.3, "started panic-lab-kdump-1 under tcg; waiting for the login prompt"))
    board.note(Note("kdump-2", 1.0, "started panic-lab-kdump-2 under tcg; waiting for the login prompt"))
    board.note(Note("kdump-1", 49.0, "stage panicked", stage="panicked"))
    last = term.text.rsplit("\x1b[J", 1)[-1].splitlines()   # what the screen shows after the last redraw
    assert [line.split()[:2] for line in last] == [["kdump-1", "panicked"], ["kdump-2", "starting"]]
    board.write("lab: kdump-2: host: libvirt went away\n")   # other lines go above the board
    assert "lab: kdump-2: host: libvirt went away\n" in term.text


def test_off_a_terminal_each_note_is_its_line():
    class Log(_Terminal):
        def isatty(self):
            return False
    log = Log()
    Board(log).note(Note("kdump-1", 49.04, "stage panicked", stage="panicked"))
    assert log.text == "[  49.0s] kdump-1: stage panicked\n"
