"""Bad input and a broken host: one line that names the problem, and nothing left behind."""
import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, run_lab

from lab import host, paths, seed
from lab import scenario as sc
from lab.errors import InputError

# For `lab run` with input that must be refused: should a value slip through, the run stops at an
# unreachable libvirt instead of booting a guest in a test that is not marked live.
NO_LIBVIRT = {"LAB_URI": "qemu+unix:///system?socket=/nonexistent/libvirt-sock"}


def lab(*args, env=None):
    return run_lab(*args, env=env, text=True, timeout=300)


def one_line_error(done, stage: str, words: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"lab: {stage}: "), done.stderr
    assert words in done.stderr, done.stderr


@pytest.mark.parametrize("override, words", [
    ("image=centos5", "unknown image 'centos5'"),
    ("boot_seconds=-5", "boot_seconds must be positive"),
    ("stall_seconds=0", "stall_seconds must be positive"),
    ("memory_mib=512", "leaves less than 384 MiB beside crashkernel=256M"),
    ("vcpus=999", "host's cores"),
    ("extra_cmdline=quiet$(reboot)", "shell metacharacters"),
    ("stall_seconds=nan", "stall_seconds=nan: expected a finite number of seconds"),
    ("boot_seconds=inf", "boot_seconds=inf: expected a finite number of seconds"),
    ("stall_seconds=1e999", "stall_seconds=inf: expected a finite number of seconds"),
    ("boot_seconds=3601", "boot_seconds=3601 is above 3600"),
    ("trigger=nmi\n", "trigger='nmi\\n': expected sysrq, nmi or cpu:N"),
    ("kernel=6.12", "kernel='6.12': expected SUITE/PACKAGE"),
    ("kernel=sid/../../etc", "kernel='sid/../../etc': expected SUITE/PACKAGE"),
    ("kernel=/etc/hostname.deb", "kernel='/etc/hostname.deb': cannot read it"),
    ("kernel=linux.deb", "give the .deb's absolute path"),
])
def test_out_of_range_and_unknown_values_are_refused_before_anything_exists(tmp_path, override, words):
    done = lab("run", "kdump", "--set", override, "--results", str(tmp_path / "results"), env=NO_LIBVIRT)
    one_line_error(done, "scenario", words)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "3600.5"])
@pytest.mark.parametrize("key", ["stall_seconds", "boot_seconds"])
def test_seconds_must_be_finite_and_at_most_an_hour(key, value):
    with pytest.raises(InputError, match=key):
        sc.with_overrides(sc.resolve("kdump"), [f"{key}={value}"])
    assert getattr(sc.with_overrides(sc.resolve("kdump"), [f"{key}=3600"]), key) == 3600.0


def _binary(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" + bytes(range(256)))
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("make, words", [(_binary, "not UTF-8 text (byte 0 is 0x89)"), (_folder, "Is a directory")])
def test_a_scenario_file_that_is_not_text_is_one_line(tmp_path, make, words):
    path = make(tmp_path / "runs.toml")
    done = lab("run", str(path), "--results", str(tmp_path / "results"), env=NO_LIBVIRT)
    one_line_error(done, "scenario", words)
    assert str(path) in done.stderr and not (tmp_path / "results").exists()


@pytest.mark.parametrize("make, words", [(_binary, "not UTF-8 text (byte 0 is 0x89)"), (_folder, "Is a directory")])
def test_a_catalog_that_is_not_text_is_one_line(tmp_path, make, words):
    path = make(tmp_path / "catalog.toml")
    done = lab("images", env={"LAB_CATALOG": str(path), "LAB_CACHE_DIR": str(tmp_path / "cache")})
    one_line_error(done, "catalog", words)
    assert str(path) in done.stderr and not (tmp_path / "cache").exists()


def test_a_catalog_name_that_would_escape_the_cache_is_refused_by_lab_images(tmp_path):
    path = tmp_path / "catalog.toml"
    path.write_text('["../../x"]\nurl = "https://h/i.img"\nsha256 = "' + "a" * 64 + '"\nfamily = "debian"\n'
                    'kdump = "kdump-tools"\nuser = "debian"\ncrashkernel = "grub-reboot"\n')
    done = lab("images", env={"LAB_CATALOG": str(path), "LAB_CACHE_DIR": str(tmp_path / "cache")})
    one_line_error(done, "catalog", "['../../x']: a catalog name is")
    assert not (tmp_path / "cache").exists()


def test_a_name_that_would_escape_the_results_folder_is_refused():
    with pytest.raises(InputError, match="lowercase letters, digits and dashes"):
        sc.validate(dataclasses.replace(sc.resolve("kdump"), name="../../etc/cron.d/x"))
    with pytest.raises(InputError, match="lowercase letters") as err:   # "$" in a pattern lets a final newline by
        sc.validate(dataclasses.replace(sc.resolve("kdump"), name="kdump\n"))
    assert "\n" not in str(err.value)


def test_template_syntax_in_a_value_is_rendered_as_text():
    s = sc.with_overrides(sc.resolve("kdump"), ["kdump_cmdline_append={{7*7}}{%raw%}"])
    rendered = seed.render(s, "run-1")
    assert "{{7*7}}{%raw%}" in rendered.user_data and "49" not in rendered.user_data


def test_no_command_is_built_with_a_shell():
    for source in (ROOT / "lab").glob("*.py"):
        text = source.read_text()
        assert not re.search(r"shell\s*=\s*True", text), source.name
        assert "os.system(" not in text and "os.popen(" not in text, source.name


def test_no_libvirt_is_one_line_and_writes_nothing(tmp_path):
    done = lab("run", "kdump", "--results", str(tmp_path / "results"),
               env={"LAB_URI": "qemu+unix:///system?socket=/nonexistent/libvirt-sock"})
    one_line_error(done, "host", "libvirt unreachable at qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    assert not (tmp_path / "results").exists()


def test_no_mmdebstrap_is_one_line_and_builds_nothing(tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("mkfs.ext4", "qemu-img", "sfdisk"):   # every build tool but mmdebstrap
        found = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        if found:
            (tools / tool).symlink_to(found)
    done = lab("images", "build", env={"PATH": str(tools), "LAB_CACHE_DIR": str(tmp_path / "cache")})
    one_line_error(done, "image", "mmdebstrap not installed")
    assert not list((tmp_path / "cache").rglob("*-build-*"))


def run_scratch_left(work: Path) -> list[str]:
    """What runs left in LAB_WORK_DIR, beyond the lab's own marked folder (which stays, by design)."""
    return sorted(str(p.relative_to(work)) for p in work.rglob("*")
                  if p != work / "panic-lab" and p != work / "panic-lab" / paths.MARK) if work.exists() else []


@pytest.fixture
def tiny_disk(tmp_path):
    """A tmpfs of a few KiB: a full disk, without filling the host's."""
    def make(kib: int) -> Path:
        where = tmp_path / f"tiny-{kib}k"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        made.append(where)
        return where
    made: list[Path] = []
    yield make
    for where in made:
        subprocess.run(["umount", str(where)], capture_output=True)


def _lab_domains() -> list[str]:
    conn = host.connect()
    try:
        return [d.name() for d in conn.listAllDomains() if d.name().startswith(paths.NAME_PREFIX)]
    finally:
        host.disconnect(conn)


@pytest.mark.libvirt   # the run stops at the overlay: no guest boots
def test_a_full_disk_for_the_overlay_is_a_host_error_with_nothing_left(tmp_path, tiny_disk):
    scratch = tiny_disk(1024)   # a Gen1 run copies the whole disk image: far more than 1 MiB
    before = _lab_domains()
    done = lab("run", "hyperv-panic-hang", "--results", str(tmp_path / "results"), env={"LAB_WORK_DIR": str(scratch)})
    # A host error ends that run (the others of an invocation would go on), and says so in one line.
    assert done.returncode == 1, done.stderr
    assert re.search(r"^lab: hyperv-panic-hang: domain: qemu-img create failed: .*No space left on device",
                     done.stderr, re.M), done.stderr
    assert run_scratch_left(scratch) == []
    assert _lab_domains() == before


@pytest.mark.live
def test_a_full_disk_for_the_transcript_stops_the_run_as_a_host_error(passable_tmp, tiny_disk):
    results = tiny_disk(32)     # room for the domain XML, the seed and a few seconds of a boot's console output
    before = _lab_domains()
    done = lab("run", "panic-reboot", "--results", str(results), env={"LAB_WORK_DIR": str(passable_tmp / "scratch")})
    assert re.search(r"cut short: transcript: cannot write \S+/console.log: No space left on device", done.stderr), done.stderr
    assert done.returncode != 0 and "lab: report: cannot write" in done.stderr, done.stderr
    assert _lab_domains() == before
    assert run_scratch_left(passable_tmp / "scratch") == []
    (log,) = list(results.rglob("console.log"))
    assert log.stat().st_size > 0   # what fit on the disk is kept


def test_a_missing_host_tool_is_named_before_anything_is_created(tmp_path):
    """Validation before the run, as LAVA's validate pass: no libvirt contact, no disk copy, no results."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("virsh", "genisoimage", "e2fsck"):   # every run tool but qemu-img
        found = shutil.which(tool)
        if found:
            (tools / tool).symlink_to(found)
    done = lab("run", "hyperv-panic-hang", "--results", str(tmp_path / "results"),
               env={"PATH": str(tools), "LAB_URI": "test+unix:///nowhere", "LAB_CACHE_DIR": str(tmp_path / "cache")})
    one_line_error(done, "host", "not installed: qemu-img (overlays and disk copies)")
    assert not (tmp_path / "results").exists() and not (tmp_path / "cache").exists()


def test_a_kernel_deb_that_is_not_a_package_is_one_line(tmp_path):
    fake = tmp_path / "linux-image.deb"
    fake.write_text("not an ar archive")
    done = lab("run", "kdump", "--kernel-deb", str(fake), "--results", str(tmp_path / "results"), env=NO_LIBVIRT)
    one_line_error(done, "scenario", "is not a Debian package (no ar archive header)")
    assert not (tmp_path / "results").exists()


def test_a_kernel_is_for_an_image_the_lab_builds(tmp_path):
    done = lab("run", "kdump", "--image", "ubuntu24.04", "--kernel-package", "sid/linux-image-amd64",
               "--results", str(tmp_path / "results"), env=NO_LIBVIRT)
    one_line_error(done, "scenario", "kernel needs an image the lab builds (debian11, debian12, debian13); ubuntu24.04 brings its own")


def test_keep_with_repeats_is_one_line_before_anything_starts(tmp_path):
    done = lab("run", "panic-hang", "--keep", "--repeat", "2", "--results", str(tmp_path / "results"), env=NO_LIBVIRT)
    one_line_error(done, "scenario", "panic-hang: keep with repeat=2 would keep 2 guests of one scenario")
    assert not (tmp_path / "results").exists()


def test_a_kernel_deb_that_is_not_a_kernel_image_is_one_line(tmp_path):
    tree = tmp_path / "not-a-kernel"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text("Package: not-a-kernel\nVersion: 1\nArchitecture: amd64\n"
                                             "Maintainer: x <x@example.org>\nDescription: not a kernel\n")
    subprocess.run(["dpkg-deb", "--build", str(tree), str(tmp_path / "not-a-kernel.deb")], check=True, capture_output=True)
    done = lab("run", "kdump", "--kernel-deb", str(tmp_path / "not-a-kernel.deb"), "--results", str(tmp_path / "results"),
               env=NO_LIBVIRT)
    one_line_error(done, "scenario", "is the package 'not-a-kernel', not a kernel image (linux-image-*)")
    assert not (tmp_path / "results").exists()


def test_a_kernel_package_not_in_the_archive_is_refused_before_anything_starts(tmp_path):
    """apt looks the package up in Debian's archive (its own scratch lists) before any build or domain."""
    env = dict(NO_LIBVIRT, LAB_CACHE_DIR=str(tmp_path / "cache"))
    done = lab("run", "kdump", "--kernel-package", "bookworm-backports/linux-image-no-such-kernel",
               "--results", str(tmp_path / "results"), env=env)
    assert done.returncode == 2, done.stderr
    progress, error = done.stderr.splitlines()
    assert progress == "image: looking up bookworm-backports/linux-image-no-such-kernel in Debian's archive"
    assert error.startswith("lab: scenario: linux-image-no-such-kernel is not in bookworm-backports"), error
    assert not (tmp_path / "results").exists()
    assert list((tmp_path / "cache" / "archive").iterdir()) == []   # apt's scratch lists went with it
