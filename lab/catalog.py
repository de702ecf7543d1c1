"""The catalog of published cloud images (images/catalog.toml), and pulling one into the cache.

Part of stage 1, image. A pull is resumable (HTTP Range on a .part file), verified against a pinned
digest or the project's checksum file, signed or not (lab/checksums.py), before anything counts as
cached, and safe when two run at once (an flock on the image's cache folder: the second waits, then
finds it done). A verified download is then inspected with qemu-img: a checksum says the bytes are
the published ones, not that the image stands alone.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from . import checksums, paths
from .errors import HostError, InputError, shown, shown_path
from .guest import Guest

KEYS = {"url", "sha256", "checksum_url", "checksum_entry", "checksum_algo", "checksum_signature", "checksum_keyring",
        "family", "kdump", "user", "crashkernel", "packages"}
FAMILIES = {"rhel": "dracut-kdump", "debian": "kdump-tools"}
# A published image boots through its own bootloader, so crashkernel= can only go in through it.
CRASHKERNEL_WAYS = ("grub-reboot",)
CHUNK = 1 << 20
# A catalog name names the image's cache folder and is a --image value: no "/", no "..", no leading dot.
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
URL = re.compile(r"https?://[\x21-\x7e]+")   # printable ASCII without spaces: no newline gets into a request
QCOW2_MAGIC = b"QFI\xfb"


@dataclass(frozen=True)
class Entry:
    name: str
    url: str
    family: str
    kdump: str
    user: str
    crashkernel: str
    sha256: str | None = None
    checksum_url: str | None = None
    checksum_entry: str | None = None
    checksum_algo: str = "sha256"
    checksum_signature: str | None = None   # a detached signature's URL, or "clearsigned"
    checksum_keyring: str | None = None     # the keyring file on this host that must have made it
    packages: tuple[str, ...] = ()   # installed by cloud-init on the first boot (needs a network)

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def guest(self) -> Guest:
        return Guest(flavour=self.kdump, crashkernel=self.crashkernel, packages=self.packages)


def catalog_path() -> Path:
    return Path(os.environ.get("LAB_CATALOG") or paths.IMAGES / "catalog.toml")


def load(path: Path | None = None) -> dict[str, Entry]:
    path = path or catalog_path()
    file = shown_path(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))   # TOML is UTF-8, whatever the locale
    except OSError as exc:
        raise InputError("catalog", f"cannot read {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError("catalog", f"{file}: not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}): "
                                    "a catalog is TOML") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError("catalog", f"{file}: malformed TOML: {exc}") from None
    except RecursionError:   # tomllib recurses once per nested array or inline table
        raise InputError("catalog", f"{file}: malformed TOML: arrays or tables nested too deeply") from None
    entries = {}
    for name, raw in data.items():
        if not NAME.fullmatch(name) or ".." in name:
            raise InputError("catalog", f"{file}: [{shown(name)}]: a catalog name is 1 to 64 lowercase letters, digits, "
                                        "dots, dashes and underscores, without '..' (it names a cache folder)")
        where = f"{file}: [{name}]"
        if not isinstance(raw, dict):
            raise InputError("catalog", f"{where}: expected a table")
        unknown = sorted(set(raw) - KEYS)
        if unknown:
            raise InputError("catalog", f"{where}: unknown key {shown(unknown[0])}")
        for key in ("url", "family", "kdump", "user", "crashkernel"):
            if key not in raw:
                raise InputError("catalog", f"{where}: missing key {key!r}")
        for key in sorted(set(raw) - {"packages"}):
            if not isinstance(raw[key], str):
                raise InputError("catalog", f"{where}: {key} = {shown(raw[key])}: expected a string")
        if raw["family"] not in FAMILIES:
            raise InputError("catalog", f"{where}: family {shown(raw['family'])} is not one of {', '.join(FAMILIES)}")
        if raw["kdump"] != FAMILIES[raw["family"]]:
            raise InputError("catalog", f"{where}: kdump {shown(raw['kdump'])} does not go with family {raw['family']}")
        if not raw.get("sha256") and not (raw.get("checksum_url") and raw.get("checksum_entry")):
            raise InputError("catalog", f"{where}: needs sha256, or checksum_url and checksum_entry")
        _check_signature(raw, where)
        if raw.get("checksum_algo", "sha256") not in ("sha256", "sha512"):
            raise InputError("catalog", f"{where}: checksum_algo must be sha256 or sha512")
        if raw["crashkernel"] not in CRASHKERNEL_WAYS:
            raise InputError("catalog", f"{where}: crashkernel {shown(raw['crashkernel'])} is not one of "
                                        f"{', '.join(CRASHKERNEL_WAYS)}")
        packages = raw.get("packages", [])
        if not isinstance(packages, list) or not all(isinstance(p, str) and re.fullmatch(r"[\w.+-]+", p) for p in packages):
            raise InputError("catalog", f"{where}: packages must be a list of package names")
        for key in ("url", "checksum_url"):
            if key in raw and not URL.fullmatch(raw[key]):
                raise InputError("catalog", f"{where}: {key} must be http(s), without spaces or control characters")
        if not raw.get("sha256"):
            # The digest then comes from the checksum file: over plain http, whoever can change the image
            # on the way can change the checksum file too.
            plain = [key for key in ("url", "checksum_url") if raw[key].startswith("http://")]
            if plain:
                raise InputError("catalog", f"{where}: {plain[0]} is plain http: pin the image's sha256 in the "
                                            "catalog (a checksum file fetched over http proves nothing)")
        elif not re.fullmatch(r"[0-9a-fA-F]{64}", raw["sha256"]):
            raise InputError("catalog", f"{where}: sha256 must be 64 hex digits")
        e = Entry(name=name, **{**raw, "packages": tuple(packages)})
        if e.filename in ("", ".", "..") or "/" in e.filename or len(e.filename) > 200:
            raise InputError("catalog", f"{where}: url must end in a file name (the image's name in the cache)")
        entries[name] = e
    return entries


def _check_signature(raw: dict, where: str) -> None:
    sig, ring = raw.get("checksum_signature"), raw.get("checksum_keyring")
    if sig is None and ring is None:
        return
    if not (sig and ring):
        raise InputError("catalog", f"{where}: checksum_signature and checksum_keyring go together (a signature "
                                    "counts only against a keyring)")
    if raw.get("sha256") or not raw.get("checksum_url"):
        raise InputError("catalog", f"{where}: checksum_signature needs checksum_url, without a pinned sha256 "
                                    "(a pinned digest is used as it is)")
    if sig != checksums.CLEARSIGNED and not URL.fullmatch(sig):
        raise InputError("catalog", f"{where}: checksum_signature must be the signature's http(s) URL, or "
                                    f"{checksums.CLEARSIGNED!r} when checksum_url carries its own signature")
    # A key fetched from the image's server would vouch for whatever that server sends: a path only.
    if not ring.startswith("/") or not ring.isprintable():
        raise InputError("catalog", f"{where}: checksum_keyring must be the absolute path of a keyring file on "
                                    "this host (installed by make setup), not a URL")


def entry(name: str) -> Entry:
    entries = load()
    if name not in entries:
        raise InputError("image", f"unknown image {name!r} (catalog: {', '.join(entries)})")
    return entries[name]


def digest_of(e: Entry) -> str | None:
    """The verified digest of the cached image (what a run's image key is made from)."""
    return _marker(e)[0].split()[-1] if cached(e) else None


def checked_of(e: Entry) -> str:
    """What the cached image's digest was checked against; before it is pulled, what it will be."""
    if cached(e):
        lines = _marker(e)
        return lines[1] if len(lines) > 1 else "not recorded (pulled by an older lab)"
    if e.sha256:
        return checksums.PINNED
    return "a signed checksum file" if e.checksum_signature else checksums.UNSIGNED


def _marker(e: Entry) -> list[str]:
    # "ALGO DIGEST", then what vouched for the digest
    return (_folder(e.name) / f"{e.filename}.verified").read_text().splitlines()


def _folder(name: str) -> Path:
    return paths.cache_dir() / "cloud" / name


def cached(e: Entry) -> Path | None:
    """The verified image, if it is in the cache: a digest file is written only after verification."""
    image = _folder(e.name) / e.filename
    return image if image.exists() and (_folder(e.name) / f"{e.filename}.verified").exists() else None


class Progress:
    """One status line on stderr: a bar on a terminal, a line every 10 % otherwise."""

    def __init__(self, name: str, total: int | None, done: int, out=sys.stderr):
        self.name, self.total, self.done, self.out = name, total, done, out
        self.started, self.start_bytes = time.monotonic(), done
        self.tty = out.isatty()
        self._last_shown = 0.0
        self._last_decile = -1

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and now - self._last_shown < 0.2:
            return
        self._last_shown = now
        rate = (self.done - self.start_bytes) / max(now - self.started, 1e-6) / 2**20
        if self.total:
            share = self.done / self.total
            if self.tty:
                bar = "#" * int(share * 30)
                self.out.write(f"\rpull {self.name}: [{bar:<30}] {share:6.1%} {self.done / 2**20:8.1f} MiB {rate:6.1f} MiB/s")
                self.out.flush()
            elif int(share * 10) > self._last_decile:
                self._last_decile = int(share * 10)
                print(f"pull {self.name}: {share:.0%} of {self.total / 2**20:.1f} MiB ({rate:.1f} MiB/s)", file=self.out, flush=True)
        elif self.tty:
            self.out.write(f"\rpull {self.name}: {self.done / 2**20:8.1f} MiB {rate:6.1f} MiB/s")
            self.out.flush()

    def finish(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def inspect(path: Path) -> None:
    """Refuse an image a checksum cannot vouch for: one that makes QEMU open another file when a run
    boots it (a backing file, or a qcow2 external data file: either can be any path on the host), or a
    format other than qcow2 (runs put a qcow2 overlay on it). Raises HostError with the reason."""
    with path.open("rb") as f:
        if f.read(4) != QCOW2_MAGIC:
            # Checked here rather than by qemu-img's probing: a probed vmdk or raw descriptor can name other files.
            raise HostError("pull", "not a qcow2 image (runs put a qcow2 overlay on it)")
    try:
        done = subprocess.run(["qemu-img", "info", "-f", "qcow2", "--output=json", str(path)],
                              capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise HostError("pull", "qemu-img not installed (make setup): a download is inspected with it") from None
    except subprocess.TimeoutExpired:
        raise HostError("pull", "qemu-img info gave no answer in 120 s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise HostError("pull", f"qemu-img info cannot read it: {shown(last)}")
    try:
        info = json.loads(done.stdout)
    except ValueError:
        raise HostError("pull", "qemu-img info gave no JSON") from None
    if info.get("format") != "qcow2":
        raise HostError("pull", f"format {shown(info.get('format'))}, not qcow2 (runs put a qcow2 overlay on it)")
    if "backing-filename" in info or "full-backing-filename" in info:
        backing = info.get("backing-filename", info.get("full-backing-filename"))
        raise HostError("pull", f"it has a backing file ({shown(backing)}): a published image must stand alone")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if "data-file" in specific:
        data_file = specific["data-file"]
        raise HostError("pull", f"it keeps its data in an external file ({shown(data_file)}): "
                                "a published image must stand alone")


def pull(name: str, log=sys.stderr) -> Path:
    """Download, resume, verify and inspect one catalog image; return the cached file."""
    e = entry(name)
    if not cached(e) and not shutil.which("qemu-img"):   # before a byte is fetched: the download needs it
        raise HostError("pull", "qemu-img not installed (make setup): a download is inspected with it")
    algo = "sha256" if e.sha256 else e.checksum_algo   # a pinned digest is a sha256 whatever checksum_algo says
    paths.owned_cache()   # the cache carries the lab's mark before anything is written into it
    folder = _folder(name)
    folder.mkdir(parents=True, exist_ok=True)
    with paths.locked(folder):
        done = cached(e)
        if done:
            return done
        try:
            want, how = checksums.expected(e)
        except HostError as exc:
            raise HostError("pull", f"{exc.message}; nothing was downloaded or cached") from None
        part = folder / f"{e.filename}.part"
        digest = hashlib.new(algo)
        have = part.stat().st_size if part.exists() else 0
        if have:   # resume: the bytes already on disk go into the digest first
            with part.open("rb") as f:
                while block := f.read(CHUNK):
                    digest.update(block)
        response = checksums.fetch(e.url, have)
        if have and response.status != 206:   # the server ignored the range: start over
            have, digest = 0, hashlib.new(algo)
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        progress = Progress(name, total, have, log)
        if have:
            print(f"pull {name}: resuming at {have / 2**20:.1f} MiB", file=log, flush=True)
        import http.client   # here: every CLI call imports this module, few download
        try:
            with response, part.open("ab" if have else "wb") as out:
                while block := response.read(CHUNK):
                    out.write(block)
                    digest.update(block)
                    progress.add(len(block))
        except (OSError, http.client.HTTPException) as exc:   # a dropped connection keeps the .part to resume
            raise HostError("pull", f"{e.url}: download interrupted at {progress.done} bytes ({exc}); "
                                    "pull again to resume") from None
        finally:
            progress.finish()
        if total is not None and progress.done != total:
            raise HostError("pull", f"{e.url}: download interrupted at {progress.done} of {total} bytes; "
                                    "pull again to resume")
        got = digest.hexdigest()
        if got != want:
            part.unlink()
            raise HostError("pull", f"{name}: {algo} mismatch (expected {want[:16]}…, got {got[:16]}…); "
                                    "the download was removed, nothing cached")
        try:
            inspect(part)
        except HostError as exc:   # nothing half-trusted stays in the cache
            part.unlink()
            raise HostError("pull", f"{name}: {exc.message}; the download was removed, nothing cached") from None
        final = folder / e.filename
        part.chmod(0o444)   # a base image: runs write to overlays only
        part.replace(final)
        (folder / f"{e.filename}.verified").write_text(f"{algo} {got}\n{how}\n")
        print(f"pull {name}: verified ({algo}) against {how}, cached at {final}", file=log, flush=True)
        return final


def partial_downloads() -> list[Path]:
    """What failed pulls left that no pull is working on (a pull holds its folder's lock): .part files,
    kept to resume until `lab clean`, and image folders a pull made but never got a byte into."""
    found = []
    for folder in sorted((paths.cache_dir() / "cloud").glob("*")):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        finally:
            os.close(fd)
        found += sorted(folder.glob("*.part")) or ([folder] if not any(folder.iterdir()) else [])
    return found


def listing() -> list[dict]:
    rows = []
    for e in load().values():
        image = cached(e)
        part = _folder(e.name) / f"{e.filename}.part"
        rows.append({"name": e.name, "family": e.family, "kdump": e.kdump, "cached": bool(image),
                     "size_bytes": image.stat().st_size if image else 0,
                     "partial_bytes": part.stat().st_size if part.exists() else 0, "url": e.url,
                     "checked": checked_of(e)})
    return rows
