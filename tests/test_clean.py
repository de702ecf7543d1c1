"""`lab clean` removes what the lab made (name prefix and metadata) and nothing else. Needs libvirt,
boots nothing: the domains are started paused, disk-less."""
import os
import shutil
import subprocess
import uuid

import libvirt
import pytest

from lab import clean, host, image, paths, profiles, qemu_user
from lab.errors import LabError

pytestmark = pytest.mark.libvirt   # domains are started paused and disk-less: no guest boots

TCG = {"domain_type": "qemu", "cpu_mode": "custom"}


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def start(conn, name: str, with_metadata: bool, owner: int):
    kernel = image.cached("debian12")
    if kernel is None:
        pytest.skip("the debian12 image is not built (make image)")
    xml = profiles.probe_renderer(str(kernel.kernel), qemu_user.label_for(conn))(TCG, [], "x")
    xml = xml.replace(f"owner='{os.getpid()}'", f"owner='{owner}'")
    xml = xml.replace(xml[xml.index("<name>"):xml.index("</name>") + 7], f"<name>{name}</name>")
    if not with_metadata:
        xml = xml[:xml.index("<metadata>")] + xml[xml.index("</metadata>") + 11:]
    return conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED)


def test_clean_takes_only_leftovers_of_the_lab():
    """A leftover (its lab process is dead) goes; a run still going, a look-alike and a stranger stay."""
    conn = host.connect()
    tag = uuid.uuid4().hex[:6]
    dead, living = dead_pid(), os.getppid()
    leftover = start(conn, f"{paths.NAME_PREFIX}leftover-{tag}", True, dead)
    running = start(conn, f"{paths.NAME_PREFIX}running-{tag}", True, living)
    lookalike = start(conn, f"{paths.NAME_PREFIX}not-ours-{tag}", False, dead)
    foreign = start(conn, f"someone-else-{tag}", True, dead)
    scratch_dead = paths.new_scratch(f"leftover-{tag}")
    scratch_live = paths.new_scratch(f"running-{tag}")
    for where, pid in ((scratch_dead, dead), (scratch_live, living)):
        (where / paths.OWNER).write_text(f"{pid}\n")
    try:
        said = clean.clean()
        names = {d.name() for d in conn.listAllDomains()}
        assert f"{paths.NAME_PREFIX}leftover-{tag}" not in names
        assert {f"{paths.NAME_PREFIX}running-{tag}", f"{paths.NAME_PREFIX}not-ours-{tag}",
                f"someone-else-{tag}"} <= names
        assert f"removed domain {paths.NAME_PREFIX}leftover-{tag}" in said
        assert not scratch_dead.exists() and scratch_live.exists()
    finally:
        shutil.rmtree(scratch_live, ignore_errors=True)
        for dom in (leftover, running, lookalike, foreign):
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass


def test_clean_never_deletes_a_folder_it_did_not_make(tmp_path, monkeypatch):
    """LAB_WORK_DIR may be a folder of the user's: `lab clean` deletes only inside the lab's own marked
    folder there, and only what carries a run's owner mark."""
    monkeypatch.setenv("LAB_WORK_DIR", str(tmp_path))
    thesis = tmp_path / "my-thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("months of work\n")
    (tmp_path / "notes.txt").write_text("keep me\n")
    scratch = paths.new_scratch(f"leftover-{uuid.uuid4().hex[:6]}")
    (scratch / paths.OWNER).write_text(f"{dead_pid()}\n")
    unmarked = paths.work_dir() / "someone-put-this-here"
    unmarked.mkdir()

    said = clean.clean()

    assert (thesis / "chapter1.tex").read_text() == "months of work\n"
    assert (tmp_path / "notes.txt").exists()
    assert not scratch.exists(), said
    assert unmarked.exists()
    assert any("someone-put-this-here" in line and "no owner mark" in line for line in said)


def test_scratch_is_marked_from_the_moment_it_exists(tmp_path, monkeypatch):
    """A run's scratch appears with its owner inside it (made aside, renamed into place), and one still
    being made is named after its owner: a concurrent `lab clean` never sees an unowned run folder."""
    monkeypatch.setenv("LAB_WORK_DIR", str(tmp_path))
    scratch = paths.new_scratch("a-run")
    assert paths.is_marked(paths.work_dir())
    assert paths.scratch_owner(scratch) == os.getpid()
    being_made = paths.work_dir() / f"{paths.NEW_SCRATCH}{os.getppid()}-x1y2"
    being_made.mkdir()
    abandoned = paths.work_dir() / f"{paths.NEW_SCRATCH}{dead_pid()}-z3w4"
    abandoned.mkdir()
    try:
        clean.clean()
        assert being_made.exists() and not abandoned.exists()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_an_unmarked_folder_in_the_way_is_refused_not_taken(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_WORK_DIR", str(tmp_path))
    (tmp_path / "panic-lab").mkdir()
    (tmp_path / "panic-lab" / "data.csv").write_text("1,2\n")
    with pytest.raises(LabError, match="is not the lab's"):
        paths.new_scratch("a-run")
    assert sorted(p.name for p in (tmp_path / "panic-lab").iterdir()) == ["data.csv"]


def test_a_cache_without_the_mark_is_left_alone(tmp_path, monkeypatch):
    """LAB_CACHE_DIR pointed at a folder of the user's: even --images --snapshots deletes nothing there."""
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("LAB_WORK_DIR", str(tmp_path / "work"))
    for sub in ("images/photos", "snapshots/holiday", "cloud/x", "archive/.x-fetch-1-y"):
        (tmp_path / sub).mkdir(parents=True)
    said = clean.clean(images=True, snapshots=True, force=True)
    assert all((tmp_path / sub).exists()
               for sub in ("images/photos", "snapshots/holiday", "cloud/x", "archive/.x-fetch-1-y")), said
    assert any("does not carry the lab's mark" in line for line in said)


def test_an_interrupted_symbol_fetch_goes_once_its_process_is_gone_and_symbols_only_with_images(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LAB_WORK_DIR", str(tmp_path / "work"))
    fetcher = subprocess.Popen(["sleep", "60"])   # another lab process, still fetching
    try:
        apt, symbols = paths.owned_cache() / "archive", paths.owned_cache() / "debuginfo"
        abandoned = apt / f".6.1.0-1-amd64-fetch-{dead_pid()}-a1"
        going = apt / f".6.1.0-2-amd64-fetch-{fetcher.pid}-b2"
        fetched = symbols / "6.1.0-1-amd64"
        for folder in (abandoned, going, fetched):
            folder.mkdir(parents=True)
        said = clean.clean()
        assert not abandoned.exists() and going.exists() and fetched.exists(), said
        said = clean.clean(images=True)
        assert not fetched.exists() and going.exists(), said
    finally:
        fetcher.kill()
        fetcher.wait()
