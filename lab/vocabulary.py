"""The words every stage of the pipeline shares, defined once: verdicts, the stages a run goes through,
and the kinds of event the console (marker tables) and the host (the lab's own annotations) report.

They are str enums: a member equals its string, so reports and recorded logs keep their JSON as is.
"""
from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    REBOOT = "reboot"
    DUMP = "dump"
    HANG = "hang"
    UNKNOWN = "unknown"


class Stage(StrEnum):
    """In the order a run reaches them."""
    BOOTED = "booted"
    ARMED = "armed"
    PANICKED = "panicked"
    CAPTURE_KERNEL_BOOTED = "capture_kernel_booted"
    DUMP_SAVING = "dump_saving"
    DUMP_SAVED = "dump_saved"
    RESET = "reset"
    BACK_AT_LOGIN = "back_at_login"

    @property
    def order(self) -> int:
        return _STAGE_ORDER[self]


_STAGE_ORDER = {s: n for n, s in enumerate(Stage)}   # looked up per stage reached: not a list search each time


NO_STAGE = "none"   # the log shows no stage at all


class GuestEvent(StrEnum):
    """What a console line can say; lab/markers.py maps lines to these, and its docstring says what each means."""
    FIRMWARE = "firmware"
    KERNEL_BANNER = "kernel_banner"
    KERNEL_CMDLINE = "kernel_cmdline"
    CMDLINE_WRAPPED = "cmdline_wrapped"
    CRASHKERNEL = "crashkernel"
    KDUMP_ARMED = "kdump_armed"
    KDUMP_NOT_ARMED = "kdump_not_armed"
    LOGIN_PROMPT = "login_prompt"
    CRASH_TRIGGER = "crash_trigger"
    OOPS = "oops"
    STALL_WARNING = "stall_warning"
    HARDWARE_ERROR = "hardware_error"
    HALTED = "halted"
    PANIC = "panic"
    PANIC_END = "panic_end"
    REBOOT_ANNOUNCED = "reboot_announced"
    KEXEC_HANDOVER = "kexec_handover"
    RESTART = "restart"
    DUMP_SAVING = "dump_saving"
    DUMP_SAVED = "dump_saved"
    DUMP_FAILED = "dump_failed"
    WAITING_ROOT = "waiting_root"
    RESCUE_SHELL = "rescue_shell"
    HV_STORAGE = "hv_storage"
    HYPERVISOR = "hypervisor"
    ATA_IGNORED = "ata_ignored"


class HostEvent(StrEnum):
    """What the lab itself saw or did, kept in host-events.jsonl and never in the guest's transcript."""
    RESUMED = "resumed"                        # the fresh domain was started
    RESTORED = "restored"                      # the domain came from a snapshot
    CRASHKERNEL_REBOOT = "crashkernel_reboot"  # the one reboot a disk-booted image needs for crashkernel=
    TRIGGER = "trigger"                        # the panic was asked for (how, in the text)
    FAULT_APPLIED = "fault_applied"            # stale-vmbus: the paravirtual disk stopped at the panic
    FAULT_LIFTED = "fault_lifted"              # ... and answers again after the reset
    STALL = "stall"                            # no new stage within the stage's deadline
    SETTLED = "settled"                        # an early rule (lab/settle.py) made the verdict certain
    STRANDED = "stranded"                      # the capture kernel has no way left to its disk nor to a reset (S6)
    CONSOLE_CLOSED = "console_closed"
    POWERED_OFF = "powered_off"                # the guest shut down cleanly for the disk check
    POWEROFF_TIMEOUT = "poweroff_timeout"
    LIBVIRT_LIFECYCLE = "libvirt_lifecycle"    # libvirt's lifecycle events, as they come
    LIBVIRT_CRASHED = "libvirt_crashed"        # ... the "crashed" one (Hyper-V crash MSRs)
    LIBVIRT_RESET = "libvirt_reset"            # libvirt's REBOOT event: the guest was reset
