"""KB2858695's kdump.conf in kdump-tools terms, and the Hyper-V stand-in mapping of the Gen1 profile."""
import pytest

from lab import kdumpconf, paths, profiles, seed
from lab import scenario as sc
from lab.errors import InputError

GEN1 = profiles.STANDINS["hyperv-gen1"]


def test_kb_translation_line_by_line():
    out = kdumpconf.to_kdump_tools(kdumpconf.KB2858695, GEN1)
    assert out.cmdline_append == [
        "modprobe.blacklist=hv_vmbus,virtio_blk,hv_storvsc,hv_utils,hv_netvsc,hid_hyperv",
        "ata_piix.prefer_ms_hyperv=0",
        "panic_lab.disk_timeout=100",
    ]
    assert dict(out.lines)["disk_timeout 100"].startswith("panic_lab.disk_timeout=100 ")
    assert out.variables == {"KDUMP_COREDIR": "/var/crash", "MAKEDUMP_ARGS": "-c --message-level 1 -d 31"}
    assert out.modules == ["ata_piix", "sr_mod", "sd_mod"]
    assert [kb for kb, _ in out.lines] == kdumpconf.KB2858695.strip().splitlines()


def test_blacklisting_hv_storvsc_takes_away_its_standin():
    out = kdumpconf.to_kdump_tools("blacklist hv_storvsc\n", GEN1)
    assert out.cmdline_append == ["modprobe.blacklist=hv_storvsc,virtio_blk"]
    assert out.lines == [("blacklist hv_storvsc", "modprobe.blacklist=hv_storvsc,virtio_blk")]


def test_without_standins_only_the_named_drivers_go():
    out = kdumpconf.to_kdump_tools("blacklist hv_storvsc hv_vmbus\n")
    assert out.cmdline_append == ["modprobe.blacklist=hv_storvsc,hv_vmbus"]


def test_the_standin_is_the_profiles_paravirtual_disk():
    gen1 = profiles.PROFILES["hyperv-gen1"]
    paravirtual = [d for d in gen1["disks"] if d["path"] == "vmbus-standin"]
    assert [d["bus"] for d in paravirtual] == ["virtio"]
    assert GEN1["hv_storvsc"] == ["virtio_blk"]
    assert profiles.STALE_VMBUS_TARGET["hyperv-gen1"] == paravirtual[0]["target"]
    assert [d["bus"] for d in gen1["disks"] if d["path"] == "ide"] == ["ide"]
    assert gen1["sysinfo"] == {"manufacturer": "Microsoft Corporation", "product": "Virtual Machine"}


@pytest.mark.parametrize("conf, words", [
    ("core_collector cp --sparse\n", "only runs makedumpfile"),
    ("extra_modules hv_storvsc\n", "not in the image's kdump initrd"),
    ("nfs server:/export\n", "no kdump-tools equivalent"),
])
def test_what_cannot_be_translated_is_refused(conf, words):
    with pytest.raises(ValueError, match=words):
        kdumpconf.to_kdump_tools(conf, GEN1)


def test_seed_carries_the_translation():
    s = sc.resolve("hyperv-kdump-kb2858695")
    data = seed.render(s, "r", GEN1).user_data
    assert "ata_piix.prefer_ms_hyperv=0" in data
    assert "modprobe.blacklist=hv_vmbus,virtio_blk," in data
    assert 'MAKEDUMP_ARGS="-c --message-level 1 -d 31"' in data
    assert data.count("KDUMP_COREDIR=") == 1


def test_bad_translation_is_an_input_error(monkeypatch):
    monkeypatch.setitem(kdumpconf.CONFIGS, "kb2858695", "fence_kdump_nodes a b\n")
    with pytest.raises(InputError, match="no kdump-tools equivalent"):
        seed.render(sc.resolve("hyperv-kdump-kb2858695"), "r", GEN1)


def test_gen1_domain_xml_has_both_paths_and_the_smbios_identity():
    import xml.etree.ElementTree as ET
    xml = profiles.render_xml("hyperv-gen1", accel={"domain_type": "qemu", "cpu_mode": "custom"}, hyperv=[],
                            name="panic-lab-x", uuid="6b1e5bd4-3f5e-4b4e-9a36-2f8f0f6e1a10", run_id="x",
                            scenario="s", memory_mib=1024, vcpus=1, kernel="/k", initrd="/i", cmdline="c",
                            overlay="/d.raw", seed="/s.iso", qemu_label="+64055:+107")
    root = ET.fromstring(xml)
    disks = [(d.find("target").get("bus"), d.find("driver").get("type"), d.find("shareable") is not None)
             for d in root.findall("./devices/disk[@device='disk']")]
    assert disks == [("ide", "raw", True), ("virtio", "raw", True)]
    entries = {e.get("name"): e.text for e in root.findall("./sysinfo/system/entry")}
    assert entries == {"manufacturer": "Microsoft Corporation", "product": "Virtual Machine"}
    assert root.find("./os/smbios").get("mode") == "sysinfo"
    assert root.find("./os/type").get("machine") == "pc"


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_disk_timeout_must_be_a_positive_number(value):
    with pytest.raises(ValueError, match="disk_timeout"):
        kdumpconf.to_kdump_tools(f"disk_timeout {value}\n")


def test_the_disk_timeout_timer_reads_the_argument_the_translation_writes():
    # The recipe's initramfs script and the translation must agree on the argument's name.
    script = (paths.IMAGES / "debian/kdump-initramfs/init-top/panic-lab-disk-timeout").read_text()
    assert f"{kdumpconf.DISK_TIMEOUT_ARG}=*)" in script
