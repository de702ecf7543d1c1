"""End to end on real guests: libvirt + QEMU boot the Debian image, the kernel really panics.

Each scenario runs once per session; the assertions read its report, transcript and vmcore check.
"""
import time

import pytest

from lab import host, paths, runner
from lab import scenario as sc

pytestmark = pytest.mark.live

# What each base scenario must show, beyond its expected verdict.
EXPECTED_STAGES = {
    "panic-reboot": ["booted", "panicked", "reset", "back_at_login"],
    "panic-hang": ["booted", "panicked"],
    "kdump": ["booted", "armed", "panicked", "capture_kernel_booted", "dump_saving", "dump_saved", "reset",
              "back_at_login"],
    "hyperv-kdump-default": ["booted", "armed", "panicked", "capture_kernel_booted"],
    "hyperv-kdump-kb2858695": ["booted", "armed", "panicked", "capture_kernel_booted", "dump_saving",
                               "dump_saved", "reset", "back_at_login"],
    "hyperv-kdump-timeout": ["booted", "armed", "panicked", "capture_kernel_booted", "reset", "back_at_login"],
    "hyperv-kdump-hvcrash": ["booted", "armed", "panicked", "capture_kernel_booted", "dump_saving",
                             "dump_saved", "reset", "back_at_login"],
    "hyperv-panic-hang": ["booted", "panicked"],
    "hyperv-panic-reboot": ["booted", "panicked", "reset", "back_at_login"],
    "hyperv-kdump-not-armed": ["booted", "panicked"],
}
GEN1 = [name for name in EXPECTED_STAGES if name.startswith("hyperv-")]


@pytest.fixture(scope="session")
def results():
    where = paths.results_dir() / f"pytest-{time.strftime('%Y%m%d-%H%M%S')}"
    where.mkdir(parents=True)
    return where


@pytest.fixture(scope="session")
def reports(results):
    return {}


@pytest.fixture
def report(request, results, reports):
    name = request.param
    if name not in reports:
        reports[name] = runner.run(sc.resolve(name), results)
    return reports[name]


def stage_names(report):
    return [s["name"] for s in report["stages"]]


@pytest.mark.parametrize("report", list(EXPECTED_STAGES), indirect=True)
def test_verdict_and_stages(report):
    name = report["scenario"]["name"]
    assert report["cut_short"] is None, report["cut_short"]
    assert report["verdict"] == report["scenario"]["expect"], report["diagnosis"]
    assert stage_names(report) == EXPECTED_STAGES[name], report["diagnosis"]
    assert report["evidence"]
    assert report["preflight"]["kernel.panic"] == str(report["scenario"]["kernel_panic"])


@pytest.mark.parametrize("report", list(EXPECTED_STAGES), indirect=True)
def test_kdump_armed_only_when_asked(report):
    wanted = report["scenario"]["kdump"] and report["scenario"]["crashkernel"] != "0"
    assert report["kdump"]["armed"] is wanted
    if report["scenario"]["crashkernel"] != "0":
        assert "crashkernel" in report["kdump"]["crashkernel"]


@pytest.mark.parametrize("report", ["kdump", "hyperv-kdump-kb2858695", "hyperv-kdump-hvcrash"], indirect=True)
def test_kdump_leaves_a_real_vmcore_on_the_guest_disk(report):
    vmcore = report["vmcore"]
    assert vmcore["count"] == 1
    path, size, magic = (part.split("=", 1)[-1] for part in vmcore["files"][0].split())
    assert path.startswith("/var/crash/") and "/dump." in path
    assert int(size) > 10 * 2**20           # ~40 MB for a 1 GiB guest, makedumpfile -d 31
    assert magic.startswith("makedumpfile")  # kdump-tools writes the flattened format


@pytest.mark.parametrize("report", ["panic-reboot"], indirect=True)
def test_reboot_leaves_no_vmcore(report):
    assert report["vmcore"]["count"] == 0


@pytest.mark.parametrize("report", ["panic-hang"], indirect=True)
def test_hang_says_where_and_for_how_long(report):
    assert report["stage"] == "panicked"
    assert "kernel.panic=0" in report["diagnosis"]
    assert f"{report['scenario']['stall_seconds']:.0f} s" in report["diagnosis"]
    assert not [e for e in report["host_events"] if e["kind"] == "libvirt_reset"]


@pytest.mark.parametrize("report", list(EXPECTED_STAGES), indirect=True)
def test_report_says_what_the_guest_saw_of_hyperv(report):
    hv = report["hyperv"]
    assert hv["requested"]
    if report["accel"]["name"] == "tcg":
        assert hv["in_effect"] is False and hv["guest_saw"] in (None, "") and "TCG" in hv["note"]
    else:
        assert hv["in_effect"] is True, hv


@pytest.mark.parametrize("report", list(EXPECTED_STAGES), indirect=True)
def test_nothing_is_left_behind(report):
    conn = host.connect()
    names = [d.name() for d in conn.listAllDomains()]
    assert f"{paths.NAME_PREFIX}{report['run_id']}" not in names
    assert not (paths.work_dir() / report["run_id"]).exists()
    for artifact in ("console.log", "domain.xml", "user-data", "report.json", "host-events.jsonl"):
        assert (paths.Path(report["artifacts"]["dir"]) / artifact).exists(), artifact


@pytest.mark.parametrize("report", GEN1, indirect=True)
def test_gen1_first_kernel_ignores_the_ide_disk(report):
    """The guest's own ata_piix quirk, from the SMBIOS identity: the first kernel uses the paravirtual path."""
    quirk = report["profile"]["ata_piix_quirk"]
    assert quirk and "Hyper-V Virtual Machine detected, ATA device ignore set" in quirk[0]["text"]
    assert "root=LABEL=labroot" in report["preflight"]["cmdline"]


@pytest.mark.parametrize("report", ["hyperv-kdump-default"], indirect=True)
def test_stale_vmbus_hangs_the_capture_kernel_and_points_at_the_fix(report):
    assert report["stage"] == "capture_kernel_booted"
    assert [e["kind"] for e in report["host_events"] if e["kind"].startswith("fault")] == ["fault_applied"]
    assert "paravirtual disk path" in report["diagnosis"] and "KB2858695" in report["diagnosis"]
    assert report["vmcore"] is None


@pytest.mark.parametrize("report", ["hyperv-kdump-kb2858695"], indirect=True)
def test_kb_configuration_dumps_through_ide_and_the_disk_stays_sound(report):
    kinds = [e["kind"] for e in report["host_events"]]
    assert kinds.index("fault_applied") < kinds.index("fault_lifted")
    translated = {row["kdump.conf"]: row["kdump-tools"] for row in report["profile"]["kdump_config_translated"]}
    assert translated["blacklist hv_vmbus hv_storvsc hv_utils hv_netvsc hid_hyperv"].startswith("modprobe.blacklist=")
    assert "virtio_blk" in translated["blacklist hv_vmbus hv_storvsc hv_utils hv_netvsc hid_hyperv"]
    assert report["disk_check"]["clean"] is True, report["disk_check"]


@pytest.mark.parametrize("report", ["hyperv-kdump-timeout"], indirect=True)
def test_capture_kernel_gives_up_on_the_stale_path_and_the_guest_reboots(report):
    assert report["diagnosis"].startswith("dump failed: panic-lab: disk_timeout: dump target not mounted after 30 s")
    assert "paravirtual disk path" in report["diagnosis"] and "KB2858695" in report["diagnosis"]
    kinds = [e["kind"] for e in report["host_events"]]
    assert kinds.index("fault_applied") < kinds.index("fault_lifted")
    assert report["vmcore"]["count"] == 0
    assert report["disk_check"]["clean"] is True, report["disk_check"]


@pytest.mark.parametrize("report", ["hyperv-kdump-hvcrash"], indirect=True)
def test_hv_crash_device_and_what_the_host_saw(report):
    hv = report["hv_crash"]
    assert hv["enabled"] is True
    # Under TCG the guest does not see Hyper-V, so it never writes the crash MSRs and kexec goes ahead.
    if report["accel"]["name"] == "tcg":
        assert hv["host_stopped_vm"] is False and "TCG" in hv["note"]
    assert "<panic model='hyperv'/>" in (paths.Path(report["artifacts"]["dir"]) / "domain.xml").read_text()


@pytest.mark.parametrize("report", ["hyperv-kdump-not-armed"], indirect=True)
def test_not_armed_is_reported_with_its_cause(report):
    assert report["kdump"]["armed"] is False
    assert "no crashkernel reservation" in report["kdump"]["why"]
    assert "kernel.panic=0" in report["kdump"]["then"]
