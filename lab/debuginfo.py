"""The crashed kernel's debug symbols, for `lab vmcore --debuginfo`: Debian's linux-image-RELEASE-dbg
package, fetched from Debian's archive (lab/archive.py) and cached with only its vmlinux kept; then the
crashed task's backtrace, read from the vmcore with drgn."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from . import image, paths
from .archive import STEP_SECONDS, Archive, release_pockets
from .errors import HostError, InputError

RELEASE = re.compile(r"[0-9][A-Za-z0-9.+~_-]*")


def booted_release(report: dict) -> str:
    """The kernel release a run booted (read from its console), else the one its image holds; "" if neither."""
    img = report.get("image") or {}
    return img.get("kernel_booted") or img.get("kernel") or ""


def _pockets(report: dict) -> list[str]:
    """Where the run's kernel came from: the recipe's release (as the image installs it), and a
    SUITE/PACKAGE kernel's suite."""
    img = report.get("image") or {}
    recipe = image.RECIPES.get(img.get("name"))
    source = img.get("kernel_source") or ""
    if recipe is None:
        raise InputError("vmcore", f"--debuginfo fetches the symbols of Debian's kernels in the images the lab "
                                   f"builds; {img.get('name')!r} is not one: give the kernel's vmlinux with --vmlinux PATH")
    if source.endswith(".deb"):
        raise InputError("vmcore", f"the kernel came from {source}, not Debian's archive: give its vmlinux "
                                   "(with debug info) with --vmlinux PATH")
    archive = image.ARCHIVE_KERNEL.fullmatch(source)
    return [*release_pockets(recipe.suite), *([archive["suite"]] if archive else [])]


def vmlinux_for(report: dict, log=sys.stderr) -> Path:
    """The vmlinux (with debug info) of the kernel that crashed in this run: from the cache, or fetched once."""
    release = booted_release(report)
    if not RELEASE.fullmatch(release):
        raise InputError("vmcore", f"the run's report names no kernel release ({release!r}): give --vmlinux PATH")
    pockets = _pockets(report)
    root = paths.owned_cache() / "debuginfo"
    root.mkdir(exist_ok=True)
    final = root / release / "vmlinux"
    if final.exists():
        return final
    with paths.locked(root):
        if final.exists():   # fetched by another invocation while this one waited
            return final
        package = f"linux-image-{release}-dbg"
        print(f"debuginfo: looking for {package} in {', '.join(pockets)} (Debian's archive)", file=log, flush=True)
        with Archive(pockets, "vmcore", release) as archive:
            size = archive.size_of(package)
            print(f"debuginfo: fetching {package} ({size / 2**20:.0f} MiB) and keeping its vmlinux; "
                  "a few minutes, once per kernel", file=log, flush=True)
            deb = archive.download(package)
            unpacked = archive.dir / "unpacked"
            unpacked.mkdir()
            _unpack_vmlinux(deb, release, unpacked)
            (archive.dir / release).mkdir()
            (unpacked / "usr/lib/debug/boot" / f"vmlinux-{release}").rename(archive.dir / release / "vmlinux")
            (archive.dir / release).rename(root / release)
        print(f"debuginfo: {final} ({final.stat().st_size / 2**20:.0f} MiB)", file=log, flush=True)
        return final


def _unpack_vmlinux(deb: Path, release: str, into: Path) -> None:
    member = f"./usr/lib/debug/boot/vmlinux-{release}"
    unpack = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        tar = subprocess.run(["tar", "-x", "-C", str(into), member], stdin=unpack.stdout, capture_output=True,
                             timeout=STEP_SECONDS)
    except subprocess.TimeoutExpired:
        raise HostError("vmcore", f"unpacking {deb.name} took longer than {STEP_SECONDS} s") from None
    finally:
        unpack.stdout.close()
        unpack.kill()   # done or not, nothing more is read from it
        unpack_err = unpack.communicate()[1]
    if tar.returncode != 0:
        said = (tar.stderr or unpack_err).decode(errors="replace").strip().splitlines()
        raise HostError("vmcore", f"{deb.name} holds no {member}: {said[-1] if said else 'dpkg-deb/tar failed'}")


def backtrace(vmcore_file: Path, vmlinux: Path, release: str) -> list[str]:
    """The crashed task's stack, unwound by drgn with the vmlinux's symbols (it reads kdump-compressed dumps
    through libkdumpfile)."""
    try:
        import drgn
    except ImportError:
        raise HostError("vmcore", "drgn is not installed (make setup)") from None
    prog = drgn.Program()
    try:
        prog.set_core_dump(str(vmcore_file))
        prog.load_debug_info([str(vmlinux)])
        # The symbols must be this kernel's: read its release through them, from the dump's memory.
        try:
            seen = prog["init_uts_ns"].name.release.string_().decode(errors="replace")
        except (drgn.FaultError, LookupError) as exc:
            raise InputError("vmcore", f"{vmlinux} is not the crashed kernel's ({release}): its symbols do not "
                                       f"fit the dump ({exc})") from None
        if seen != release:
            raise InputError("vmcore", f"{vmlinux} is not the crashed kernel's: the dump says {seen!r} through its "
                                       f"symbols, the run booted {release!r}")
        thread = prog.crashed_thread()
        comm = thread.object.comm.string_().decode(errors="replace")
        trace = str(thread.stack_trace()).splitlines()
    except (drgn.FaultError, drgn.MissingDebugInfoError, LookupError, ValueError, OSError) as exc:
        raise HostError("vmcore", f"drgn could not read {vmcore_file.name} with {vmlinux}: {exc}") from None
    return [f"the crashed task: pid {thread.tid} ({comm}), its stack with {vmlinux}'s symbols (drgn {drgn.__version__}):",
            *trace]
