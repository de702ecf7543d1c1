"""QEMU runs as libvirt's unprivileged user (issue 13): the lab names it in a static DAC label, hands a
run's own files to it, and refuses, in one line and before anything starts, a file that user cannot reach."""
import os
import pwd

import pytest

from lab import profiles, qemu_user
from lab.errors import HostError

QEMU = qemu_user.QemuUser("libvirt-qemu", 64055, 64055, frozenset({64055}))


@pytest.fixture
def tree(passable_tmp):
    """Folders every user may pass down to (pytest's own tmp_path is under a 0700 folder)."""
    (passable_tmp / "open").mkdir(mode=0o755)
    (passable_tmp / "open" / "disk.qcow2").write_text("x")
    os.chmod(passable_tmp / "open" / "disk.qcow2", 0o644)
    (passable_tmp / "closed").mkdir(mode=0o700)
    (passable_tmp / "closed" / "disk.qcow2").write_text("x")
    os.chmod(passable_tmp / "closed" / "disk.qcow2", 0o644)
    return passable_tmp


def test_a_readable_file_in_passable_folders_is_reachable(tree):
    assert QEMU.why_not(tree / "open" / "disk.qcow2") is None


def test_a_closed_folder_on_the_way_is_named(tree):
    owner = pwd.getpwuid(os.geteuid()).pw_name
    assert QEMU.why_not(tree / "closed" / "disk.qcow2") == f"{tree / 'closed'} is mode 700 owned by {owner}"


def test_a_file_only_its_owner_reads_is_named(tree):
    os.chmod(tree / "open" / "disk.qcow2", 0o600)
    owner = pwd.getpwuid(os.geteuid()).pw_name
    assert QEMU.why_not(tree / "open" / "disk.qcow2") == f"{tree / 'open' / 'disk.qcow2'} is mode 600 owned by {owner}"


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a folder's group to QEMU's needs root")
def test_group_permission_counts_for_the_users_groups(tree):
    os.chown(tree / "closed", 0, 64055)
    os.chmod(tree / "closed", 0o710)
    assert QEMU.why_not(tree / "closed" / "disk.qcow2") is None
    os.chmod(tree / "closed", 0o700)
    assert QEMU.why_not(tree / "closed" / "disk.qcow2") is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a file to another user needs root")
def test_a_given_file_is_the_users_alone(tree):
    QEMU.give(tree / "open" / "disk.qcow2", 0o600)
    st = (tree / "open" / "disk.qcow2").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (64055, 64055, 0o600)
    assert QEMU.why_not(tree / "open" / "disk.qcow2", write=True) is None


def test_an_unreachable_image_is_one_line_naming_the_stage_and_the_fix(tree):
    with pytest.raises(HostError) as caught:
        QEMU.check_reads("domain", [tree / "open" / "disk.qcow2", tree / "closed" / "disk.qcow2"])
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("domain: QEMU runs as libvirt-qemu, which cannot read")
    assert "LAB_CACHE_DIR" in message


def test_root_on_the_system_daemon_names_libvirts_user(monkeypatch):
    monkeypatch.delenv("LAB_QEMU_USER", raising=False)
    user = qemu_user.for_uri("qemu:///system")
    if os.geteuid() != 0:
        assert user is None   # libvirt relabels a non-root user's files itself
        return
    assert (user.name, user.uid) == ("libvirt-qemu", pwd.getpwnam("libvirt-qemu").pw_uid)
    assert qemu_user.for_uri("qemu:///session") is None   # a session daemon runs QEMU as its own user


@pytest.mark.skipif(os.geteuid() != 0, reason="only root names QEMU's user")
def test_an_unknown_qemu_user_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("LAB_QEMU_USER", "no-such-user-here")
    with pytest.raises(HostError, match=r"^domain: QEMU's user 'no-such-user-here' does not exist"):
        qemu_user.for_uri("qemu:///system")


def test_the_label_runs_qemu_as_that_user_and_relabels_nothing():
    xml = profiles.probe_renderer("/k", qemu_label=QEMU.label)({"domain_type": "qemu", "cpu_mode": "custom"}, [], "p")
    assert "<seclabel type='static' model='dac' relabel='no'>" in xml
    assert "<label>+64055:+64055</label>" in xml


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's cache moved")
@pytest.mark.parametrize("marked, new_exists, moved", [(True, False, True), (False, False, False), (True, True, False)])
def test_roots_old_cache_is_moved_once_and_only_if_it_is_the_labs(tmp_path, monkeypatch, capsys, marked, new_exists, moved):
    from types import SimpleNamespace

    from lab import paths
    old = tmp_path / "root-home" / ".cache" / "panic-lab"
    (old / "images").mkdir(parents=True)
    (old / "snapshots" / "k").mkdir(parents=True)
    (old / "snapshots" / "k" / "seed.iso").write_text("a guest's root password")
    os.chmod(old / "snapshots" / "k" / "seed.iso", 0o644)
    if marked:
        (old / paths.MARK).write_text("made by panic-lab\n")
    new = tmp_path / "var" / "panic-lab"
    if new_exists:
        paths.claim(new)
    monkeypatch.delenv("LAB_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "someone-else"))   # a HOME kept by sudo is not root's
    monkeypatch.setattr(paths.pwd, "getpwuid", lambda uid: SimpleNamespace(pw_dir=str(tmp_path / "root-home")))
    monkeypatch.setattr(paths, "ROOT_CACHE", new)
    monkeypatch.setattr(paths, "_moved", False)
    assert paths.cache_dir() == new and old.exists()   # a reader moves nothing
    assert paths.owned_cache() == new
    assert (new / "images").is_dir() == moved
    assert old.exists() != moved   # a folder without the lab's mark is not the lab's to move
    if moved:   # an old snapshot's seed was safe under /root (0700); under /var/cache it must be private
        assert (new / "snapshots" / "k" / "seed.iso").stat().st_mode & 0o077 == 0
    said = capsys.readouterr().err
    assert ("cache: moved" in said) == moved
    assert ("was not moved" in said) == (marked and new_exists)
