"""An sshd of the test's own on loopback, so that tests reach this host's libvirtd over qemu+ssh as the
lab would reach a remote one, and can drop every connection at once, as if that host vanished.

Its keys, configs and log live in one private folder: no key or config in /etc/ssh or /root/.ssh is
used, and none is written there. Needs root (sshd logs in as root) and openssh-server
(scripts/host-setup.sh)."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")   # sshd refuses to start without it; the package's init script makes it


class LoopbackSshd:
    """`with LoopbackSshd() as sshd: libvirt.open(sshd.uri)`; drop() cuts every connection, stop() also
    removes the folder."""

    def __init__(self, start_timeout: float = 5.0):
        if not os.access(SSHD, os.X_OK):
            raise FileNotFoundError(f"{SSHD} is missing: openssh-server is not installed (make setup installs it)")
        self.proc = None
        self.dir = Path(tempfile.mkdtemp(prefix="panic-lab-sshd-", dir="/var/tmp"))   # mkdtemp: 0700
        try:
            self.port = _free_port()
            self.log = self.dir / "sshd.log"
            self._write_files()
            self._start(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _write_files(self) -> None:
        d = self.dir
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"panic-lab-{name}",
                            "-f", str(d / name)], check=True, capture_output=True)
        (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
        (d / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {(d / 'host_key.pub').read_text()}")
        (d / "sshd_config").write_text(f"""\
ListenAddress 127.0.0.1:{self.port}
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
AuthorizedPrincipalsFile none
AllowUsers root
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The keys sit in a 0700 folder of ours, but its parent (/var/tmp) is world-writable: StrictModes
# would refuse the authorized_keys for that.
StrictModes no
X11Forwarding no
AllowAgentForwarding no
AllowTcpForwarding no
PermitTunnel no
PrintMotd no
PrintLastLog no
LogLevel VERBOSE
""")
        # The client's side: libvirt runs `command` as its ssh, and it reads this config, not
        # ~/.ssh/config nor /etc/ssh/ssh_config, and checks the host key against our known_hosts (so
        # /root/.ssh/known_hosts is never written, and no_verify is not needed).
        (d / "ssh_config").write_text(f"""\
UserKnownHostsFile {d}/known_hosts
GlobalKnownHostsFile /dev/null
StrictHostKeyChecking yes
UpdateHostKeys no
IdentitiesOnly yes
BatchMode yes
ControlMaster no
ControlPath none
""")
        wrapper = d / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec ssh -F {d}/ssh_config "$@"\n')
        wrapper.chmod(0o700)
        q = lambda p: quote(str(p), safe="/")
        self.uri = (f"qemu+ssh://root@127.0.0.1:{self.port}/system"
                    f"?keyfile={q(d / 'client_key')}&no_tty=1&command={q(wrapper)}")

    def _start(self, timeout: float) -> None:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        with open(self.log, "ab") as log:
            # Its own session, so that nothing of it is tied to the test's terminal or process group.
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.dir / "sshd_config")],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd not listening on port {self.port} after {timeout} s: "
                                       f"{self.log.read_text()[-2000:]}") from None
                time.sleep(0.02)

    def pids(self) -> set[int]:
        """The daemon and every process under it. Each connection's sshd calls setsid(), and so does
        the one that runs the command (virt-ssh-helper): neither the process group nor the session
        holds them, the parent links do."""
        if self.proc is None or self.proc.poll() is not None:
            return set()
        return _descendants({self.proc.pid})

    def drop(self) -> None:
        """Kill the daemon and all its connections at once: every client sees its connection end."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # Stopped first, top down, until no new process appears: a stopped process cannot fork, so
            # nothing escapes between the walk and the kill.
            stopped: set[int] = set()
            while new := _descendants({self.proc.pid}) - stopped:
                for pid in new:
                    _signal(pid, signal.SIGSTOP)
                stopped |= new
            for pid in stopped:
                _signal(pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        self.drop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.stop()
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(roots: set[int]) -> set[int]:
    """roots and every live process whose parent chain leads to one of them, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue   # gone meanwhile
            fields = stat[stat.rindex(")") + 2:].split()   # the name may hold spaces and parentheses
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
