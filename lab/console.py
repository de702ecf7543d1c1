"""Stage 3, console: pexpect on `virsh console`, attached while the domain is paused so no byte is missed.

Every byte read goes to the transcript first; matching is done on what the transcript's reader saw.
"""
from __future__ import annotations

import re
import threading
import uuid

import pexpect

from .timeout import Timeout
from .errors import HostError, LabError
from .seed import PASSWORD
from .transcript import Event, Transcript

LOGIN_RESULT = re.compile(r"root@[^:\s]+:[^\n]*# ?$|Login incorrect", re.M)
AUTOMATIC_LOGIN = re.compile(r"login: *root \(automatic login\)")
PROMPT_LINE_MAX = 256
# Not anchored at the line's end: systemd may still write a status line after it.
SHELL_PROMPT = re.compile(r"root@[^:\s]+:\S*# ")
KEY_VALUE = re.compile(r"^lab:([\w.-]+)=(.*)$")
CONSOLE_BUSY = rb"[Aa]ctive console session exists"   # virsh, when another viewer holds the console
BUSY_WAIT = 1.0   # seconds virsh is given to refuse, after its banner


class ConsoleClosed(HostError):
    pass


# Set when the user interrupts a set of runs: runs in worker threads (which never see the signal)
# stop at their next console read and clean up as if they had been interrupted themselves.
CANCEL = threading.Event()


class Console:
    def __init__(self, uri: str, domain_name: str, transcript: Transcript, host_lost=lambda: None):
        self.uri = uri
        self.host_lost = host_lost   # () -> why the libvirt connection closed, or None
        self.domain_name = domain_name
        self.transcript = transcript
        self.child: pexpect.spawn | None = None
        self.text = ""          # the recent console text, for prompt and command matching
        self._dropped = 0       # characters trimmed from the front of self.text
        self.prompt_mark = 0    # where the last login prompt's line begins, at most (a mark())
        self._events_seen = 0
        self.took_over = False  # attached with --force: another viewer was detached

    # -- plumbing -------------------------------------------------------------------------------
    def attach(self, deadline: Timeout) -> None:
        """Attach to the domain's serial console. Only if someone else holds it is it taken over
        (--force detaches them), and the report says so."""
        for force in (False, True):
            self.child = pexpect.spawn("virsh", ["-c", self.uri, "console", self.domain_name] + (["--force"] if force else []),
                                       encoding=None, echo=False, timeout=None)
            try:
                # virsh's own banner; guest bytes start only after the domain is resumed.
                found = self.child.expect([rb"Escape character is [^\n]*\n", CONSOLE_BUSY],
                                          timeout=max(deadline.remaining(), 0.1))
            except (pexpect.TIMEOUT, pexpect.EOF):
                said = (self.child.before or b"").decode(errors="replace").strip()
                self._stop()
                raise HostError("console", f"virsh console did not attach to {self.domain_name}: {said[:200] or 'no output'}") from None
            # virsh prints its banner before it opens the console: a viewer already there shows as
            # virsh's refusal right after. The domain is paused, so nothing else arrives meanwhile.
            if found == 0 and self.child.expect([CONSOLE_BUSY, pexpect.EOF, pexpect.TIMEOUT], timeout=BUSY_WAIT) == 2:
                self.took_over = force
                return
            self._stop()   # virsh's refusal is not guest output: nothing of it goes to the transcript
        raise HostError("console", f"the console of {self.domain_name} stays busy even with --force")

    def pump(self, timeout: float) -> list[Event]:
        """Read what the console has (waiting at most `timeout`), log it, return the new marker events."""
        assert self.child is not None
        if CANCEL.is_set():
            raise KeyboardInterrupt("cancelled with the other runs")
        lost = self.host_lost()
        if lost:
            # virsh console does not notice a libvirtd restart: it just stops delivering.
            raise HostError("host", f"the libvirt connection closed: {lost}")
        try:
            data = self._read(timeout)
        except pexpect.TIMEOUT:
            return []
        except pexpect.EOF:
            raise ConsoleClosed("console", "the console closed (the domain is gone)") from None
        before = self.mark()
        events = self.transcript.write(data)
        self.text += data.decode(errors="replace")
        if any(e.kind == "login_prompt" for e in events):
            self.prompt_mark = before - PROMPT_LINE_MAX   # its line may have begun in an earlier read
        if len(self.text) > 262144:
            self._dropped += len(self.text) - 131072
            self.text = self.text[-131072:]
        return events

    def _read(self, timeout: float) -> bytes:
        # Bytes that pexpect's expect() read past its match wait in its buffer, not in the pty.
        buffered = self.child.buffer
        if buffered:
            self.child.buffer = self.child.string_type()
            return buffered
        return self.child.read_nonblocking(65536, timeout=max(timeout, 0.01))

    def new_events(self) -> list[Event]:
        events = self.transcript.reader.events[self._events_seen:]
        self._events_seen = len(self.transcript.reader.events)
        return events

    def send(self, text: str) -> None:
        assert self.child is not None
        self.child.send(text.encode())

    def wait_text(self, pattern: re.Pattern, deadline: Timeout, since: int, what: str) -> re.Match:
        while True:
            m = pattern.search(self.text, max(0, since - self._dropped))
            if m:
                return m
            if deadline.expired():
                raise LabError("console", f"{what}: not seen within {deadline.seconds:.0f} s ({deadline.name})")
            self.pump(min(1.0, deadline.remaining()))

    def mark(self) -> int:
        return self._dropped + len(self.text)

    def close(self) -> None:
        """Stop virsh console, keeping whatever it had already read: no console byte is lost."""
        if self.child is None:
            return
        try:
            for _ in range(64):   # bounded: a guest that keeps printing must not hold the teardown
                self.transcript.write(self._read(0.05))
        except (pexpect.TIMEOUT, pexpect.EOF, OSError, LabError):
            pass
        finally:
            self._stop()

    def _stop(self) -> None:
        if self.child is not None:
            self.child.close(force=True)
            self.child = None

    # -- guest interaction ----------------------------------------------------------------------
    def login(self, deadline: Timeout, by_getty: bool = False) -> float:
        """Wait for a getty, log in as root (or, by_getty, let it log root in by itself); returns the host
        time the prompt was seen."""
        prompt_t = None
        while True:
            for event in self.new_events():
                if event.kind == "login_prompt":
                    prompt_t = event.t
            if prompt_t is not None:
                break
            if deadline.expired():
                raise LabError("console", f"no login prompt within {deadline.seconds:.0f} s ({deadline.name})")
            self.pump(min(1.0, deadline.remaining()))
        if by_getty:
            # The prompt may have been read before (follow() reads up to it): look from where it was read.
            self.wait_text(AUTOMATIC_LOGIN, deadline, self.prompt_mark, "the getty's automatic login")
            self.wait_text(SHELL_PROMPT, deadline, self.prompt_mark, "shell prompt after the automatic login")
            return prompt_t
        for _attempt in range(5):
            start = self.mark()
            self.send("root\r")
            self.wait_text(re.compile(r"[Pp]assword: ?$", re.M), deadline, start, "password prompt")
            start = self.mark()
            self.send(PASSWORD + "\r")
            m = self.wait_text(LOGIN_RESULT, deadline, start, "shell prompt")
            if "Login incorrect" not in m.group(0):
                return prompt_t
            self.wait_text(re.compile(r"login: ?$", re.M), deadline, self.mark() - 20, "login prompt after a failed login")
        raise LabError("console", "root login refused five times: the seed's password was not applied")

    def command(self, command: str, deadline: Timeout) -> tuple[int, str]:
        token = uuid.uuid4().hex[:8]
        start = self.mark()
        # The echoed command line cannot match the marker: printf assembles it from pieces.
        self.send(f"{command}; printf 'LAB%s-%s-%s\\n' DONE $? {token}\r")
        m = self.wait_text(re.compile(rf"LABDONE-(\d+)-{token}"), deadline, start, f"`{command}` to finish")
        return int(m.group(1)), self.text[max(0, start - self._dropped):m.start()]

    def facts(self, command: str, deadline: Timeout) -> dict[str, str]:
        """Run a guest helper that prints `lab:key=value` lines; return them as a dict."""
        _rc, output = self.command(command, deadline)
        found = {}
        for line in output.replace("\r", "").split("\n"):
            m = KEY_VALUE.match(line.strip())
            if m:
                found[m.group(1)] = m.group(2).strip()
        return found

    def trigger(self, cpu: int | None = None) -> str:
        """Panic the guest through sysrq c, on one CPU if asked; returns the command typed."""
        command = "echo c > /proc/sysrq-trigger"
        if cpu is not None:
            command = f"taskset -c {int(cpu)} sh -c 'echo c > /proc/sysrq-trigger'"
        self.send(command + "\r")
        return command
