"""Stage 1, image: the guest's base disk (with kernel and initrd for a direct kernel boot), either built
offline and cached by recipe hash, or a published cloud image pulled from the catalog."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from . import catalog, paths
from .archive import Archive
from .errors import HostError, InputError
from .guest import OFFLINE_DEBIAN, Guest


@dataclass(frozen=True)
class Recipe:
    """A guest the lab builds offline: a recipe folder (its build.sh) and the Debian release it installs."""
    directory: Path
    suite: str
    guest: Guest = OFFLINE_DEBIAN


def _releases() -> dict[str, Recipe]:
    """images/releases.toml: every Debian release, built by the one recipe in images/debian/."""
    table = tomllib.loads((paths.IMAGES / "releases.toml").read_text())
    return {name: Recipe(paths.IMAGES / "debian", release["suite"],
                         Guest(kdump_append=release["kdump_append"], getty_logs_in=True))
            for name, release in table.items()}


RECIPES = _releases()
DEFAULT = "debian12"
BUILD_TOOLS = ("mmdebstrap", "mkfs.ext4", "qemu-img", "sfdisk")


@dataclass(frozen=True)
class Image:
    name: str
    key: str
    disk: Path
    kernel: Path | None             # None: the guest boots from its disk, through its own bootloader
    initrd: Path | None
    kernel_version: str
    guest: Guest = OFFLINE_DEBIAN   # its kdump tooling and how crashkernel= is set
    kernel_source: str = ""         # the kernel asked for (a scenario's `kernel`); "" is the recipe's own
    checked: str = ""               # a published image: what its digest was checked against

    @property
    def boots_from_disk(self) -> bool:
        return self.kernel is None


def recipe_key(name: str) -> str:
    """Hash of every file of the recipe and of its release: change one and the image is rebuilt."""
    recipe = RECIPES[name]
    digest = hashlib.sha256(f"{recipe.suite}\0{recipe.guest.kdump_append}\0".encode())
    for path in sorted(p for p in recipe.directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(recipe.directory).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


# A scenario's `kernel`: "" (the recipe's own), SUITE/PACKAGE from Debian's archive, or a local .deb.
ARCHIVE_KERNEL = re.compile(r"(?P<suite>[a-z][a-z0-9-]*)/(?P<package>linux-image-[a-z0-9][a-z0-9.+~-]*)")


def check_kernel(kernel: str) -> str | None:
    """What is wrong with a scenario's `kernel`, or None."""
    if not kernel or ARCHIVE_KERNEL.fullmatch(kernel):
        return None
    if not kernel.endswith(".deb"):
        return (f"kernel={kernel!r}: expected SUITE/PACKAGE (e.g. bookworm-backports/linux-image-amd64) "
                "or the path of a .deb")
    deb = Path(kernel)
    if not deb.is_absolute():
        return f"kernel={kernel!r}: give the .deb's absolute path"
    try:
        with deb.open("rb") as f:
            magic = f.read(8)
    except OSError as exc:
        return f"kernel={kernel!r}: cannot read it ({exc.strerror})"
    if magic != b"!<arch>\n":
        return f"kernel={kernel!r} is not a Debian package (no ar archive header)"
    seen = deb.stat()
    return _deb_is_a_kernel(kernel, seen.st_size, seen.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _deb_is_a_kernel(path: str, size: int, mtime_ns: int) -> str | None:
    """What dpkg-deb says the package is, if it is not an amd64 kernel image (linux-image-*)."""
    try:
        done = subprocess.run(["dpkg-deb", "--field", path, "Package", "Architecture"], capture_output=True,
                              text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return f"kernel={path!r}: dpkg-deb could not read it ({exc.__class__.__name__})"
    fields = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    if done.returncode != 0 or "Package" not in fields:
        said = done.stderr.strip().splitlines()
        return f"kernel={path!r}: dpkg-deb cannot read it ({said[-1] if said else 'no control fields'})"
    if not fields["Package"].startswith("linux-image-"):
        return f"kernel={path!r} is the package {fields['Package']!r}, not a kernel image (linux-image-*)"
    if fields.get("Architecture") != "amd64":
        return f"kernel={path!r} is built for {fields.get('Architecture')!r}; the guest is amd64"
    return None


def check_in_archive(name: str, kernel: str, log=sys.stderr) -> None:
    """A SUITE/PACKAGE kernel not built yet is looked up in Debian's archive first (apt, 10-20 s): one that
    is not there is refused before anything starts, not after minutes of building."""
    archive = ARCHIVE_KERNEL.fullmatch(kernel)
    if not archive or name not in RECIPES or cached(name, kernel):
        return
    print(f"image: looking up {kernel} in Debian's archive", file=log, flush=True)
    with Archive([archive["suite"]], "scenario", "kernel") as found:
        found.size_of(archive["package"])


def _kernel_identity(kernel: str) -> str:
    """What keys a derived image: the archive spec as written, or the .deb's digest (not its path)."""
    if not kernel.endswith(".deb"):
        return kernel
    try:
        seen = os.stat(kernel)
    except OSError as exc:
        raise InputError("image", f"kernel={kernel!r}: cannot read it ({exc.strerror})") from None
    return "deb:" + _deb_digest(kernel, seen.st_size, seen.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _deb_digest(path: str, size: int, mtime_ns: int) -> str:
    """Hashed once per file version: a batch looks the image up for itself and again for each run."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError as exc:
        raise InputError("image", f"kernel={path!r}: cannot read it ({exc.strerror})") from None
    return digest.hexdigest()


def image_key(name: str, kernel: str = "") -> str:
    """The recipe's hash; with another kernel, the hash of both (a derived image of the same recipe)."""
    key = recipe_key(name)
    if not kernel:
        return key
    return hashlib.sha256(f"{key}\0{_kernel_identity(kernel)}".encode()).hexdigest()[:16]


def _image_dir(name: str, key: str) -> Path:
    return paths.cache_dir() / "images" / f"{name}-{key}"


def _load(name: str, key: str) -> Image | None:
    where = _image_dir(name, key)
    manifest = where / "manifest.json"
    if not manifest.exists():
        return None
    data = json.loads(manifest.read_text())
    if where.stat().st_mode & 0o005 != 0o005:   # built before QEMU ran as libvirt's user (then 0700)
        where.chmod(0o755)
    return Image(name, key, where / "disk.qcow2", where / "vmlinuz", where / "initrd.img", data["kernel_version"],
                 RECIPES[name].guest, data.get("kernel_source", ""))


def known() -> list[str]:
    return [*RECIPES, *catalog.load()]


def _published(e, path: Path) -> Image:
    with path.open("rb") as f:
        if f.read(4) != b"QFI\xfb":   # overlays are made with a qcow2 backing file
            raise HostError("image", f"{e.name}: {path} is not a qcow2 image")
    return Image(e.name, catalog.digest_of(e)[:16], path, None, None, "", e.guest, checked=catalog.checked_of(e))


def cached(name: str, kernel: str = "") -> Image | None:
    if name not in RECIPES:
        entries = catalog.load()
        if name not in entries:
            raise InputError("image", f"unknown image {name!r} (known: {', '.join([*RECIPES, *entries])})")
        path = catalog.cached(entries[name])
        return _published(entries[name], path) if path else None
    return _load(name, image_key(name, kernel))


def planned(name: str, kernel: str = "") -> Image:
    """The image as it will be once built or pulled (its paths, for a dry run): nothing is made."""
    if name in RECIPES:
        key = image_key(name, kernel)
        where = _image_dir(name, key)
        return Image(name, key, where / "disk.qcow2", where / "vmlinuz", where / "initrd.img", "", RECIPES[name].guest,
                     kernel)
    e = catalog.entry(name)
    return Image(e.name, (e.sha256 or "unpinned")[:16], paths.cache_dir() / "cloud" / e.name / e.filename, None, None, "",
                 e.guest)


def ensure(name: str, log=sys.stderr, kernel: str = "") -> Image:
    """Return the cached image: built once (under a lock) if its recipe is new, or pulled if it is a
    published image not in the cache yet. With `kernel`, the recipe's image with that kernel instead of
    its own (built the same way, so the kdump initrd and the disk drivers come along), cached apart."""
    image = cached(name, kernel)
    if image:
        return image
    if name not in RECIPES:
        print(f"image: {name} is not in the cache; pulling it", file=log, flush=True)
        return _published(catalog.entry(name), catalog.pull(name, log=log))
    missing = [tool for tool in BUILD_TOOLS if not shutil.which(tool)]
    if missing:
        raise HostError("image", f"cannot build {name}: {', '.join(missing)} not installed (make setup)")
    key = image_key(name, kernel)
    root = paths.owned_cache() / "images"
    root.mkdir(exist_ok=True)
    root.chmod(0o755)   # whatever root's umask: QEMU's user passes through to the images
    # The lock is the images folder itself: no lock file is left behind.
    with paths.locked(root):
        image = _load(name, key)  # another process may have built it while we waited
        if image:
            return image
        started = time.monotonic()
        with_kernel = f" with kernel {kernel}" if kernel else ""
        print(f"image: building {name}{with_kernel} ({key}); about 2 minutes", file=log, flush=True)
        # The owner's pid is in the name from the first moment: a concurrent `lab clean` leaves it alone.
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-build-{os.getpid()}-", dir=root))
        try:
            _build(name, tmp, log, kernel)
            version = (tmp / "kernel-version").read_text().strip()
            (tmp / "manifest.json").write_text(json.dumps({
                "name": name, "key": key, "kernel_version": version, "kernel_source": kernel,
                "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build_seconds": round(time.monotonic() - started, 1),
            }, indent=2))
            (tmp / BUILDER).unlink()
            tmp.chmod(0o755)   # QEMU runs as libvirt's user: it reads the disk, kernel and initrd
            tmp.rename(_image_dir(name, key))
        finally:
            if tmp.exists():
                remove_build(tmp)
        print(f"image: {name} ready in {time.monotonic() - started:.0f} s", file=log, flush=True)
        return _load(name, key)


BUILDER = "builder.json"   # in a build folder: who builds it (lab pid) and the builder's process group


def _build(name: str, tmp: Path, log, kernel: str = "") -> None:
    # Its own session: on any way out, the whole builder (mmdebstrap and its apt/dpkg) is stopped, not
    # just build.sh; and `lab clean` can stop it after the lab was killed with -9.
    recipe = RECIPES[name]
    env = dict(os.environ, LAB_SUITE=recipe.suite, LAB_KDUMP_APPEND=recipe.guest.kdump_append)
    archive = ARCHIVE_KERNEL.fullmatch(kernel)
    if archive:   # apt's PACKAGE/SUITE: that suite's package, and from it whatever the package needs
        env.update(LAB_KERNEL_SUITE=archive["suite"], LAB_KERNEL_INCLUDE=f"{archive['package']}/{archive['suite']}")
    elif kernel:
        env.update(LAB_KERNEL_INCLUDE=kernel)
    proc = subprocess.Popen([str(recipe.directory / "build.sh"), str(tmp)], stdout=log, stderr=log,
                            start_new_session=True, env=env)
    (tmp / BUILDER).write_text(json.dumps({"owner": os.getpid(), "pgid": proc.pid}))
    try:
        code = proc.wait()
    except BaseException:
        stop_builder(proc.pid)
        raise
    if code != 0:
        raise HostError("image", f"building {name} failed (exit {code}); see the output above")


def stop_builder(pgid: int, grace: float = 30.0) -> None:
    """SIGTERM a builder's process group (mmdebstrap then unmounts what it mounted), SIGKILL if it stays."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def remove_build(tmp: Path) -> None:
    """Remove an unfinished build folder; never rmtree across a mount point a killed builder left."""
    for point in _mounts_under(tmp):
        subprocess.run(["umount", "--lazy", point], capture_output=True)
    left = _mounts_under(tmp)
    if left:
        raise HostError("image", f"{tmp} still has mounts ({', '.join(left)}); not removing it")
    shutil.rmtree(tmp, ignore_errors=True)


def interrupted_builds() -> list[tuple[Path, int, int]]:
    """Build folders whose builder is no longer driven by a live lab: (folder, owner pid, pgid)."""
    root = paths.cache_dir() / "images"
    found = []
    for tmp in sorted(root.glob(".*-build-*")) if root.exists() else []:
        try:
            info = json.loads((tmp / BUILDER).read_text())
        except (OSError, ValueError):
            info = {}
        named = tmp.name.split("-build-", 1)[1].split("-", 1)[0]
        owner = int(info.get("owner") or (named if named.isdigit() else 0))
        if owner:   # a folder without an owner in its name or file is not one the lab made: left alone
            found.append((tmp, owner, int(info.get("pgid", 0))))
    return found


def listing() -> list[dict]:
    rows = []
    for name in RECIPES:
        image = cached(name)
        size = image.disk.stat().st_size if image else 0
        rows.append({"name": name, "key": recipe_key(name), "cached": bool(image),
                     "disk": str(image.disk) if image else None, "size_bytes": size})
    return rows


def pull(name: str, log=sys.stderr) -> Path:
    """A published image into the cache (resumable, verified): `lab images pull`."""
    return catalog.pull(name, log=log)


def published_listing() -> list[dict]:
    return catalog.listing()
