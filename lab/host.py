"""The libvirt connection and its event loop, shared by every stage that talks to the hypervisor."""
from __future__ import annotations

import os
import shutil
import threading

import libvirt

from .errors import HostError
from .hosts_option import is_remote

DEFAULT_URI = "qemu:///system"
_loop_started = False
_lock = threading.Lock()


def _quiet(_ctx, _err) -> None:
    """libvirt prints every error to stderr by default; we raise them instead."""


def uri() -> str:
    return os.environ.get("LAB_URI") or DEFAULT_URI


def uri_of(conn: libvirt.virConnect) -> str:
    """The URI the lab connected with: libvirt's getURI() drops the query (an ssh keyfile, no_verify),
    which `virsh -c` needs to reach the same host."""
    return getattr(conn, "_lab_uri", None) or conn.getURI()


def _start_event_loop() -> None:
    global _loop_started
    with _lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


class Unreachable(HostError):
    """libvirt did not answer at a URI: nothing was started there."""


class Refused(HostError):
    """The host's libvirt refused what a run needs there (its pool, a volume, the domain): the next run
    would be refused too, so a batch over several hosts drops it."""


def one_line(text: str) -> str:
    return " ".join((text or "").split())   # ssh's stderr, inside libvirt's message, spans lines


CLOSE_REASONS = {0: "an error", 1: "end of file from libvirtd (restarted or stopped?)", 2: "a keepalive timeout",
                 3: "the client asked"}


def connect(target: str | None = None) -> libvirt.virConnect:
    target = target or uri()
    libvirt.registerErrorHandler(_quiet, None)
    _start_event_loop()
    try:
        conn = libvirt.open(target)
    except libvirt.libvirtError as exc:
        hint = ("is libvirtd running there, and does the URI's transport reach it?" if is_remote(target)
                else "start it with `make setup`, or set LAB_URI")
        raise Unreachable("host", f"libvirt unreachable at {target}: {one_line(exc.get_error_message())} ({hint})") from None
    # Kept on the connection object itself: an id() would be reused by a later connection.
    state: dict[str, str] = {}

    def closed(_conn, reason, _opaque) -> None:
        state["lost"] = CLOSE_REASONS.get(reason, f"reason {reason}")
    conn.registerCloseCallback(closed, None)
    conn._lab_close_state = state
    conn._lab_uri = target
    return conn


# What a run needs on the host, by what needs it: checked before anything is created.
RUN_TOOLS = {"virsh": "the serial console", "qemu-img": "overlays and disk copies"}
SEED_TOOLS = ("genisoimage", "mkisofs")   # either one writes the NoCloud seed
RAW_DISK_TOOLS = {"e2fsck": "the disk check after a Gen1 run"}


def missing_tools(raw_disks: bool) -> list[str]:
    """Host tools a run would need and cannot find, each with what needs it."""
    wanted = dict(RUN_TOOLS, **(RAW_DISK_TOOLS if raw_disks else {}))
    missing = [f"{tool} ({why})" for tool, why in wanted.items() if not shutil.which(tool)]
    if not any(shutil.which(tool) for tool in SEED_TOOLS):
        missing.append("genisoimage (the cloud-init seed)")
    return missing


def create_paused(conn: libvirt.virConnect, xml: str, autodestroy: bool = True) -> libvirt.virDomain:
    """A transient domain, paused, that libvirt itself destroys when this connection closes (the lab
    killed with -9, a dropped session): the net under the lab's own teardown. A guest the user asked to
    keep (--keep) goes without that net; `lab clean` and `lab stop` still remove it."""
    flags = libvirt.VIR_DOMAIN_START_PAUSED | (libvirt.VIR_DOMAIN_START_AUTODESTROY if autodestroy else 0)
    return conn.createXML(xml, flags)


def disconnect(conn: libvirt.virConnect) -> None:
    """Really close a connection: the close callback holds a reference to it, so close() alone would
    leave it open (and libvirt would never autodestroy the domains started on it)."""
    try:
        conn.unregisterCloseCallback()
    except libvirt.libvirtError:
        pass
    try:
        conn.close()
    except libvirt.libvirtError:
        pass   # libvirtd went away: nothing left to close


def lost(conn: libvirt.virConnect) -> str | None:
    """Why libvirt closed this connection, or None while it is open."""
    return getattr(conn, "_lab_close_state", {}).get("lost")
