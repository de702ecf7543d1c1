"""What vouches for a published image's digest: the catalog's pinned sha256, the project's checksum
file, or a checksum file whose signature gpgv checked against a keyring file on this host.

Part of stage 1, image. A checksum file from the image's own server says the download is intact; a
signature by a key the host already holds (a keyring a Debian package installed, never one fetched
from that server) says who published it. gpgv, GnuPG's verify-only tool, does the OpenPGP work: it
trusts every key in the keyrings it is given and nothing else.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import HostError, shown, shown_path

if TYPE_CHECKING:
    from .catalog import Entry

CLEARSIGNED = "clearsigned"   # the catalog's word for a checksum file that carries its own signature
PINNED = "the catalog's pinned sha256"
UNSIGNED = "an unsigned checksum file"
TIMEOUT = 30       # seconds without a byte before a download counts as stalled
GPG_TIMEOUT = 60
ARMOR = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"


def fetch(url: str, start: int = 0):
    """An open HTTP response for `url` (from byte `start`); failures are one-line HostErrors."""
    import urllib.error   # here: every CLI call imports this module, few fetch
    import urllib.request
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        raise HostError("pull", f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise HostError("pull", f"{url}: {getattr(exc, 'reason', exc)}") from None


def expected(e: Entry) -> tuple[str, str]:
    """The digest the download must have, and what vouches for it: a pinned digest, a checksum file
    whose signature gpgv accepted (only its signed text is read), or an unsigned checksum file."""
    if e.sha256:
        return e.sha256.lower(), PINNED
    with fetch(e.checksum_url) as response:
        data = response.read(4 << 20)
    how = UNSIGNED
    if e.checksum_signature:
        keyring = Path(e.checksum_keyring)
        if e.checksum_signature == CLEARSIGNED:
            data, key = verified_text(data, None, keyring, f"{e.name}: {e.checksum_url}")
        else:
            with fetch(e.checksum_signature) as response:
                sig = response.read(1 << 20)
            data, key = verified_text(data, sig, keyring, f"{e.name}: {e.checksum_signature}")
        how = f"a checksum file signed by {key}"
    return _digest_in(data.decode(errors="replace"), e), how


def _digest_in(text: str, e: Entry) -> str:
    want = e.checksum_entry
    for line in text.splitlines():
        # GNU: "digest  name" or "digest *name"; BSD: "SHA256 (name) = digest"
        gnu = re.match(r"^([0-9a-fA-F]{64,128})\s+\*?(\S+)$", line.strip())
        bsd = re.match(r"^(SHA\d+) \((.+)\) = ([0-9a-fA-F]{64,128})$", line.strip())
        if gnu and gnu.group(2) == want:
            return gnu.group(1).lower()
        if bsd and bsd.group(2) == want:
            return bsd.group(3).lower()
    signed = " in its signed text" if e.checksum_signature else ""
    raise HostError("pull", f"{e.checksum_url} has no entry for {want}{signed}")


def verified_text(data: bytes, signature: bytes | None, keyring: Path, what: str) -> tuple[bytes, str]:
    """The signed text of a checksum file and the fingerprint of the key that signed it.

    `signature` is a detached signature of `data`; None means `data` is clear-signed, and then only the
    text inside the signature comes back (gpgv's --output), never what is around it. Raises HostError
    naming what is wrong; nothing of an unverified file is returned."""
    if not shutil.which("gpgv"):
        raise HostError("pull", "gpgv not installed (make setup): a signed checksum file is checked with it")
    with tempfile.TemporaryDirectory(prefix="panic-lab-gpgv-") as tmp:
        scratch = Path(tmp)
        ring = _binary_keyring(keyring, scratch)
        (scratch / "data").write_bytes(data)
        args = ["--keyring", str(ring)]
        if signature is None:
            args += ["--output", str(scratch / "signed"), str(scratch / "data")]
        else:
            (scratch / "data.sig").write_bytes(signature)
            args += [str(scratch / "data.sig"), str(scratch / "data")]
        done = _gpgv(args, scratch)
        fingerprint = _judge(done, keyring, what, clear=signature is None)
        # gpgv writes --output even for a bad signature: it is read only once the verdict is good.
        return ((scratch / "signed").read_bytes() if signature is None else data), fingerprint


def _binary_keyring(keyring: Path, scratch: Path) -> Path:
    """gpgv reads binary keyrings only; an ASCII-armored key file (as RPM-GPG-KEY-* files are) is
    dearmored by gpg into the scratch folder first."""
    try:
        with keyring.open("rb") as f:
            if not f.read(64).lstrip().startswith(ARMOR):
                return keyring.resolve()
    except FileNotFoundError:
        raise HostError("pull", f"keyring {shown_path(keyring)} not found (make setup installs the distributions' "
                                "keyrings)") from None
    except OSError as exc:
        raise HostError("pull", f"keyring {shown_path(keyring)}: cannot read it: {exc.strerror or exc}") from None
    if not shutil.which("gpg"):
        raise HostError("pull", f"keyring {shown_path(keyring)} is ASCII-armored and gpg (make setup) is not "
                                "installed to dearmor it")
    out = scratch / "keyring.gpg"
    try:
        done = subprocess.run(["gpg", "--batch", "--quiet", "--dearmor", "--output", str(out), str(keyring)],
                              capture_output=True, text=True, timeout=GPG_TIMEOUT, env=_env(scratch))
    except subprocess.TimeoutExpired:
        raise HostError("pull", f"gpg gave no answer in {GPG_TIMEOUT} s") from None
    if done.returncode != 0 or not out.exists():
        raise HostError("pull", f"keyring {shown_path(keyring)}: gpg cannot dearmor it: {_last(done.stderr)}")
    return out


def _env(scratch: Path) -> dict:
    # A home of its own: no trustedkeys.kbx or gpg.conf of the user's comes into it.
    return {**os.environ, "GNUPGHOME": str(scratch), "LC_ALL": "C"}


def _gpgv(args: list[str], scratch: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["gpgv", "--status-fd", "1", *args], capture_output=True, text=True,
                              timeout=GPG_TIMEOUT, env=_env(scratch), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise HostError("pull", f"gpgv gave no answer in {GPG_TIMEOUT} s") from None


def _judge(done: subprocess.CompletedProcess, keyring: Path, what: str, clear: bool) -> str:
    """The signer's primary-key fingerprint when every signature is good; otherwise a HostError."""
    status: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        if line.startswith("[GNUPG:] "):
            word, *rest = line[9:].split()
            status.setdefault(word, rest)
    ring = shown_path(keyring)
    if "BADSIG" in status:
        raise HostError("pull", f"{what}: BAD signature by key {status['BADSIG'][0]}: the checksum file was "
                                "changed after it was signed")
    if "NO_PUBKEY" in status or "ERRSIG" in status:
        key = (status.get("NO_PUBKEY") or status["ERRSIG"])[0]
        raise HostError("pull", f"{what}: signed by key {key}, which is not in the keyring {ring}")
    for word, meaning in (("EXPKEYSIG", "an expired key"), ("REVKEYSIG", "a revoked key"),
                          ("EXPSIG", "a signature that has expired")):
        if word in status:
            raise HostError("pull", f"{what}: signed with {meaning} ({status[word][0]}); not trusted")
    if "NODATA" in status or ("VALIDSIG" not in status and done.returncode != 0):
        raise HostError("pull", f"{what}: no OpenPGP signature in it" + (" (not a clear-signed file)" if clear else ""))
    if done.returncode != 0 or "VALIDSIG" not in status:
        raise HostError("pull", f"{what}: gpgv did not accept it: {shown(_last(done.stderr))}")
    return status["VALIDSIG"][-1]   # the primary key's fingerprint, as a keyring lists it


def _last(text: str) -> str:
    return (text.strip().splitlines() or ["no message"])[-1]
