"""The NoCloud seed for each guest family, against golden files reviewed by eye once.

LAB_UPDATE_GOLDEN=1 rewrites them; review the diff before committing.
"""
import os
from pathlib import Path

import pytest

from lab import catalog, kdumpconf, profiles, seed
from lab import scenario as sc

GOLDEN = Path(__file__).parent / "golden" / "seed"
UBUNTU = catalog.load(catalog.paths.IMAGES / "catalog.toml")["ubuntu24.04"].guest
RHEL = catalog.load(catalog.paths.IMAGES / "catalog.toml")["rocky9"].guest
CASES = {
    # name: (guest, scenario, overrides)
    "offline-debian12-kdump": (seed.OFFLINE_DEBIAN, "kdump", []),
    "offline-debian12-gen1-kb2858695": (seed.OFFLINE_DEBIAN, "hyperv-kdump-kb2858695", []),
    "offline-debian12-gen1-timeout": (seed.OFFLINE_DEBIAN, "hyperv-kdump-timeout", []),
    "ubuntu-kdump-tools-kdump": (UBUNTU, "kdump", []),
    "rhel-dracut-kdump": (RHEL, "kdump", ["kdump_cmdline_append=nr_cpus=1"]),
    "rhel-dracut-kb2858695": (RHEL, "hyperv-kdump-kb2858695", []),
    "rhel-dracut-panic-reboot": (RHEL, "panic-reboot", []),
}


@pytest.mark.parametrize("case", CASES)
def test_seed_matches_its_golden_file(case):
    guest, name, overrides = CASES[case]
    scenario = sc.with_overrides(sc.resolve(name), overrides)
    standins = profiles.STANDINS.get(scenario.profile, {}) if guest.flavour == "kdump-tools" else {}
    rendered = seed.render(scenario, "golden-run", standins, guest).user_data
    golden = GOLDEN / f"{case}.user-data"
    if os.environ.get("LAB_UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert rendered == golden.read_text(), f"{golden} differs (LAB_UPDATE_GOLDEN=1 to rewrite, then review)"


def test_the_kb_file_on_a_rhel_guest_is_warned_about_before_the_run():
    (warning,) = kdumpconf.lint(kdumpconf.KB2858695, "dracut-kdump")
    assert "blacklist, options, disk_timeout" in warning and 'expect "kdump not armed"' in warning
    assert kdumpconf.lint(kdumpconf.KB2858695, "kdump-tools") == []   # the lab translates it there
    assert kdumpconf.lint(None, "dracut-kdump") == []
