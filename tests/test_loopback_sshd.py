"""The loopback sshd (tests/loopback_sshd.py): libvirtd answers over qemu+ssh through it, and drop()
cuts the connection as a vanished host would, leaving no process and no file behind."""
import os
import subprocess
from pathlib import Path

import libvirt
import pytest

from conftest import wait_until
from lab import host
from loopback_sshd import LoopbackSshd

DAEMON = "libvirtd"   # the server name virt-admin knows the monolithic daemon by (scripts/start-libvirt.sh)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"   # a killed child waits a moment for init to reap it


def _libvirtd_client_pids() -> set[int]:
    """The process behind each of libvirtd's clients: over ssh, that is the remote virt-ssh-helper."""
    def admin(*args):
        return subprocess.run(["virt-admin", *args], capture_output=True, text=True, check=True, timeout=10).stdout
    ids = [line.split()[0] for line in admin("client-list", DAEMON).splitlines()[2:] if line.strip()]
    pids = set()
    for cid in ids:
        try:
            info = admin("client-info", DAEMON, cid)
        except subprocess.CalledProcessError:
            continue   # gone meanwhile
        pids |= {int(v) for k, _, v in (line.partition(":") for line in info.splitlines())
                 if k.strip() == "unix_process_id"}
    return pids


@pytest.mark.libvirt
def test_libvirtd_over_loopback_ssh_and_the_dropped_host():
    with LoopbackSshd() as sshd:
        folder = sshd.dir
        # The lab reads consoles with `virsh -c URI console`: virsh must get through without a prompt.
        listed = subprocess.run(["virsh", "-c", sshd.uri, "list", "--all"], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=30)
        assert listed.returncode == 0, listed.stderr

        conn = host.connect(sshd.uri)
        local = host.connect("qemu:///system")
        try:
            assert conn.getURI() == sshd.uri
            assert conn.getHostname() == local.getHostname()
            assert conn.getLibVersion() == local.getLibVersion()
            conn.listAllDomains()
            assert conn.isAlive() == 1 and host.lost(conn) is None

            ours = sshd.pids()
            helpers = {pid for pid in ours if Path(f"/proc/{pid}/comm").read_text().strip() == "virt-ssh-helper"}
            assert helpers, f"no virt-ssh-helper under sshd: {ours}"
            assert helpers & _libvirtd_client_pids(), "libvirtd does not see the ssh connection as a client"

            sshd.drop()
            assert wait_until(lambda: host.lost(conn) is not None, 5, 0.02), "the close callback never fired"
            assert host.lost(conn) == host.CLOSE_REASONS[1]   # end of file: at once, not a keepalive timeout
            with pytest.raises(libvirt.libvirtError):
                conn.getHostname()
            # SIGKILL is delivered at once, but the exit itself can take a moment on a loaded host.
            assert wait_until(lambda: not [pid for pid in ours if _alive(pid)], 5, 0.02), \
                [pid for pid in ours if _alive(pid)]
            assert wait_until(lambda: not helpers & _libvirtd_client_pids(), 5, 0.02), "libvirtd still holds the client"
        finally:
            host.disconnect(conn)
            host.disconnect(local)
    assert not folder.exists()
    # Nothing names the folder any more: neither the daemon (-f) nor libvirt's ssh client (-F).
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and _names(pid, folder)]


def _names(pid: str, folder: Path) -> bool:
    try:
        return str(folder).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
