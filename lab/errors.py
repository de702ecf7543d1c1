"""Errors that name the pipeline stage they failed in (in the manner of avocado-vt's error_context)."""
from __future__ import annotations


def shown(value) -> str:
    """A value as an error message shows it: its repr (one line, whatever the value holds), cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def shown_path(path) -> str:
    text = str(path)
    return text if text.isprintable() else repr(text)   # a newline in a path would break the one-line error


class LabError(Exception):
    """A failure the user can act on; printed as one line: `lab: <stage>: <message>`."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message


class HostError(LabError):
    """The host (libvirt, QEMU, the disk) failed, not the guest: never turned into a guest verdict."""


class InputError(LabError):
    """Bad input from the user: raised before anything is created."""
