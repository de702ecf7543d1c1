"""Who each guest's QEMU runs as, and whether it can open what its domain names.

As root on qemu:///system the lab runs QEMU as libvirt's unprivileged user (libvirt-qemu on Debian), named
in a static DAC label with relabel='no': libvirt changes the owner of no file. The lab hands a run's
writable disk and its seed to that user, and checks before a domain starts that the user can reach every
other file (base image, kernel, initrd), so a cache it cannot read is a one-line error, not a failed start.
"""
from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

import libvirt

from . import host
from .errors import HostError, shown_path

DEFAULT = "libvirt-qemu"   # Debian's libvirt-daemon-system runs QEMU as this user on qemu:///system


@dataclass(frozen=True)
class QemuUser:
    name: str
    uid: int
    gid: int
    groups: frozenset[int]

    @property
    def label(self) -> str:
        return f"+{self.uid}:+{self.gid}"

    def give(self, path: Path, mode: int) -> None:
        """A file of this run's that QEMU opens: it becomes QEMU's user's, with `mode` (no one else's)."""
        os.chown(path, self.uid, self.gid)
        os.chmod(path, mode)

    def _may(self, st: os.stat_result, bits: tuple[int, int, int]) -> bool:
        if self.uid == 0:
            return True
        user_bit, group_bit, other_bit = bits
        if st.st_uid == self.uid:
            return bool(st.st_mode & user_bit)
        if st.st_gid in self.groups:
            return bool(st.st_mode & group_bit)
        return bool(st.st_mode & other_bit)

    def why_not(self, path: Path, write: bool = False) -> str | None:
        """None if QEMU's user can open `path` (for writing too with `write`), else what stops it."""
        given = Path(os.path.abspath(path))
        path = given.resolve()
        # QEMU walks the path as named, then wherever its symlinks lead.
        for folder in [*reversed(given.parents), *reversed(path.parents)]:
            try:
                st = folder.stat()
            except OSError:
                return f"{shown_path(folder)} does not exist"
            if not self._may(st, (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)):
                return f"{shown_path(folder)} is mode {stat.S_IMODE(st.st_mode):o} owned by {_owner(st)}"
        try:
            st = path.stat()
        except OSError:
            return f"{shown_path(path)} does not exist"
        if not self._may(st, (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)) or \
                (write and not self._may(st, (stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH))):
            return f"{shown_path(path)} is mode {stat.S_IMODE(st.st_mode):o} owned by {_owner(st)}"
        return None

    def check_reads(self, stage: str, files: list[Path]) -> None:
        for path in files:
            reason = self.why_not(path)
            if reason:
                raise HostError(stage, f"QEMU runs as {self.name}, which cannot read {shown_path(path)}: {reason}; "
                                       "keep the lab's cache (LAB_CACHE_DIR; as root /var/cache/panic-lab by default) "
                                       "and scratch (LAB_WORK_DIR) where that user can reach them")


def _owner(st: os.stat_result) -> str:
    try:
        return pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        return str(st.st_uid)


def for_connection(conn: libvirt.virConnect) -> QemuUser | None:
    return for_uri(host.uri_of(conn))


def for_uri(uri: str) -> QemuUser | None:
    """The user the lab names for QEMU, or None where libvirt's own choice is already unprivileged (a
    session daemon, or a user other than root on the system daemon: libvirt then relabels the files)."""
    if os.geteuid() != 0 or host.is_remote(uri) or not uri.endswith("/system"):
        return None   # a remote host's QEMU user is its libvirt's business: it relabels the volumes itself
    name = os.environ.get("LAB_QEMU_USER") or DEFAULT
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise HostError("domain", f"QEMU's user {name!r} does not exist on this host (LAB_QEMU_USER; "
                                  f"Debian's libvirt-daemon-system creates {DEFAULT})") from None
    groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
    return QemuUser(name, entry.pw_uid, entry.pw_gid, frozenset(groups))


def label_for(conn: libvirt.virConnect) -> str | None:
    return label_for_uri(host.uri_of(conn))


def label_for_uri(uri: str) -> str | None:
    qemu = for_uri(uri)
    return qemu.label if qemu else None
