"""`lab clean`: remove what the lab made, recognised by name prefix and metadata, and nothing else."""
from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET

import libvirt

from . import catalog, host, image, paths


def _owner(dom: libvirt.virDomain) -> int | None:
    """The pid that started a lab domain, from its metadata; None if the domain is not the lab's."""
    if not dom.name().startswith(paths.NAME_PREFIX):
        return None
    try:
        element = ET.fromstring(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, paths.METADATA_NS))
    except libvirt.libvirtError:
        return None
    return int(element.get("owner") or 0)


def _alive(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean(images: bool = False, force: bool = False, snapshots: bool = False) -> list[str]:
    """Remove lab domains and scratch whose lab process is gone (all of them with force)."""
    done = []
    conn = host.connect()
    for dom in conn.listAllDomains():
        try:
            owner = _owner(dom)
            if owner is None:
                continue
            name = dom.name()
            if _alive(owner) and not force:
                done.append(f"left {name}: its lab run (pid {owner}) is still going")
                continue
            persistent = dom.isPersistent()
            if dom.isActive():
                dom.destroy()
            if persistent:
                dom.undefine()
            done.append(f"removed domain {name}")
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # gone on its own meanwhile: fine
                raise
    work = paths.work_dir()
    if work.exists():
        for run in sorted(work.iterdir()):
            pid_file = run / "owner.pid"
            owner = int(pid_file.read_text().strip() or 0) if pid_file.exists() else 0
            if _alive(owner) and not force:
                done.append(f"left {run}: its lab run (pid {owner}) is still going")
                continue
            shutil.rmtree(run, ignore_errors=True)
            done.append(f"removed run scratch {run}")
    for leftover, owner, pgid in image.interrupted_builds():
        if _alive(owner) and not force:
            done.append(f"left {leftover}: its lab run (pid {owner}) is still building it")
            continue
        if pgid > 1:
            image.stop_builder(pgid)
        image.remove_build(leftover)
        done.append(f"removed interrupted image build {leftover}")
    snaps = paths.cache_dir() / "snapshots"
    for unfinished in sorted(snaps.glob("*.tmp-*")) if snaps.exists() else []:
        if _alive(int(unfinished.name.rsplit("-", 1)[-1])) and not force:
            continue
        shutil.rmtree(unfinished, ignore_errors=True)
        done.append(f"removed unfinished snapshot {unfinished}")
    if snapshots and snaps.exists():
        shutil.rmtree(snaps, ignore_errors=True)
        done.append(f"removed snapshots {snaps}")
    for part in catalog.partial_downloads():
        if part.is_dir():
            part.rmdir()
            done.append(f"removed empty image folder {part} (a pull that got nothing)")
        else:
            part.unlink(missing_ok=True)
            done.append(f"removed partial download {part} (a pull would have resumed it)")
    image_root = paths.cache_dir() / "images"
    if image_root.exists():
        if images:
            cloud = paths.cache_dir() / "cloud"
            if cloud.exists():
                shutil.rmtree(cloud, ignore_errors=True)
                done.append(f"removed pulled images {cloud}")
            for built in image_root.iterdir():
                if built.is_dir() and not built.name.startswith("."):
                    shutil.rmtree(built, ignore_errors=True)
                    done.append(f"removed image {built}")
    return done or ["nothing to clean"]
