"""`lab clean` removes what the lab made (name prefix and metadata) and nothing else. Needs libvirt,
boots nothing: the domains are started paused, disk-less."""
import os
import shutil
import subprocess
import uuid

import libvirt
import pytest

from lab import clean, domain, host, image, paths

pytestmark = pytest.mark.live

TCG = {"domain_type": "qemu", "cpu_mode": "custom"}


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def start(conn, name: str, with_metadata: bool, owner: int):
    kernel = image.cached("debian12")
    if kernel is None:
        pytest.skip("the debian12 image is not built (make image)")
    xml = domain.probe_renderer(str(kernel.kernel), domain.run_as_root(conn))(TCG, [], "x")
    xml = xml.replace(f"owner='{os.getpid()}'", f"owner='{owner}'")
    xml = xml.replace(xml[xml.index("<name>"):xml.index("</name>") + 7], f"<name>{name}</name>")
    if not with_metadata:
        xml = xml[:xml.index("<metadata>")] + xml[xml.index("</metadata>") + 11:]
    return conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)


def test_clean_takes_only_leftovers_of_the_lab():
    """A leftover (its lab process is dead) goes; a run still going, a look-alike and a stranger stay."""
    conn = host.connect()
    tag = uuid.uuid4().hex[:6]
    dead, living = dead_pid(), os.getppid()
    leftover = start(conn, f"{paths.NAME_PREFIX}leftover-{tag}", True, dead)
    running = start(conn, f"{paths.NAME_PREFIX}running-{tag}", True, living)
    lookalike = start(conn, f"{paths.NAME_PREFIX}not-ours-{tag}", False, dead)
    foreign = start(conn, f"someone-else-{tag}", True, dead)
    scratch_dead = paths.work_dir() / f"leftover-{tag}"
    scratch_live = paths.work_dir() / f"running-{tag}"
    for where, pid in ((scratch_dead, dead), (scratch_live, living)):
        where.mkdir(parents=True)
        (where / "owner.pid").write_text(f"{pid}\n")
    try:
        said = clean.clean()
        names = {d.name() for d in conn.listAllDomains()}
        assert f"{paths.NAME_PREFIX}leftover-{tag}" not in names
        assert {f"{paths.NAME_PREFIX}running-{tag}", f"{paths.NAME_PREFIX}not-ours-{tag}",
                f"someone-else-{tag}"} <= names
        assert f"removed domain {paths.NAME_PREFIX}leftover-{tag}" in said
        assert not scratch_dead.exists() and scratch_live.exists()
    finally:
        shutil.rmtree(scratch_live, ignore_errors=True)
        for dom in (leftover, running, lookalike, foreign):
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass
