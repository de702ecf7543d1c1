"""`lab clean`: remove what the lab made, recognised by name prefix and metadata, and nothing else."""
from __future__ import annotations

import shutil

import libvirt

from . import host, paths


def _ours(dom: libvirt.virDomain) -> bool:
    if not dom.name().startswith(paths.NAME_PREFIX):
        return False
    try:
        dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, paths.METADATA_NS)
    except libvirt.libvirtError:
        return False
    return True


def clean(images: bool = False) -> list[str]:
    done = []
    conn = host.connect()
    for dom in conn.listAllDomains():
        try:
            if not _ours(dom):
                continue
            name = dom.name()
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefine()
            done.append(f"removed domain {name}")
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # gone on its own meanwhile: fine
                raise
    work = paths.work_dir()
    if work.exists():
        for run in sorted(work.iterdir()):
            shutil.rmtree(run, ignore_errors=True)
            done.append(f"removed run scratch {run}")
    image_root = paths.cache_dir() / "images"
    if image_root.exists():
        for leftover in image_root.glob(".*-build-*"):
            shutil.rmtree(leftover, ignore_errors=True)
            done.append(f"removed interrupted image build {leftover}")
        if images:
            for built in image_root.iterdir():
                if built.is_dir() and not built.name.startswith("."):
                    shutil.rmtree(built, ignore_errors=True)
                    done.append(f"removed image {built}")
    return done or ["nothing to clean"]
