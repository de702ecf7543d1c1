"""How the console logs in on the serial getty: the lab's own images log root in by themselves
(`login: root (automatic login)`), others ask for the user name and the seed's password. A fake console
child replays what a guest writes; nothing is typed into a shell that is already there."""
import time

import pexpect
import pytest

from lab.console import PASSWORD, Console
from lab.errors import LabError
from lab.timeout import Timeout
from lab.transcript import Transcript

BANNER = b"\r\nDebian GNU/Linux 12 panic-lab ttyS0\r\n\r\n"
AUTOMATIC = b"panic-lab login: root (automatic login)\r\n\r\n"
SHELL = b"root@panic-lab:~# "
STATUS = b"".join(b"\r\n[  OK  ] Reached target multi-user.target - Multi-User System %d.\r\n" % i for i in range(4))


class FakeChild:
    """Hands out the guest's writes one read at a time; a reply may wait for what the lab types."""
    string_type = bytes

    def __init__(self, reads, replies=None):
        self.reads, self.replies, self.buffer, self.sent = list(reads), dict(replies or {}), b"", []

    def read_nonblocking(self, size, timeout):
        if self.reads:
            return self.reads.pop(0)
        time.sleep(min(timeout, 0.02))
        raise pexpect.TIMEOUT("")

    def send(self, data):
        self.sent.append(data)
        if data in self.replies:
            self.reads.append(self.replies.pop(data))

    def close(self, force=False):
        pass


def console(tmp_path, child) -> Console:
    c = Console("qemu:///system", "panic-lab-test", Transcript(tmp_path))
    c.child = child
    return c


@pytest.mark.parametrize("reads", [
    [BANNER + AUTOMATIC + SHELL],
    [BANNER + AUTOMATIC + SHELL + STATUS * 4],                   # a busy host reads more at once
    [BANNER + AUTOMATIC + SHELL + b"[  OK  ] Reached target cloud-init.target.\r\n"],   # systemd writes on
    [BANNER + b"panic-lab login: ro", b"ot (automatic login)\r\n\r\n" + SHELL],   # cut mid-line
], ids=["whole", "with-more-after-it", "status-on-the-prompt-line", "cut-mid-line"])
def test_an_automatic_login_types_nothing(tmp_path, reads):
    c = console(tmp_path, FakeChild(reads))
    assert c.login(Timeout("boot", 5), by_getty=True) is not None
    assert c.child.sent == []


def test_an_automatic_login_read_before_the_login_is_asked_for_still_counts(tmp_path):
    """follow() reads the rebooted guest up to its prompt, then asks for the login."""
    c = console(tmp_path, FakeChild([BANNER + AUTOMATIC + SHELL + STATUS]))
    c.pump(1.0)
    c.login(Timeout("login-again", 5), by_getty=True)
    assert c.child.sent == []


def test_a_getty_that_asks_gets_the_user_name_and_the_password(tmp_path):
    replies = {b"root\r": b"root\r\nPassword: ", (PASSWORD + "\r").encode(): b"\r\n" + SHELL}
    c = console(tmp_path, FakeChild([BANNER + b"panic-lab login: "], replies))
    c.login(Timeout("boot", 5), by_getty=False)
    assert c.child.sent == [b"root\r", (PASSWORD + "\r").encode()]


def test_an_automatic_login_that_never_comes_names_what_was_missing(tmp_path):
    c = console(tmp_path, FakeChild([BANNER + b"panic-lab login: "]))
    with pytest.raises(LabError, match="automatic login"):
        c.login(Timeout("boot", 1), by_getty=True)
    assert c.child.sent == []
