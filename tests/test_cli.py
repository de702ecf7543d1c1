import json
import os
import subprocess

from conftest import run_lab

PANIC_HANG = b"Linux version 6.1.0 (x@y) (gcc)\nKernel panic - not syncing: sysrq triggered crash\n" \
             b"---[ end Kernel panic - not syncing: sysrq triggered crash ]---\n"


def lab(*args, stdin=b""):
    return run_lab(*args, input=stdin)


def test_classify_json_from_stdin():
    done = lab("classify", "--json", stdin=PANIC_HANG)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["verdict"], out["stage"]) == ("hang", "panicked")
    assert {e["line"] for e in out["evidence"]} == {2, 3}


def test_a_log_that_ends_at_its_panic_cites_the_panic_once():
    out = json.loads(lab("classify", "--json", stdin=b"Kernel panic - not syncing: x\n").stdout)
    assert out["verdict"] == "unknown" and [e["line"] for e in out["evidence"]] == [1]


def test_classify_reads_a_recorded_log_past_its_header_and_shows_the_label(tmp_path):
    """tests/corpus and tests/transcripts files: the header's NOTES quote lines; they are not console."""
    recorded = tmp_path / "recorded.log"
    recorded.write_bytes(b"VERDICT: reboot\nSTAGE: panicked\nSOURCE: a test\n"
                         b"NOTES: quotes 'kdump: saved vmcore in /var/crash', which the console never says\n---\n"
                         b"Kernel panic - not syncing: x\nRebooting in 5 seconds..\n")
    out = json.loads(lab("classify", "--json", str(recorded)).stdout)
    assert (out["verdict"], out["label"]) == ("reboot", {"verdict": "reboot", "stage": "panicked"})
    assert [e["line"] for e in out["evidence"]] == [1, 2]   # counted from the console's first line
    assert "labelled reboot (stage panicked) in its header" in lab("classify", str(recorded)).stdout.decode()
    piped = json.loads(lab("classify", "--json", stdin=recorded.read_bytes()).stdout)   # the same on stdin
    assert (piped["verdict"], piped["label"]["verdict"]) == ("reboot", "reboot")


def test_classify_a_missing_file_is_one_line():
    done = lab("classify", "/nonexistent/log")
    assert done.returncode == 2
    assert done.stderr.decode().strip() == "lab: classify: cannot read /nonexistent/log: No such file or directory"


def test_run_unknown_scenario_is_refused_before_anything_starts(tmp_path):
    done = lab("run", "nope", "--results", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.decode().count("\n") == 1
    assert "unknown scenario 'nope'" in done.stderr.decode()
    assert list(tmp_path.iterdir()) == []


def test_run_bad_value_is_refused(tmp_path):
    done = lab("run", "kdump", "--set", "memory_mib=lots", "--results", str(tmp_path))
    assert done.returncode == 2
    assert "lab: scenario: memory_mib='lots': expected a number" in done.stderr.decode()
    assert list(tmp_path.iterdir()) == []


def test_scenarios_lists_every_built_in_one_with_what_it_shows():
    from lab import scenario as sc
    done = run_lab("scenarios", text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(sc.BASE_SCENARIOS)
    kb = next(line for line in lines if line.startswith("hyperv-kdump-kb2858695 "))
    assert "hyperv-gen1" in kb and "expect dump" in kb and "IDE" in kb
    rows = json.loads(run_lab("scenarios", "--json", text=True).stdout)
    assert {r["name"]: r["expect"] for r in rows} == {s.name: s.expect for s in sc.BASE_SCENARIOS.values()}


def test_a_dry_run_renders_everything_and_creates_nothing(tmp_path):
    env = dict(os.environ, LAB_CACHE_DIR=str(tmp_path / "cache"), LAB_URI="test:///nowhere")
    done = run_lab("run", "hyperv-kdump-kb2858695", "--dry-run", "--results", str(tmp_path / "r"), env=env, text=True)
    assert done.returncode == 0, done.stderr
    (folder,) = (tmp_path / "r").iterdir()
    run = folder / "hyperv-kdump-kb2858695"
    assert sorted(p.name for p in run.iterdir()) == ["cmdline.txt", "domain.xml", "kdump.txt", "meta-data", "user-data"]
    assert "<hyperv" in (run / "domain.xml").read_text() and "Microsoft Corporation" in (run / "domain.xml").read_text()
    cmdlines = (run / "cmdline.txt").read_text()
    capture = next(line for line in cmdlines.splitlines() if line.startswith("capture kernel"))
    assert "ata_piix.prefer_ms_hyperv=0" in capture and "modprobe.blacklist=hv_vmbus" in capture
    assert "crashkernel=" not in capture.split("): ", 1)[1]
    assert "options ata_piix prefer_ms_hyperv=0" in (run / "kdump.txt").read_text()
    assert "nothing was started or created" in done.stdout
    assert not (tmp_path / "cache").exists()   # no image build, no scratch, no probe: nothing at all


def test_another_kernel_is_a_derived_image_of_the_same_recipe_keyed_by_the_package(tmp_path):
    env = dict(os.environ, LAB_CACHE_DIR=str(tmp_path / "cache"), LAB_URI="test:///nowhere")

    def planned(*args):
        done = run_lab("run", "kdump", "--dry-run", "--results", str(tmp_path / "r"), *args, env=env, text=True)
        assert done.returncode == 0, done.stderr
        return next(line.strip() for line in done.stdout.splitlines() if line.strip().startswith("image: "))

    own, backports = planned(), planned("--kernel-package", "bookworm-backports/linux-image-amd64")
    assert own.endswith("kernel: the image's own") and backports.endswith("kernel: bookworm-backports/linux-image-amd64")
    deb = tmp_path / "linux-image-test_1_amd64.deb"

    def build_deb(description):
        tree = tmp_path / "tree"
        (tree / "DEBIAN").mkdir(parents=True, exist_ok=True)
        (tree / "DEBIAN" / "control").write_text(f"Package: linux-image-9.9.9-test\nVersion: 1\nArchitecture: amd64\n"
                                                 f"Maintainer: x <x@example.org>\nDescription: {description}\n")
        subprocess.run(["dpkg-deb", "--build", str(tree), str(deb)], check=True, capture_output=True)

    build_deb("one")
    first = planned("--kernel-deb", str(deb))
    build_deb("two")   # same path, other contents: another image
    second = planned("--kernel-deb", str(deb))
    keys = [line.split("(", 1)[1].split(")", 1)[0] for line in (own, backports, first, second)]
    assert len(set(keys)) == 4, keys
    assert not (tmp_path / "cache").exists()


def test_lab_vmcore_names_what_is_missing_in_one_line(tmp_path):
    run = tmp_path / "lab-1" / "panic-hang-1"
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps({"run_id": "panic-hang-1", "verdict": "hang", "vmcore": None}))
    broken = tmp_path / "lab-1" / "kdump-1"
    broken.mkdir()
    (broken / "report.json").write_text("{not json")
    for args, words in ((["nope"], "no finished run 'nope' under"), (["panic-hang-1"], "run panic-hang-1 has no vmcore (verdict hang)"),
                        (["../../etc"], "no finished run"), (["kdump-1"], "cannot read the run's report"),
                        (["kdump-1", "--lines", "0"], "--lines 0: expected 1 or more")):
        done = lab("vmcore", *args, "--results", str(tmp_path))
        assert done.returncode == 2 and done.stderr.decode().count("\n") == 1 and words in done.stderr.decode(), done.stderr


def test_lab_vmcore_symbols_are_asked_for_only_where_they_can_be_had(tmp_path):
    """--debuginfo fetches Debian's own kernels' symbols; a published image's or a .deb's kernel needs
    --vmlinux, and a --vmlinux that is not there is named. Each in one line, before anything is fetched."""
    def dump_run(name, image):
        run = tmp_path / "lab-1" / name
        run.mkdir(parents=True)
        (run / "report.json").write_text(json.dumps({
            "run_id": name, "verdict": "dump", "image": image,
            "vmcore": {"file": "vmcore", "dmesg": "", "size": 1, "format": "flattened", "guest_path": "/var/crash/1/dump.1",
                       "check": "passed", "dump_panic": "", "panic_lines_match": True}}))
    dump_run("kdump-ubuntu", {"name": "ubuntu24.04", "kernel_booted": "6.8.0-1-generic"})
    dump_run("kdump-own", {"name": "debian12", "kernel_source": "/srv/linux-image-6.13_amd64.deb", "kernel_booted": "6.13.0"})
    env = dict(os.environ, LAB_CACHE_DIR=str(tmp_path / "cache"))
    for args, words in ((["kdump-ubuntu", "--debuginfo"], "'ubuntu24.04' is not one: give the kernel's vmlinux with --vmlinux PATH"),
                        (["kdump-own", "--debuginfo"], "the kernel came from /srv/linux-image-6.13_amd64.deb, not Debian's archive"),
                        (["kdump-own", "--vmlinux", str(tmp_path / "nope")], "nope: no such file")):
        done = run_lab("vmcore", *args, "--results", str(tmp_path), env=env, text=True)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
    assert not (tmp_path / "cache").exists()
