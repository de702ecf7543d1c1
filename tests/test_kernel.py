"""Your kernel: `--kernel-package SUITE/PACKAGE` (scenario key `kernel`) boots a kernel from Debian's
archive in a derived image of the same recipe, on a real guest, through the panic to a checked vmcore."""
from pathlib import Path

import pytest

from lab import image

BACKPORTS = "bookworm-backports/linux-image-amd64"


@pytest.mark.live
@pytest.mark.lab(scenario="kdump", kernel=BACKPORTS)
def test_a_kernel_from_backports_boots_panics_and_dumps(lab_run):
    report = lab_run.report
    own = image.cached(image.DEFAULT)
    assert own is not None, "the image's own build is not cached (make image)"
    kernel = report["image"]
    assert kernel["kernel_source"] == BACKPORTS and kernel["key"] != own.key
    # What booted, read from the console's banner, is the derived image's kernel, not the recipe's own.
    assert kernel["kernel_booted"] == kernel["kernel"] != own.kernel_version, kernel
    assert (report["verdict"], report["stage"]) == ("dump", "reset"), report["diagnosis"]
    vmcore = report["vmcore"]
    assert vmcore["check"] == "passed" and vmcore["panic_lines_match"], vmcore
    # The host's makedumpfile read this kernel's dump: its log names the same release.
    dmesg = (Path(report["artifacts"]["dir"]) / vmcore["dmesg"]).read_text(errors="replace")
    assert f"Linux version {kernel['kernel_booted']} " in dmesg
