"""`lab clean` removes what the lab made (name prefix and metadata) and nothing else. Needs libvirt,
boots nothing: the domains are started paused, disk-less."""
import uuid

import libvirt
import pytest

from lab import clean, domain, host, image, paths

pytestmark = pytest.mark.live

TCG = {"domain_type": "qemu", "cpu_mode": "custom"}


def start(conn, name: str, with_metadata: bool):
    kernel = image.cached("debian12")
    if kernel is None:
        pytest.skip("the debian12 image is not built (make image)")
    xml = domain.probe_renderer(str(kernel.kernel), domain.run_as_root(conn))(TCG, [], "x")
    xml = xml.replace(xml[xml.index("<name>"):xml.index("</name>") + 7], f"<name>{name}</name>")
    if not with_metadata:
        xml = xml[:xml.index("<metadata>")] + xml[xml.index("</metadata>") + 11:]
    return conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)


def test_clean_takes_only_the_labs_domains_and_scratch():
    conn = host.connect()
    tag = uuid.uuid4().hex[:6]
    ours = start(conn, f"{paths.NAME_PREFIX}clean-test-{tag}", with_metadata=True)
    lookalike = start(conn, f"{paths.NAME_PREFIX}not-ours-{tag}", with_metadata=False)
    foreign = start(conn, f"someone-else-{tag}", with_metadata=True)
    scratch = paths.work_dir() / f"clean-test-{tag}"
    scratch.mkdir(parents=True)
    try:
        said = clean.clean()
        names = {d.name() for d in conn.listAllDomains()}
        assert f"{paths.NAME_PREFIX}clean-test-{tag}" not in names
        assert {f"{paths.NAME_PREFIX}not-ours-{tag}", f"someone-else-{tag}"} <= names
        assert not scratch.exists()
        assert f"removed domain {paths.NAME_PREFIX}clean-test-{tag}" in said
    finally:
        for dom in (ours, lookalike, foreign):
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass
