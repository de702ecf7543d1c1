"""`lab clean`: remove what the lab made, and nothing else.

A domain is the lab's when its name has the lab's prefix and its metadata names an owner pid. A folder
is the lab's when it carries the lab's mark (paths.MARK); inside the scratch folder, an entry is a run's
when it carries its owner's pid. Anything of the lab's whose owner still runs is left, unless --force.
"""
from __future__ import annotations

import platform
import shutil
from pathlib import Path

import libvirt

from . import catalog, host, image, kept, paths, storage


def _owner(dom: libvirt.virDomain, c: "_Cleaner", remote: bool) -> int | None:
    """The pid that started a lab domain, from its metadata; None if the domain is not the lab's, or, on
    a remote host, another machine's lab started it (its pids mean nothing here) and --force is not given."""
    if not dom.name().startswith(paths.NAME_PREFIX):
        return None
    origin = kept.origin(dom)
    if remote and origin and origin != platform.node() and not c.force:
        c.done.append(f"left {dom.name()}: the lab on {origin} started it (--force takes it)")
        return None
    return kept.lab_run(dom)[1]


class _Cleaner:
    def __init__(self, force: bool):
        self.force = force
        self.done: list[str] = []

    def may_take(self, what: str, owner: int) -> bool:
        """The one owner check: a leftover (its lab process is gone) goes; a live run's thing stays."""
        if paths.owner_alive(owner) and not self.force:
            self.done.append(f"left {what}: its lab run (pid {owner}) is still going")
            return False
        return True

    def remove_tree(self, folder: Path, said: str) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        self.done.append(f"{said} {folder}")


def clean(images: bool = False, force: bool = False, snapshots: bool = False, hosts: list[str] | None = None) -> list[str]:
    """Remove lab domains and scratch whose lab process is gone (all of them with force). `hosts` cleans
    those libvirt hosts (a remote one: its domains and the volumes the lab sent there); this machine's
    scratch and cache are cleaned when one of them is this machine, or when none is given."""
    c = _Cleaner(force)
    for uri in hosts or [host.uri()]:
        try:
            conn = host.connect(uri)
        except host.Unreachable as exc:
            if not hosts or len(hosts) == 1:
                raise
            c.done.append(f"left {uri} as it is: {exc.message}")   # the other hosts are still cleaned
            continue
        try:
            _domains(conn, c, remote=host.is_remote(uri))
            if host.is_remote(uri):
                _volumes(conn, c, images)
        finally:
            host.disconnect(conn)
    if hosts and all(host.is_remote(uri) for uri in hosts):
        return c.done or ["nothing to clean"]
    _scratch(c)
    cache = paths.cache_dir()
    if cache.exists() and not paths.is_marked(cache):
        c.done.append(f"left the cache {cache}: it does not carry the lab's mark ({paths.MARK})")
    elif cache.exists():
        _cache(cache, c, images=images, snapshots=snapshots)
    return c.done or ["nothing to clean"]


def _domains(conn: libvirt.virConnect, c: _Cleaner, remote: bool = False) -> None:
    for dom in conn.listAllDomains():
        try:
            owner = _owner(dom, c, remote)
            if owner is None or not c.may_take(dom.name(), owner):
                continue
            persistent = dom.isPersistent()
            if dom.isActive():
                dom.destroy()
            if persistent:
                dom.undefine()
            c.done.append(f"removed domain {dom.name()}")
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # gone on its own meanwhile: fine
                raise


def _volumes(conn: libvirt.virConnect, c: _Cleaner, images: bool) -> None:
    """A remote host's volumes of the lab's pool that carry its mark: a run's whose lab is gone (a lab on
    another machine's only with --force); with --images, the uploaded images too."""
    where = host.uri_of(conn)
    for left in storage.leftovers(conn):
        name = left.volume.name()
        if left.pid is None and not images:
            continue
        if not left.ours and not c.force:
            c.done.append(f"left volume {name}: a lab on another machine made it (--force takes it)")
            continue
        if left.pid is not None and left.ours and not c.may_take(f"volume {name}", left.pid):
            continue
        try:
            left.volume.delete(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                c.done.append(f"left volume {name}: {host.one_line(exc.get_error_message())}")
                continue
        c.done.append(f"removed volume {name} on {where}")


def _scratch(c: _Cleaner) -> None:
    work = paths.work_dir()
    if not work.exists():
        return
    if not paths.is_marked(work):
        c.done.append(f"left {work}: it does not carry the lab's mark ({paths.MARK})")
        return
    for entry in sorted(work.iterdir()):
        if entry.name.startswith(paths.MARK):
            continue
        owner = paths.scratch_owner(entry)
        if owner is None:
            c.done.append(f"left {entry}: no owner mark ({paths.OWNER}), so not a lab run's")
        elif c.may_take(str(entry), owner):
            c.remove_tree(entry, "removed run scratch")


def _cache(cache: Path, c: _Cleaner, images: bool, snapshots: bool) -> None:
    for leftover, owner, pgid in image.interrupted_builds():
        if not c.may_take(str(leftover), owner):
            continue
        if pgid > 1:
            image.stop_builder(pgid)
        image.remove_build(leftover)
        c.done.append(f"removed interrupted image build {leftover}")
    snaps = cache / "snapshots"
    for unfinished in sorted(snaps.glob("*.tmp-*")) if snaps.exists() else []:
        pid = unfinished.name.rsplit("-", 1)[-1]
        if pid.isdigit() and c.may_take(str(unfinished), int(pid)):
            c.remove_tree(unfinished, "removed unfinished snapshot")
    if snapshots and snaps.exists():
        c.remove_tree(snaps, "removed snapshots")
    apt = cache / "archive"
    for fetch in sorted(apt.glob(".*-fetch-*-*")) if apt.exists() else []:
        pid = fetch.name.rsplit("-fetch-", 1)[-1].split("-", 1)[0]
        if pid.isdigit() and c.may_take(str(fetch), int(pid)):
            c.remove_tree(fetch, "removed an interrupted fetch from Debian's archive")
    for part in catalog.partial_downloads():
        if part.is_dir():
            part.rmdir()
            c.done.append(f"removed empty image folder {part} (a pull that got nothing)")
        else:
            part.unlink(missing_ok=True)
            c.done.append(f"removed partial download {part} (a pull would have resumed it)")
    image_root = cache / "images"
    if images and image_root.exists():
        if (cache / "cloud").exists():
            c.remove_tree(cache / "cloud", "removed pulled images")
        for built in image_root.iterdir():
            if built.is_dir() and not built.name.startswith("."):
                c.remove_tree(built, "removed image")
    symbols = cache / "debuginfo"
    if images and symbols.exists():
        for fetched in symbols.iterdir():
            if fetched.is_dir() and not fetched.name.startswith("."):
                c.remove_tree(fetched, "removed debug symbols")
