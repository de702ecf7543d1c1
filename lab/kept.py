"""Guests kept after their verdict (`lab run --keep`), and every lab guest still running: listed by
`lab ps`, reached by `lab attach`, ended by `lab stop` (or `lab clean`, since a kept guest keeps the
lab's name prefix, owner metadata and marked scratch)."""
from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import libvirt

from . import host, paths
from .errors import InputError

KEPT = "kept.json"


def how_to_reach(run_id: str, name: str, uri: str) -> dict:
    return {"domain": name, "attach": f"lab attach {run_id}", "virsh": f"virsh -c {uri} console {name}",
            "stop": f"lab stop {run_id}"}


def record(workdir: Path, run_id: str, name: str, uri: str, results: str, verdict) -> None:
    """What `lab ps` says of a kept guest, in its scratch folder (removed with it)."""
    (workdir / KEPT).write_text(json.dumps({"run_id": run_id, "domain": name, "uri": uri, "results": results,
                                            "verdict": verdict.verdict, "stage": verdict.stage,
                                            "kept_at": time.time()}))


@dataclass
class Guest:
    run_id: str
    domain: str
    state: str
    age_seconds: float | None
    kept: bool
    verdict: str | None
    stage: str | None
    owner: int | None
    results: str | None

    def to_json(self) -> dict:
        return vars(self)


def lab_run(dom: libvirt.virDomain) -> tuple[str | None, int | None]:
    """(run id, owner pid) from a domain's lab metadata; (None, None) for a domain that has none."""
    try:
        element = ET.fromstring(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, paths.METADATA_NS))
    except libvirt.libvirtError:
        return None, None
    owner = element.get("owner") or ""
    return element.get("id"), int(owner) if owner.isdigit() else None


def origin(dom: libvirt.virDomain) -> str | None:
    """The machine whose lab started the domain (None for domains from before the lab wrote it)."""
    try:
        return ET.fromstring(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, paths.METADATA_NS)).get("origin")
    except libvirt.libvirtError:
        return None


STATES = {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
          libvirt.VIR_DOMAIN_SHUTOFF: "shut off", libvirt.VIR_DOMAIN_CRASHED: "crashed"}


def listing() -> list[Guest]:
    """Every domain of the lab's on this host: kept ones, and runs still going."""
    conn = host.connect()
    try:
        found = []
        for dom in conn.listAllDomains():
            if not dom.name().startswith(paths.NAME_PREFIX):
                continue
            run_id, owner = lab_run(dom)
            if run_id is None:
                continue
            scratch = paths.work_dir() / run_id
            info = {}
            try:
                info = json.loads((scratch / KEPT).read_text())
            except (OSError, ValueError):
                pass
            try:
                age = time.time() - (scratch / paths.OWNER).stat().st_mtime
            except OSError:
                age = None
            found.append(Guest(run_id, dom.name(), STATES.get(dom.state()[0], str(dom.state()[0])), age,
                               bool(info), info.get("verdict"), info.get("stage"), owner, info.get("results")))
        return sorted(found, key=lambda g: g.run_id)
    finally:
        host.disconnect(conn)


def find(run_id: str) -> Guest:
    for guest in listing():
        if guest.run_id == run_id or guest.domain == run_id:
            return guest
    raise InputError("run", f"no lab guest {run_id!r} on {host.uri()} (`lab ps` lists them)")


def stop(run_id: str) -> list[str]:
    """Destroy a lab guest and remove its scratch (a kept one, or a run whose lab process is gone)."""
    guest = find(run_id)
    if guest.owner is not None and paths.owner_alive(guest.owner) and not guest.kept:
        raise InputError("run", f"{guest.run_id} is a run still going (pid {guest.owner}): stop that process instead")
    conn = host.connect()
    try:
        try:
            conn.lookupByName(guest.domain).destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
    finally:
        host.disconnect(conn)
    done = [f"destroyed {guest.domain}"]
    scratch = paths.work_dir() / guest.run_id
    if paths.scratch_owner(scratch) is not None:
        paths.remove_scratch(scratch)
        done.append(f"removed run scratch {scratch}")
    return done
