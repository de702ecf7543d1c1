"""Console markers, one table per stack: the data a reviewer audits, kept apart from the rules.

Each row: (event, stack, regex). The regex is searched in one cleaned console line (no CR, no ANSI
escapes, no kernel or host timestamp prefix). Rows marked PROMPT are also tried on an unterminated
line, because prompts wait for input without a newline.

The reader runs a regex only on lines that lab/prefilter.py picks out with one Hyperscan pass; it
rewrites each regex for that, and refuses (when the first reader is made) a construct it cannot rewrite.

Events, and what the verdict rules (verdict.py) make of them:
  firmware          a BIOS/firmware banner: the machine was reset (never seen on a kexec)
  kernel_banner     a kernel starts; kernel_cmdline says whether it is a capture kernel
  kernel_cmdline    the command line of the kernel that just started
  cmdline_wrapped   a capture kernel's elfcorehdr= token; it counts when it sits within WRAP_LINES
                    lines after a command line (one wrapped by a mail client)
  crashkernel       memory reserved for a capture kernel
  kdump_armed       the first kernel has a capture kernel loaded
  kdump_not_armed   the kdump tooling reports it could not arm
  login_prompt      a getty is waiting: the system is up
  crash_trigger     the crash was asked for (sysrq c)
  oops              an oops/BUG: trouble, not yet a panic
  stall_warning     the kernel reports itself stuck (soft lockup, RCU stall, a task or worker blocked)
  hardware_error    the firmware reports an uncorrected hardware error (one line per report); a capture
                    kernel that repeats the same report after its last progress is looping on it
  panic             panic() started
  panic_end         panic() finished printing; the kernel halts or reboots after this
  reboot_announced  panic() will reset after N seconds (kernel.panic / panic=)
  kexec_handover    the crashed kernel jumps to the capture kernel
  restart           the kernel/userspace is resetting the machine now
  halted            the machine stopped for good: a failed reboot, a halt, s390's disabled wait
  dump_saving       the capture environment started writing the vmcore
  dump_saved        the vmcore was written completely
  dump_failed       the vmcore could not be written
  waiting_root      the initramfs is waiting for its root/dump device
  rescue_shell      an initramfs or emergency shell: nobody will continue unattended
  hv_storage        Hyper-V VMBus/storage trouble
  hypervisor        the guest names the hypervisor it detected
  ata_ignored       ata_piix ignores IDE disks because DMI says Hyper-V (piix_ignore_devices_quirk)
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .vocabulary import GuestEvent

PROMPT = True


@dataclass(frozen=True)
class Marker:
    event: GuestEvent
    stack: str
    regex: re.Pattern
    prompt: bool = False


def _table(stack: str, rows: list[tuple]) -> list[Marker]:
    # GuestEvent(...) refuses, at import, a row whose event the rules do not know.
    return [Marker(GuestEvent(row[0]), stack, re.compile(row[1]), len(row) > 2 and row[2]) for row in rows]


FIRMWARE = _table("firmware", [
    ("firmware", r"^SeaBIOS \(version"),
    ("firmware", r"^iPXE \(http"),
    ("firmware", r"^Booting from (ROM|Hard Disk|DVD|Floppy)\.\.\."),
    ("firmware", r"^BdsDxe: (loading|starting) Boot"),
    ("firmware", r"^(UEFI|EFI) (firmware|v\d)"),
    ("firmware", r"^OpenBIOS for "),
    ("firmware", r"^U-Boot \d{4}\."),
    ("firmware", r"^CFE version \d"),   # Broadcom's Common Firmware Environment (MIPS boards)
])

KERNEL = _table("kernel", [
    ("kernel_banner", r"Linux version \d+\.\d+\S* \("),
    ("kernel_cmdline", r"^(?:Kernel )?[Cc]ommand line: (.*)"),
    # A mail client may wrap a long command line: the capture kernel's token then sits on a later line.
    ("cmdline_wrapped", r"(?:^|\s)elfcorehdr=\d"),
    ("crashkernel", r"Reserving \d+MB of memory at \d+MB for crashkernel"),
    ("crashkernel", r"crashkernel reserved: 0x"),
    ("crash_trigger", r"sysrq: (?:SysRq : )?Trigger a crash"),
    ("crash_trigger", r"SysRq : Trigger a crash"),
    ("oops", r"(?:^|\] )(?:BUG: |Oops: |general protection fault|kernel BUG at|Unable to handle kernel|Internal error: Oops)"),
    ("stall_warning", r"BUG: soft lockup - CPU#?\d+ stuck for"),
    ("stall_warning", r"rcu: INFO: rcu_\w+ (?:self-)?detected stalls? on CPU"),
    ("stall_warning", r"INFO: task \S+ blocked for more than \d+ seconds"),
    # One line per report that needs handling (APEI/GHES says "corrected" or "info" for the rest).
    ("hardware_error", r"\[Hardware Error\]: +event severity: (?:recoverable|fatal)"),
    ("panic", r"(?<!end )Kernel panic - not syncing: ?(.*)"),
    ("panic_end", r"---\[ end Kernel panic"),
    ("reboot_announced", r"Rebooting in (\d+) seconds"),
    ("reboot_announced", r"systemd-shutdown\[1\]: Rebooting"),
    ("kexec_handover", r"Starting crashdump kernel"),
    ("kexec_handover", r"^kexec_core: Starting new kernel"),
    ("kexec_handover", r"^kexec: Starting switchover sequence"),   # powerpc's machine_kexec
    ("restart", r"reboot: Restarting system"),
    ("restart", r"Rebooting automatically due to panic= boot argument"),
    ("restart", r"sysrq: (?:SysRq : )?Resett?ing"),
    ("halted", r"Reboot failed -- System halted"),
    ("halted", r"reboot: System halted"),
    ("halted", r"disabled wait PSW"),   # s390: the CPU loaded a disabled-wait PSW (z/VM's CP says so)
    ("hypervisor", r"Hypervisor detected: (.+)"),
    ("ata_ignored", r"Hyper-V Virtual Machine detected, ATA device ignore set"),
    ("kdump_armed", r"CPU: \d+ .*\bKdump: loaded\b"),
])

INIT = _table("init", [
    ("login_prompt", r"^\S+ login: *\S*(?: \(automatic login\))?$", PROMPT),   # the user name may follow
    # udev's worker stuck on a device ("... is taking a long time", then "... killed"); a mail client may
    # wrap the line after "processing".
    ("stall_warning", r"systemd-udevd\[\d+\]: \S+: Worker \[\d+\] processing(?: SEQNUM=\d+)?(?: is taking a long time| killed|$)"),
    ("waiting_root", r"Begin: Waiting for root file system"),
    ("waiting_root", r"Waiting for root device"),
    ("waiting_root", r"dracut-initqueue\[\d+\]: Warning: dracut-initqueue: timeout"),
    ("waiting_root", r"dracut-initqueue.*(?:starting timeout scripts|[Tt]imed? ?out)"),
    ("rescue_shell", r"Gave up waiting for root"),
    ("rescue_shell", r"Dropping to a shell"),
    ("rescue_shell", r"^\(initramfs\) *$", PROMPT),
    ("rescue_shell", r"Entering emergency mode"),
    ("rescue_shell", r"You are in emergency mode"),
    ("rescue_shell", r"Give root password for maintenance"),
    ("rescue_shell", r"dracut:/# *$", PROMPT),
])

KDUMP_TOOLS = _table("kdump-tools", [
    ("kdump_armed", r"kdump-tools(?:\[\d+\])?: .*loaded kdump kernel"),
    ("kdump_armed", r"^\[ *OK *\] .*[Ll]oaded kdump kernel"),
    ("kdump_not_armed", r"kdump-tools(?:\[\d+\])?: .*(?:failed to load kdump kernel|[Nn]o crashkernel)"),
    ("dump_saving", r"running makedumpfile .*/proc/vmcore"),
    ("dump_saving", r"kdump-tools(?:\[\d+\])?: .*[Ss]aving vmcore"),
    ("dump_saved", r"kdump-tools: saved vmcore in\b"),
    ("dump_failed", r"kdump-tools: failed to save vmcore"),
    ("dump_failed", r"kdump-tools: .*Cannot save core"),
])

DRACUT_KDUMP = _table("dracut-kdump", [
    ("kdump_armed", r"kdump(?:\[\d+\])?: kexec: loaded kdump kernel"),
    ("kdump_armed", r"Starting kdump: *\[ *OK *\]"),
    ("kdump_not_armed", r"kdump(?:\[\d+\])?: .*(?:No memory reserved for crash kernel|Starting kdump: \[FAILED\])"),
    ("kdump_not_armed", r"[Dd]eprecated kdump config option"),
    ("kdump_not_armed", r"kdumpctl(?:\[\d+\])?: .*(?:failed|[Ee]rror)"),
    ("dump_saving", r"kdump(?:\[\d+\])?: saving vmcore(?! complete| failed)"),
    ("dump_saving", r"Starting Kdump Vmcore Save Service"),
    ("dump_saved", r"kdump(?:\[\d+\])?: saving vmcore complete"),
    ("dump_failed", r"kdump(?:\[\d+\])?: saving vmcore failed"),
    ("dump_failed", r"makedumpfile Failed\."),
    ("dump_failed", r"Executing failure action"),
])

SUSE_KDUMP = _table("suse-kdump", [
    ("dump_saving", r"Saving dump using makedumpfile"),
    ("dump_saving", r"^Saving dump to "),
    ("dump_saved", r"Dump saving completed"),
    ("dump_failed", r"Dump saving failed|Saving dump failed"),
])

# The lab's own pre-flight output (images/cloud-init/user-data.j2, lab-preflight), read like any console line.
LAB = _table("lab", [
    ("kdump_armed", r"^lab:kexec_crash_loaded=1$"),
    # The kdump initrd's disk_timeout timer (images/debian/kdump-initramfs/) giving up.
    ("dump_failed", r"panic-lab: disk_timeout: dump target not mounted after \d+ s"),
])

HYPERV = _table("hyperv", [
    ("hv_storage", r"hv_vmbus: probe failed"),
    ("hv_storage", r"hv_vmbus: .*(?:[Tt]ime ?out|timed out|failed)"),
    ("hv_storage", r"hv_storvsc.*(?:error|[Tt]ime ?out|failed)"),
    ("hv_storage", r"storvsc.*(?:timed out|[Tt]ime ?out|failed to)"),
    ("hv_storage", r"hyperv_fb: Time out"),
    ("hv_storage", r"vmbus.*(?:[Tt]ime ?out|timed out)"),
])

STACKS = {"firmware": FIRMWARE, "kernel": KERNEL, "init": INIT, "kdump-tools": KDUMP_TOOLS,
          "dracut-kdump": DRACUT_KDUMP, "suse-kdump": SUSE_KDUMP, "hyperv": HYPERV, "lab": LAB}
ALL: list[Marker] = [marker for table in STACKS.values() for marker in table]

# The capture kernel is told apart from a normal boot by what kdump tooling puts on its command line.
WRAP_LINES = 3
CAPTURE_CMDLINE = re.compile(r"(?:^|\s)(?:elfcorehdr=|reset_devices(?:\s|$))")

# dump_failed lines that only a save already under way prints (the tool's own "saving failed"), so they
# show the dump_saving stage was reached; a failure action or a dump target that never mounted do not.
SAVE_ATTEMPT_FAILED = re.compile(r"kdump-tools: failed to save vmcore|kdump(?:\[\d+\])?: saving vmcore failed"
                                 r"|makedumpfile Failed\.|Dump saving failed|Saving dump failed")

# APEI numbers each hardware error record ("{2}[Hardware Error]: ..."): a repeat differs only there.
_RECORD_NUMBER = re.compile(r"^\{\d+\}")


def same_report(a: str, b: str) -> bool:
    return _RECORD_NUMBER.sub("", a) == _RECORD_NUMBER.sub("", b)
