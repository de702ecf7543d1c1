"""Template rendering: the domain XML libvirt gets, and the cloud-init seed the guest gets."""
import subprocess
import xml.etree.ElementTree as ET

import pytest

from lab import profiles, seed
from lab.guest import OFFLINE_DEBIAN
from lab import scenario as sc

TCG = {"domain_type": "qemu", "cpu_mode": "custom"}
HYPERV = [{"name": "relaxed", "attrs": {}}, {"name": "spinlocks", "attrs": {"retries": "8191"}},
          {"name": "vendor_id", "attrs": {"value": "Microsoft Hv"}}]


def render(profile="default", **over):
    ctx = dict(accel=TCG, hyperv=HYPERV, name="panic-lab-t-1", uuid="6b1e5bd4-3f5e-4b4e-9a36-2f8f0f6e1a10",
               run_id="t-1", scenario="kdump", memory_mib=1024, vcpus=1, kernel="/k", initrd="/i",
               cmdline="root=LABEL=labroot rw console=ttyS0,115200 crashkernel=256M",
               overlay="/o.qcow2", seed="/s.iso", qemu_label="+64055:+107")
    ctx.update(over)
    return profiles.render_xml(profile, **ctx)


@pytest.mark.parametrize("profile", list(profiles.PROFILES))
def test_domain_xml_is_valid_for_libvirt(tmp_path, need_tool, profile):
    validate = need_tool("virt-xml-validate")
    path = tmp_path / "domain.xml"
    path.write_text(render(profile))
    done = subprocess.run([validate, str(path), "domain"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_domain_xml_carries_the_run_and_the_enlightenments():
    root = ET.fromstring(render())
    assert root.get("type") == "qemu"
    assert root.find("./os/cmdline").text.endswith("crashkernel=256M")
    assert [e.tag for e in root.find("./features/hyperv")] == ["relaxed", "spinlocks", "vendor_id"]
    assert root.find("./features/hyperv/vendor_id").get("value") == "Microsoft Hv"
    assert root.find("./devices/serial").get("type") == "pty"
    assert root.find("./devices/disk/source").get("file") == "/o.qcow2"
    meta = root.find("./metadata/{https://panic-lab.invalid/run/1}run")
    assert meta.get("id") == "t-1"


def test_values_cannot_inject_xml():
    root = ET.fromstring(render(scenario="x'/><evil a='", cmdline="a<b>&c"))
    assert root.find("./os/cmdline").text == "a<b>&c"
    assert root.find(".//evil") is None


def test_probe_domain_has_no_disks():
    xml = profiles.probe_renderer("/k", qemu_label=None)(TCG, [], "probe")
    root = ET.fromstring(xml)
    assert root.findall("./devices/disk") == []
    assert root.find("./seclabel") is None


@pytest.mark.parametrize("name, panic, kdump", [("panic-reboot", "5", "0"), ("panic-hang", "0", "0"), ("kdump", "0", "1")])
def test_seed_applies_the_scenario_knobs(name, panic, kdump):
    s = seed.render(sc.resolve(name), "run-1")
    assert s.user_data.startswith("#cloud-config\n")
    assert f"kernel.panic = {panic}\n" in s.user_data
    assert f'"kernel.panic={panic}"' in s.user_data
    assert f"USE_KDUMP={kdump}\n" in s.user_data
    assert "instance-id: run-1" in s.meta_data


def test_seed_appends_to_kdump_tools_default_command_line():
    s = seed.render(sc.with_overrides(sc.resolve("kdump"), ["kdump_cmdline_append=panic=10"]), "r")
    assert f'KDUMP_CMDLINE_APPEND="{OFFLINE_DEBIAN.kdump_append} panic=10"' in s.user_data


@pytest.mark.parametrize("profile", list(profiles.PROFILES))
def test_a_published_image_boots_from_its_disk_and_may_get_a_user_network(tmp_path, need_tool, profile):
    validate = need_tool("virt-xml-validate")
    xml = render(profile, kernel=None, initrd=None, user_network=True)
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    done = subprocess.run([validate, str(path), "domain"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    root = ET.fromstring(xml)
    assert root.find("./os/kernel") is None and root.find("./os/cmdline") is None
    assert root.find("./os/boot").get("dev") == "hd"
    assert root.find("./devices/interface").get("type") == "user"


def test_the_offline_image_has_no_network():
    root = ET.fromstring(render())
    assert root.find("./devices/interface") is None
    assert root.find("./os/boot") is None


def test_only_the_gen1_model_with_its_disk_silenced_can_strand_a_capture_kernel():
    """S6's facts from the domain (lab/follow.py what_settles): the silenced disk, and every other disk on
    IDE; another disk, of any kind or bus, or a shared filesystem leaves the capture kernel a way out."""
    from types import SimpleNamespace
    from lab.follow import what_settles

    def guest(profile, scenario_name, xml=None):
        dom = SimpleNamespace(xml=xml or render(profile))
        return what_settles(dom, sc.BASE_SCENARIOS[scenario_name], {"kernel.panic": "0"})

    assert guest("hyperv-gen1", "hyperv-kdump-default").stale_disk == "vda"
    assert guest("hyperv-gen1", "hyperv-kdump-not-armed").stale_disk == ""   # no fault in that scenario
    for extra in ("<disk type='file' device='disk'><source file='/x'/><target dev='sdb' bus='sata'/></disk>",
                  "<disk type='file'><source file='/x'/><target dev='vdb' bus='virtio'/></disk>",   # device defaults to disk
                  "<disk type='block' device='lun'><source dev='/dev/x'/><target dev='sdc' bus='scsi'/></disk>",
                  "<filesystem type='mount'><source dir='/x'/><target dir='dump'/></filesystem>"):
        more = render("hyperv-gen1").replace("</devices>", extra + "</devices>")
        assert guest("hyperv-gen1", "hyperv-kdump-default", more).stale_disk == "", extra
