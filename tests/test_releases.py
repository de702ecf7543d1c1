"""Three Debian releases (images/releases.toml), each built offline by the one recipe in images/debian/ from
that release's own packages, and the seed's scenarios (with the default profile's dump) on each of them."""
import os

import pytest

from conftest import run_lab
from lab import image, seed
from lab import scenario as sc
from lab.vocabulary import HostEvent as H
from lab.vocabulary import Stage as S

RELEASES = {"debian11": "bullseye", "debian12": "bookworm", "debian13": "trixie"}
SCENARIOS = ["panic-reboot", "panic-hang", "kdump", "hyperv-kdump-kb2858695", "hyperv-kdump-default"]


def test_each_release_is_an_image_of_its_own_built_by_the_one_recipe():
    recipes = {name: image.RECIPES[name] for name in RELEASES}
    assert {name: r.suite for name, r in recipes.items()} == RELEASES
    assert len({r.directory for r in recipes.values()}) == 1
    assert len({image.recipe_key(name) for name in RELEASES}) == 3   # each is cached apart


def test_the_capture_kernel_starts_from_the_release_s_own_kdump_tools_default():
    """kdump-tools 1.6.8 (bullseye) passes the KB's ata_piix.prefer_ms_hyperv=0 to every capture kernel;
    1.8 (bookworm) and later do not. The lab writes KDUMP_CMDLINE_APPEND out, so it must start from the
    release's value, or "kdump as the distribution ships it" would not be what the distribution ships."""
    def capture_append(release):
        guest = image.planned(release).guest
        rendered = seed.render(sc.resolve("hyperv-kdump-default"), "r", guest=guest)
        return next(line for line in rendered.user_data.splitlines() if "KDUMP_CMDLINE_APPEND=" in line)

    bullseye, bookworm, trixie = (capture_append(r) for r in RELEASES)
    assert "ata_piix.prefer_ms_hyperv=0" in bullseye and " nousb" in bullseye
    assert "ata_piix.prefer_ms_hyperv" not in bookworm and "usbcore.nousb" in bookworm
    assert trixie == bookworm


def test_a_release_not_in_the_recipes_is_refused_in_one_line_before_anything_starts(tmp_path):
    env = dict(os.environ, LAB_CACHE_DIR=str(tmp_path / "cache"), LAB_URI="test:///nowhere")
    for args in (["run", "kdump", "--image", "debian14", "--results", str(tmp_path / "r")],
                 ["images", "build", "debian14"]):
        done = run_lab(*args, env=env, text=True)
        assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "debian14" in done.stderr and "debian11" in done.stderr, done.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "cache").exists()


# What each release gives, live: the scenario's own expectation on all three (the README's "Debian
# releases" says where their consoles differ on the way).
EXPECTED = {(release, name): sc.resolve(name).expect for release in RELEASES for name in SCENARIOS}
# make test boots one, the cheapest (about 55 s): the oldest release booted and panicked, its verdict
# settled at once. Every release x scenario (the Gen1 default's console evidence too) runs in make test-releases.
REPRESENTATIVE_RUNS = {"debian11-panic-hang"}


def _release_runs():
    return pytest.mark.parametrize("release,scenario", [
        pytest.param(release, name, id=f"{release}-{name}",
                     marks=pytest.mark.lab(scenario=name, image=release,
                                           **({"stall_seconds": 60} if sc.resolve(name).expect == "hang" else {})))
        for release in RELEASES for name in SCENARIOS])


@pytest.mark.live
@_release_runs()
def test_the_seed_s_scenarios_on_each_release(lab_run, release, scenario):
    report = lab_run.report
    assert report["image"]["name"] == release
    assert report["verdict"] == EXPECTED[release, scenario], report["diagnosis"]
    # The kernel that booted is the release's own.
    assert report["image"]["kernel_booted"] == image.cached(release).kernel_version
    if report["verdict"] == "dump":
        assert report["confidence"] == "certain"
        assert report["vmcore"]["check"] == "passed" and report["vmcore"]["panic_lines_match"], report["vmcore"]
    elif scenario != "hyperv-kdump-default":   # a reset after the panic, or a panic that ends with kernel.panic=0
        assert (report["stage"], report["confidence"]) == ({"reboot": S.RESET, "hang": S.PANICKED}[report["verdict"]],
                                                           "certain"), report["diagnosis"]
    else:
        # The Gen1 default: the capture kernel is stuck on the stale paravirtual path. Where it says it ignores
        # the IDE disk, S6 settles it; bullseye's keeps the IDE disk (below), so only the stall deadline ends it.
        decided = report["decided_by"]
        assert report["stage"] == S.CAPTURE_KERNEL_BOOTED, report["diagnosis"]
        assert (decided["kind"], decided.get("rule")) == ((H.STALL, None) if release == "debian11" else ("settled", "S6")), decided
        capture = "\n".join(lab_run.transcript.stage_slice(S.CAPTURE_KERNEL_BOOTED))
        # bullseye's kdump-tools passes ata_piix.prefer_ms_hyperv=0 itself: its capture kernel gets the IDE disk,
        # and still hangs. Later releases' capture kernels ignore the IDE disk, as the first kernel does.
        assert ("ATA device ignore set" in capture) == (release != "debian11"), capture[-2000:]
        assert ("QEMU HARDDISK" in capture) == (release == "debian11"), capture[-2000:]
