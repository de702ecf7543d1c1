"""End to end on real guests: libvirt + QEMU boot the Debian image, the kernel really panics.

Through the lab's own pytest plugin (lab/pytest_plugin.py): each scenario runs once per session, and
every test below reads its report, transcript and vmcore check.
"""
import pytest

from conftest import run_lab
from lab import host, paths
from lab import scenario as sc
from lab.vocabulary import HostEvent as H
from lab.vocabulary import Stage as S

pytestmark = pytest.mark.live

# What each base scenario must show, beyond its expected verdict.
EXPECTED_STAGES = {
    "panic-reboot": [S.BOOTED, S.PANICKED, S.RESET],
    "panic-hang": [S.BOOTED, S.PANICKED],
    "kdump": [S.BOOTED, S.ARMED, S.PANICKED, S.CAPTURE_KERNEL_BOOTED, S.DUMP_SAVING, S.DUMP_SAVED, S.RESET],
    "hyperv-kdump-default": [S.BOOTED, S.ARMED, S.PANICKED, S.CAPTURE_KERNEL_BOOTED],
    "hyperv-kdump-kb2858695": [S.BOOTED, S.ARMED, S.PANICKED, S.CAPTURE_KERNEL_BOOTED, S.DUMP_SAVING,
                               S.DUMP_SAVED, S.RESET],
    "hyperv-kdump-timeout": [S.BOOTED, S.ARMED, S.PANICKED, S.CAPTURE_KERNEL_BOOTED, S.RESET],
    "hyperv-kdump-hvcrash": [S.BOOTED, S.ARMED, S.PANICKED, S.CAPTURE_KERNEL_BOOTED, S.DUMP_SAVING,
                             S.DUMP_SAVED, S.RESET],
    "hyperv-panic-hang": [S.BOOTED, S.PANICKED],
    "hyperv-panic-reboot": [S.BOOTED, S.PANICKED, S.RESET],
    "hyperv-kdump-not-armed": [S.BOOTED, S.PANICKED],
}
GEN1 = [name for name in EXPECTED_STAGES if name.startswith("hyperv-")]
# make test boots these: the seed's four outcomes on the Hyper-V Gen1 model (the KB's dump with its vmcore
# read on the host). The others are the same paths on the default profile, the KB's disk_timeout giving
# up, or one more device: `make test-scenarios` (--all-scenarios) runs them all. (The default profile's
# dump also runs in make test, with a backports kernel: tests/test_kernel.py.)
REPRESENTATIVE_SCENARIOS = {"hyperv-panic-reboot", "hyperv-panic-hang", "hyperv-kdump-default", "hyperv-kdump-kb2858695"}


# A guest that hangs never moves again: a 60 s stall deadline says so as surely as the default 120 s.
# Every hang here settles by a rule first (S3, S6); the deadline only bounds a run where none fires.
HANG_STALL_SECONDS = 60


def _mark(name: str):
    if sc.resolve(name).expect == "hang":
        return pytest.mark.lab(scenario=name, stall_seconds=HANG_STALL_SECONDS)
    return pytest.mark.lab(scenario=name)


def scenarios(*names):
    """Parametrize over base scenarios, each marked for the plugin's lab_run fixture."""
    return pytest.mark.parametrize("scenario", [pytest.param(n, marks=_mark(n), id=n) for n in names])


@pytest.fixture
def report(lab_run, scenario):
    assert lab_run.report["scenario"]["name"] == scenario
    return lab_run.report


def stage_names(report):
    return [s["name"] for s in report["stages"]]


@scenarios(*EXPECTED_STAGES)
def test_verdict_and_stages(report, scenario):
    name = report["scenario"]["name"]
    assert report["cut_short"] is None, report["cut_short"]
    assert report["verdict"] == report["scenario"]["expect"], report["diagnosis"]
    assert stage_names(report) == EXPECTED_STAGES[name], report["diagnosis"]
    assert report["evidence"]
    assert report["preflight"]["kernel.panic"] == str(report["scenario"]["kernel_panic"])


@scenarios(*EXPECTED_STAGES)
def test_kdump_armed_only_when_asked(report, scenario):
    wanted = report["scenario"]["kdump"] and report["scenario"]["crashkernel"] != "0"
    assert report["kdump"]["armed"] is wanted
    if report["scenario"]["crashkernel"] != "0":
        assert "crashkernel" in report["kdump"]["crashkernel"]


# The early rule (lab/settle.py) that ended each watch.
SETTLED_BY = {"panic-reboot": "S2", "panic-hang": "S3", "kdump": "S1", "hyperv-kdump-kb2858695": "S1",
              "hyperv-kdump-timeout": "S2", "hyperv-kdump-hvcrash": "S1", "hyperv-panic-hang": "S3",
              "hyperv-panic-reboot": "S2", "hyperv-kdump-not-armed": "S3", "hyperv-kdump-default": "S6"}


@scenarios(*EXPECTED_STAGES)
def test_the_verdict_is_declared_as_soon_as_a_rule_makes_it_certain(report, scenario):
    decided = report["decided_by"]
    assert (decided["kind"], decided["rule"]) == ("settled", SETTLED_BY[scenario]), decided
    assert report["confidence"] == "certain"
    last_stage = max(s["t"] for s in report["stages"])
    assert last_stage <= report["verdict_t"] <= report["timings"]["wall_seconds"]


@scenarios("kdump", "hyperv-kdump-kb2858695", "hyperv-kdump-hvcrash")
def test_the_vmcore_is_read_from_the_disk_on_the_host_and_is_this_run_s(report, scenario):
    vmcore = report["vmcore"]
    assert vmcore["check"] == "passed", vmcore["why"]
    assert vmcore["count"] == 1 and vmcore["guest_path"].startswith("/var/crash/")
    assert vmcore["format"] == "flattened"     # kdump-tools writes makedumpfile's flattened format
    assert vmcore["size"] > 10 * 2**20         # ~40 MB for a 1 GiB guest, makedumpfile -d 31
    assert vmcore["panic_lines_match"] and vmcore["dump_panic"] == vmcore["console_panic"]
    assert "Kernel panic - not syncing" in vmcore["console_panic"]
    folder = paths.Path(report["artifacts"]["dir"])
    assert (folder / vmcore["file"]).read_bytes()[:8] == b"KDUMP   "   # rebuilt by makedumpfile -R
    assert vmcore["console_panic"] in (folder / vmcore["dmesg"]).read_text()
    assert vmcore["sound"] is True, vmcore["fsck"]
    # `lab vmcore RUN`: the crashed kernel's own call trace, from the dump, with no debug symbols.
    shown = run_lab("vmcore", report["run_id"], "--results", str(folder.parent.parent), text=True)
    assert shown.returncode == 0, shown.stderr
    assert "sysrq_handle_crash" in shown.stdout and vmcore["console_panic"] in shown.stdout
    # --debuginfo: the crashed task's stack, unwound from the dump (drgn) with the symbols of the kernel that
    # booted (Debian's linux-image-RELEASE-dbg, fetched once and cached): the sysrq crash path, as symbols.
    traced = run_lab("vmcore", report["run_id"], "--results", str(folder.parent.parent), "--debuginfo", "--lines", "1",
                     text=True)
    assert traced.returncode == 0, traced.stderr
    stack = traced.stdout.split("the crashed task: ", 1)[1].splitlines()
    assert stack[0].startswith("pid ") and "(bash)" in stack[0], stack[0]
    assert [f for f in ("panic", "sysrq_handle_crash", "write_sysrq_trigger") if any(f" {f} (" in line for line in stack)] == \
        ["panic", "sysrq_handle_crash", "write_sysrq_trigger"], stack


@scenarios("panic-reboot", "hyperv-panic-reboot")
def test_reboot_leaves_no_vmcore(report, scenario):
    assert report["vmcore"] is None   # no capture kernel ran: there is nothing to look for


@scenarios("panic-hang", "hyperv-panic-hang")
def test_hang_says_where_and_for_how_long(report, scenario):
    assert report["stage"] == "panicked"
    assert "kernel.panic=0" in report["diagnosis"] and "no capture kernel" in report["diagnosis"]
    assert not [e for e in report["host_events"] if e["kind"] == H.LIBVIRT_RESET]


@scenarios(*EXPECTED_STAGES)
def test_report_says_what_the_guest_saw_of_hyperv(report, scenario):
    hv = report["hyperv"]
    assert hv["requested"]
    if report["accel"]["name"] == "tcg":
        assert hv["in_effect"] is False and hv["guest_saw"] in (None, "") and "TCG" in hv["note"]
    else:
        assert hv["in_effect"] is True, hv


@scenarios(*EXPECTED_STAGES)
def test_nothing_is_left_behind(report, scenario):
    conn = host.connect()
    names = [d.name() for d in conn.listAllDomains()]
    assert f"{paths.NAME_PREFIX}{report['run_id']}" not in names
    assert not (paths.work_dir() / report["run_id"]).exists()
    for artifact in ("console.log", "domain.xml", "user-data", "report.json", "host-events.jsonl"):
        assert (paths.Path(report["artifacts"]["dir"]) / artifact).exists(), artifact


@scenarios(*GEN1)
def test_gen1_first_kernel_ignores_the_ide_disk(report, scenario):
    """The guest's own ata_piix quirk, from the SMBIOS identity: the first kernel uses the paravirtual path."""
    quirk = report["profile"]["ata_piix_quirk"]
    assert quirk and "Hyper-V Virtual Machine detected, ATA device ignore set" in quirk[0]["text"]
    assert "root=LABEL=labroot" in report["preflight"]["cmdline"]


@scenarios("hyperv-kdump-default")
def test_stale_vmbus_hangs_the_capture_kernel_and_points_at_the_fix(report, scenario):
    assert report["stage"] == "capture_kernel_booted"
    assert [e["kind"] for e in report["host_events"] if e["kind"] in (H.FAULT_APPLIED, H.FAULT_LIFTED)] == [H.FAULT_APPLIED]
    assert "paravirtual disk path" in report["diagnosis"] and "KB2858695" in report["diagnosis"]
    assert (report["vmcore"]["check"], report["vmcore"]["count"]) == ("passed", 0), report["vmcore"]
    stranded = [e["text"] for e in report["host_events"] if e["kind"] == H.STRANDED]
    assert len(stranded) == 1 and "ATA device ignore set" in stranded[0], report["host_events"]   # the capture kernel's own line


@scenarios("hyperv-kdump-kb2858695")
def test_kb_configuration_dumps_through_ide_and_the_disk_stays_sound(report, scenario):
    kinds = [e["kind"] for e in report["host_events"]]
    assert kinds.index(H.FAULT_APPLIED) < kinds.index(H.SETTLED)   # the verdict came at the reset: no need to lift it
    translated = {row["kdump.conf"]: row["kdump-tools"] for row in report["profile"]["kdump_config_translated"]}
    assert translated["blacklist hv_vmbus hv_storvsc hv_utils hv_netvsc hid_hyperv"].startswith("modprobe.blacklist=")
    assert "virtio_blk" in translated["blacklist hv_vmbus hv_storvsc hv_utils hv_netvsc hid_hyperv"]
    assert report["vmcore"]["sound"] is True, report["vmcore"]["fsck"]


@scenarios("hyperv-kdump-timeout")
def test_capture_kernel_gives_up_on_the_stale_path_and_the_guest_reboots(report, scenario):
    assert report["diagnosis"].startswith("dump failed: panic-lab: disk_timeout: dump target not mounted after 30 s")
    assert "paravirtual disk path" in report["diagnosis"] and "KB2858695" in report["diagnosis"]
    kinds = [e["kind"] for e in report["host_events"]]
    assert kinds.index(H.FAULT_APPLIED) < kinds.index(H.SETTLED)   # the verdict came at the reset: no need to lift it
    assert (report["vmcore"]["check"], report["vmcore"]["count"]) == ("passed", 0), report["vmcore"]
    assert report["vmcore"]["sound"] is True, report["vmcore"]["fsck"]


@scenarios("hyperv-kdump-hvcrash")
def test_hv_crash_device_and_what_the_host_saw(report, scenario):
    hv = report["hv_crash"]
    assert hv["enabled"] is True
    # Under TCG the guest does not see Hyper-V, so it never writes the crash MSRs and kexec goes ahead.
    if report["accel"]["name"] == "tcg":
        assert hv["host_stopped_vm"] is False and "TCG" in hv["note"]
    assert "<panic model='hyperv'/>" in (paths.Path(report["artifacts"]["dir"]) / "domain.xml").read_text()


@scenarios("hyperv-kdump-not-armed")
def test_not_armed_is_reported_with_its_cause(report, scenario):
    assert report["kdump"]["armed"] is False
    assert "no crashkernel reservation" in report["kdump"]["why"]
    assert "kernel.panic=0" in report["kdump"]["then"]


@pytest.mark.lab(scenario="hyperv-kdump-kb2858695")
def test_the_plugin_reads_like_the_issue_asks(lab_run):
    assert lab_run.verdict == "dump"
    assert lab_run.transcript.contains("saved vmcore")
    assert lab_run.stage("capture_kernel").duration < 120
    lab_run.transcript.assert_in_order(r"Kernel panic - not syncing", r"elfcorehdr=", r"saved vmcore", r"reboot: Restarting system")
    assert any("makedumpfile" in line or "vmcore" in line for line in lab_run.transcript.stage_slice("dump_saving"))
