"""Errors that name the pipeline stage they failed in (in the manner of avocado-vt's error_context)."""
from __future__ import annotations

import contextlib
from typing import Iterator


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


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Re-raise anything unexpected inside `name` as a HostError naming that stage."""
    try:
        yield
    except LabError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        raise HostError(name, f"{type(exc).__name__}: {exc}") from exc
