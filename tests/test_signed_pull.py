"""Signed checksum files: `lab images pull` checks the distribution's signature with gpgv against a
keyring file before it reads a digest from the checksum file. The keys are throwaway ones made here
with gpg (in a GNUPGHOME under pytest's tmp path, its agent stopped at the end); the files are served
by the loopback server of test_pull.py.

In-process, as test_pull.py reads checksum files: the catalog refuses a checksum file over plain http,
and the loopback server has no TLS."""
import io
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from lab import catalog, checksums
from lab.errors import HostError
from test_pull import qcow2, server, sha   # noqa: F401 (fixtures)


class Keys:
    """Signing keys in a scratch GNUPGHOME: "distro" (exported as the keyring), "other", and "old",
    made and used in 2020 with a one-day expiry (gpgv calls its signatures good, but by an expired key)."""

    def __init__(self, home: Path):
        self.home = home
        self.env = {**os.environ, "GNUPGHOME": str(home)}
        for who in ("distro", "other"):
            self.gpg("--quick-gen-key", f"{who} <{who}@example.invalid>", "ed25519", "sign", "never")
        self.fingerprint = self.gpg("--with-colons", "--list-keys", "distro@example.invalid").split("fpr:::::::::")[1][:40]
        self.keyring = home / "distro.gpg"          # binary, as /usr/share/keyrings/*.gpg are
        self.keyring.write_bytes(self.gpg("--export", "distro@example.invalid", text=False))
        self.armored = home / "RPM-GPG-KEY-distro"  # ASCII-armored, as distribution-gpg-keys' files are
        self.armored.write_text(self.gpg("--armor", "--export", "distro@example.invalid"))
        self.gpg("--faked-system-time", "20200101T000000", "--quick-gen-key", "old <old@example.invalid>", "ed25519",
                 "sign", "1d")
        self.old_keyring = home / "old.gpg"
        self.old_keyring.write_bytes(self.gpg("--export", "old@example.invalid", text=False))

    def gpg(self, *args: str, text=True, data: bytes = b""):
        done = subprocess.run(["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", "", *args],
                              input=data, capture_output=True, env=self.env, timeout=60, check=True)
        return done.stdout.decode() if text else done.stdout

    def detached(self, data: bytes, who="distro", *when: str) -> bytes:
        return self.gpg(*when, "--local-user", f"{who}@example.invalid", "--detach-sign", text=False, data=data)

    def clearsigned(self, data: bytes, who="distro") -> bytes:
        return self.gpg("--local-user", f"{who}@example.invalid", "--clearsign", text=False, data=data)

    def agents(self) -> list[int]:
        """gpg-agent processes serving this home."""
        found = []
        for proc in Path("/proc").iterdir():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if proc.name.isdigit() and any(a.endswith(b"gpg-agent") for a in argv[:1]) and str(self.home).encode() in argv:
                found.append(int(proc.name))
        return found


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    if not all(shutil.which(tool) for tool in ("gpg", "gpgv", "gpgconf")):
        pytest.skip("gpg, gpgv or gpgconf is not installed (make setup)")
    home = tmp_path_factory.mktemp("gpg")   # short: gpg-agent's socket path lives under it
    home.chmod(0o700)
    k = Keys(home)
    yield k
    subprocess.run(["gpgconf", "--kill", "all"], env=k.env, check=True, timeout=30)
    deadline = time.monotonic() + 10
    while k.agents() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not k.agents(), "gpg-agent left running"


def signed_entry(server, keyring, signature, checksum="/img/SUMS") -> catalog.Entry:
    return catalog.Entry(name="local", url=f"{server.url}/img/disk.qcow2", family="debian", kdump="kdump-tools",
                         user="debian", crashkernel="grub-reboot", checksum_url=f"{server.url}{checksum}",
                         checksum_entry="disk.qcow2", checksum_signature=signature, checksum_keyring=str(keyring))


@pytest.fixture
def pull(monkeypatch, tmp_path):
    """catalog.pull of one entry, with a cache of the test's own."""
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))

    def run(e: catalog.Entry) -> Path:
        monkeypatch.setattr(catalog, "load", lambda path=None: {e.name: e})
        return catalog.pull(e.name, log=io.StringIO())
    return run


def refused(pull, e, server, tmp_path) -> str:
    with pytest.raises(HostError) as caught:
        pull(e)
    message = caught.value.message
    assert "\n" not in message and message.endswith("nothing was downloaded or cached"), message
    assert server.gets("/img/disk.qcow2") == []   # the image was never asked for
    assert catalog.cached(e) is None and not any((tmp_path / "cache" / "cloud" / "local").iterdir())
    return message


def test_a_good_detached_signature_vouches_for_the_digest(server, tmp_path, qcow2, keys, pull):
    disk = qcow2("disk.qcow2")
    sums = f"{'0' * 64}  other.img\n{sha(disk)}  disk.qcow2\n".encode()
    server.routes.update({"/img/disk.qcow2": disk, "/img/SUMS": sums, "/img/SUMS.gpg": keys.detached(sums)})
    e = signed_entry(server, keys.keyring, f"{server.url}/img/SUMS.gpg")
    cached = pull(e)
    assert sha(cached) == sha(disk)
    assert catalog.checked_of(e) == f"a checksum file signed by {keys.fingerprint}"
    assert [row["checked"] for row in catalog.listing()] == [f"a checksum file signed by {keys.fingerprint}"]


def test_a_good_clear_signed_file_vouches_for_the_digest(server, tmp_path, qcow2, keys, pull):
    disk = qcow2("disk.qcow2")
    server.routes.update({"/img/disk.qcow2": disk,
                          "/img/SUMS.asc": keys.clearsigned(f"SHA256 (disk.qcow2) = {sha(disk)}\n".encode())})
    e = signed_entry(server, keys.armored, checksums.CLEARSIGNED, checksum="/img/SUMS.asc")
    assert sha(pull(e)) == sha(disk)
    assert catalog.checked_of(e) == f"a checksum file signed by {keys.fingerprint}"


@pytest.mark.parametrize("kind", ["detached", "clearsigned"])
def test_a_checksum_file_changed_after_signing_is_refused(server, tmp_path, qcow2, keys, pull, kind):
    # Whoever swapped the image also put its digest in the checksum file; the signature is the old one.
    real, evil = qcow2("real.qcow2"), qcow2("disk.qcow2")
    good = f"{sha(real)}  disk.qcow2\n".encode()
    server.routes["/img/disk.qcow2"] = evil
    if kind == "detached":
        server.routes.update({"/img/SUMS": good.replace(sha(real).encode(), sha(evil).encode()),
                              "/img/SUMS.gpg": keys.detached(good)})
        e = signed_entry(server, keys.keyring, f"{server.url}/img/SUMS.gpg")
    else:
        server.routes["/img/SUMS"] = keys.clearsigned(good).replace(sha(real).encode(), sha(evil).encode())
        e = signed_entry(server, keys.keyring, checksums.CLEARSIGNED)
    assert "BAD signature by key" in refused(pull, e, server, tmp_path)


@pytest.mark.parametrize("kind", ["detached", "clearsigned"])
def test_a_signature_by_another_key_is_refused(server, tmp_path, qcow2, keys, pull, kind):
    disk = qcow2("disk.qcow2")
    sums = f"{sha(disk)}  disk.qcow2\n".encode()
    server.routes["/img/disk.qcow2"] = disk
    if kind == "detached":
        server.routes.update({"/img/SUMS": sums, "/img/SUMS.gpg": keys.detached(sums, who="other")})
        e = signed_entry(server, keys.keyring, f"{server.url}/img/SUMS.gpg")
    else:
        server.routes["/img/SUMS"] = keys.clearsigned(sums, who="other")
        e = signed_entry(server, keys.keyring, checksums.CLEARSIGNED)
    message = refused(pull, e, server, tmp_path)
    assert f"which is not in the keyring {keys.keyring}" in message, message


def test_a_signature_by_an_expired_key_is_refused(server, tmp_path, qcow2, keys, pull):
    disk = qcow2("disk.qcow2")
    sums = f"{sha(disk)}  disk.qcow2\n".encode()
    signature = keys.detached(sums, "old", "--faked-system-time", "20200101T010000")   # while the key was valid
    server.routes.update({"/img/disk.qcow2": disk, "/img/SUMS": sums, "/img/SUMS.gpg": signature})
    e = signed_entry(server, keys.old_keyring, f"{server.url}/img/SUMS.gpg")
    assert "signed with an expired key" in refused(pull, e, server, tmp_path)


def test_a_missing_signature_file_is_refused(server, tmp_path, qcow2, keys, pull):
    disk = qcow2("disk.qcow2")
    server.routes.update({"/img/disk.qcow2": disk, "/img/SUMS": f"{sha(disk)}  disk.qcow2\n".encode()})
    e = signed_entry(server, keys.keyring, f"{server.url}/img/SUMS.gpg")   # the server says 404
    assert "/img/SUMS.gpg: HTTP 404" in refused(pull, e, server, tmp_path)


def test_an_unsigned_file_where_a_clear_signed_one_is_expected_is_refused(server, tmp_path, qcow2, keys, pull):
    disk = qcow2("disk.qcow2")
    server.routes.update({"/img/disk.qcow2": disk, "/img/SUMS": f"{sha(disk)}  disk.qcow2\n".encode()})
    e = signed_entry(server, keys.keyring, checksums.CLEARSIGNED)
    assert "no OpenPGP signature in it (not a clear-signed file)" in refused(pull, e, server, tmp_path)


def test_a_missing_keyring_is_refused(server, tmp_path, qcow2, keys, pull):
    disk = qcow2("disk.qcow2")
    sums = f"{sha(disk)}  disk.qcow2\n".encode()
    server.routes.update({"/img/disk.qcow2": disk, "/img/SUMS": keys.clearsigned(sums)})
    e = signed_entry(server, tmp_path / "no-such-keyring.gpg", checksums.CLEARSIGNED)
    assert "no-such-keyring.gpg not found (make setup" in refused(pull, e, server, tmp_path)


def test_digest_lines_outside_the_signed_part_are_not_used(server, tmp_path, qcow2, keys, pull):
    real, evil = qcow2("real.qcow2"), qcow2("disk.qcow2")
    signed = keys.clearsigned(f"{sha(real)}  disk.qcow2\n".encode())
    server.routes.update({"/img/disk.qcow2": evil,
                          "/img/SUMS": f"{sha(evil)}  disk.qcow2\n".encode() + signed + f"{sha(evil)}  disk.qcow2\n".encode()})
    e = signed_entry(server, keys.keyring, checksums.CLEARSIGNED)
    with pytest.raises(HostError) as caught:
        pull(e)
    assert caught.value.message.startswith("local: sha256 mismatch (expected " + sha(real)[:16]), caught.value.message
    assert catalog.cached(e) is None and not any((tmp_path / "cache" / "cloud" / "local").iterdir())


def test_an_entry_only_outside_the_signed_part_is_no_entry(server, tmp_path, qcow2, keys, pull):
    disk = qcow2("disk.qcow2")
    signed = keys.clearsigned(f"{'0' * 64}  other.img\n".encode())
    server.routes.update({"/img/disk.qcow2": disk, "/img/SUMS": signed + f"{sha(disk)}  disk.qcow2\n".encode()})
    e = signed_entry(server, keys.keyring, checksums.CLEARSIGNED)
    assert "has no entry for disk.qcow2 in its signed text" in refused(pull, e, server, tmp_path)
