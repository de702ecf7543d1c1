"""Which accelerator really works here, decided by a short boot probe (never by /dev/kvm alone).

On this kind of host /dev/kvm opens but a KVM guest hangs right after "Probing EDD", so only a kernel
that actually boots under KVM within the deadline counts. The answer, and the Hyper-V enlightenments
libvirt and QEMU accept for that accelerator, are cached per host kernel, QEMU and libvirt version.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import select
import termios
import time
import tty
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import libvirt

from . import host, paths, profiles, qemu_user, signals
from .errors import HostError

PROBE_SECONDS = 20.0
PROBE_DONE = b"Kernel panic - not syncing"   # the kernel got all the way to mounting root

# Everything the lab asks for, in the order QEMU's dependencies need (synic/stimer need vpindex/time).
HYPERV_WANTED = [
    ("relaxed", {}), ("vapic", {}), ("spinlocks", {"retries": "8191"}), ("vpindex", {}),
    ("runtime", {}), ("synic", {}), ("stimer", {}), ("frequencies", {}), ("reset", {}),
    ("vendor_id", {"value": "Microsoft Hv"}),
]


@dataclass(frozen=True)
class Accel:
    name: str                  # "kvm" or "tcg"
    domain_type: str           # libvirt <domain type=...>
    cpu_mode: str
    hyperv: tuple              # accepted enlightenments: ((name, attrs), ...)
    hyperv_rejected: tuple
    probe: str                 # how the choice was made

    def hyperv_elements(self) -> list[dict]:
        return [{"name": n, "attrs": dict(a)} for n, a in self.hyperv]

    def to_json(self) -> dict:
        data = asdict(self)
        data["hyperv"] = [n for n, _ in self.hyperv]
        data["hyperv_rejected"] = list(self.hyperv_rejected)
        return data


TCG_BASE = dict(name="tcg", domain_type="qemu", cpu_mode="custom")
KVM_BASE = dict(name="kvm", domain_type="kvm", cpu_mode="host-passthrough")


def _cache_file(conn: libvirt.virConnect) -> str:
    qemu = qemu_user.for_connection(conn)   # what QEMU may open (/dev/kvm) depends on who it runs as
    machine = f"remote-{conn.getHostname()}" if host.is_remote(host.uri_of(conn)) else platform.release()
    ident = f"{machine}-{conn.getVersion()}-{conn.getLibVersion()}-uid{qemu.uid if qemu else 'libvirt'}"
    return str(paths.cache_dir() / f"accel-{ident}.json")


def cached_choice(conn: libvirt.virConnect) -> str | None:
    """What the last probe chose on this host (kvm or tcg), without probing."""
    forced = os.environ.get("LAB_ACCEL")
    if forced:
        return forced
    try:
        with open(_cache_file(conn)) as f:
            return json.load(f).get("choice")
    except (OSError, ValueError):
        return None


def unprobed() -> Accel:
    """For a dry run: TCG (or LAB_ACCEL) with every enlightenment the lab asks for; no probe, no libvirt."""
    forced = os.environ.get("LAB_ACCEL")
    base = KVM_BASE if forced == "kvm" else TCG_BASE
    return Accel(hyperv=tuple((n, tuple(sorted(a.items()))) for n, a in HYPERV_WANTED), hyperv_rejected=(),
                 probe=f"not probed (dry run): rendered for {base['name']}; a real run probes KVM first, "
                       "then which Hyper-V enlightenments QEMU accepts", **base)


def detect(conn: libvirt.virConnect, probe_kernel) -> Accel:
    """`probe_kernel()` gives the kernel a probe boots (asked for only when a probe really runs); the
    probe's disk-less domain renders from the real template."""
    qemu = qemu_user.for_connection(conn)

    def readable_kernel() -> str:
        kernel = probe_kernel() if callable(probe_kernel) else probe_kernel
        if qemu:
            qemu.check_reads("accel", [Path(kernel)])
        return kernel
    render = profiles.probe_renderer(readable_kernel, qemu.label if qemu else None, host.is_remote(host.uri_of(conn)))
    forced = os.environ.get("LAB_ACCEL")
    if forced and forced not in ("kvm", "tcg"):
        raise HostError("accel", f"LAB_ACCEL={forced!r}: expected kvm or tcg")
    paths.owned_cache()
    cache = _cache_file(conn)
    # One probe at a time per host: two runs starting together must not both probe, nor read a half-written file.
    with paths.locked(Path(cache).parent):
        cached = {}
        if os.path.exists(cache):
            with open(cache) as f:
                cached = json.load(f)
        choice = forced or cached.get("choice")
        probe = cached.get("probe", "")
        if not choice:
            choice, probe = _probe_kvm(conn, render)
        elif forced:
            probe = f"forced by LAB_ACCEL={forced}"
        base = KVM_BASE if choice == "kvm" else TCG_BASE
        hv_key = f"hyperv-{choice}"
        if hv_key not in cached:
            cached[hv_key] = _probe_hyperv(conn, render, base)
        if not forced:
            cached.update(choice=choice, probe=probe)
        with open(cache + ".tmp", "w") as f:
            json.dump(cached, f, indent=2)
        os.replace(cache + ".tmp", cache)
    accepted = tuple((n, tuple(sorted(dict(a).items()))) for n, a in HYPERV_WANTED if n in cached[hv_key])
    rejected = tuple(n for n, _ in HYPERV_WANTED if n not in cached[hv_key])
    return Accel(hyperv=tuple((n, a) for n, a in accepted), hyperv_rejected=rejected, probe=probe, **base)


@contextlib.contextmanager
def _probe_domain(conn, xml):
    """A probe domain for the block, destroyed on any way out (autodestroy is the net under that)."""
    with signals.held():
        dom = host.create_paused(conn, xml)
    try:
        yield dom
    finally:
        try:
            dom.destroy()
        except libvirt.libvirtError:
            pass


def _probe_hyperv(conn, render, base) -> list[str]:
    """Keep each enlightenment QEMU starts with, adding them one by one in dependency order."""
    accepted: list[str] = []
    for name, attrs in HYPERV_WANTED:
        trial = [(n, a) for n, a in HYPERV_WANTED if n in accepted or n == name]
        try:
            with _probe_domain(conn, render(base, [{"name": n, "attrs": a} for n, a in trial], f"hvprobe-{name}")):
                accepted.append(name)
        except libvirt.libvirtError:
            continue
    return accepted


def _probe_kvm(conn, render) -> tuple[str, str]:
    if host.is_remote(host.uri_of(conn)):
        return "tcg", "a remote host: the KVM boot probe reads a console on this machine; LAB_ACCEL=kvm forces KVM"
    if not os.path.exists("/dev/kvm"):
        return "tcg", "no /dev/kvm"
    try:
        with _probe_domain(conn, render(KVM_BASE, [], "kvmprobe")) as dom:
            return _watch_kvm_probe(dom)
    except libvirt.libvirtError as exc:
        return "tcg", f"KVM domain did not start: {exc.get_error_message()[:120]}"


def _watch_kvm_probe(dom) -> tuple[str, str]:
    pty = ET.fromstring(dom.XMLDesc()).find("./devices/serial/source").get("path")
    fd = os.open(pty, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd, termios.TCSANOW)
        dom.resume()
        seen = b""
        deadline = time.monotonic() + PROBE_SECONDS
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    seen = (seen + os.read(fd, 65536))[-65536:]
                except BlockingIOError:
                    continue
            if PROBE_DONE in seen:
                return "kvm", f"KVM probe kernel reached panic-on-no-root in {PROBE_SECONDS - (deadline - time.monotonic()):.1f} s"
        tail = seen.decode(errors="replace").strip().splitlines()[-1:] or ["<no output>"]
        return "tcg", f"KVM probe kernel did not boot within {PROBE_SECONDS:.0f} s (last line: {tail[0][:80]})"
    finally:
        os.close(fd)
