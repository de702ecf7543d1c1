"""The crashed kernel's debug symbols, for `lab vmcore --debuginfo`: Debian's linux-image-RELEASE-dbg
package, fetched by apt from Debian's archive (its signatures checked against the host's Debian
keyring) and cached with only its vmlinux kept; then the crashed task's backtrace, read from the vmcore
with drgn."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import image, paths
from .errors import HostError, InputError

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
RELEASE = re.compile(r"[0-9][A-Za-z0-9.+~_-]*")
STEP_SECONDS = 1800   # apt's download of a 0.9-1 GB package, or its unpacking (about 1 min here)


def _suites(report: dict) -> list[str]:
    """The archive suites the run's kernel came from: the recipe's release, and a SUITE/PACKAGE kernel's suite."""
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
    return list(dict.fromkeys([recipe.suite, *([archive["suite"]] if archive else [])]))


def _sources(suites: list[str]) -> str:
    mirror = os.environ.get("LAB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    security = os.environ.get("LAB_DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
    lines = []
    for suite in suites:
        pockets = [(mirror, suite)] if "-" in suite else [(mirror, suite), (mirror, f"{suite}-updates"),
                                                          (security, f"{suite}-security")]
        lines += [f"deb [signed-by={KEYRING}] {where} {pocket} main" for where, pocket in pockets]
    return "\n".join(lines) + "\n"


def _apt(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """apt-get with its own sources, lists and cache in `tmp`: the host's apt state is neither read nor changed."""
    opts = {"Dir::Etc::SourceList": tmp / "sources.list", "Dir::Etc::SourceParts": tmp / "sources.list.d",
            "Dir::State::Lists": tmp / "lists", "Dir::Cache": tmp / "cache", "Debug::NoLocking": "true",
            "Acquire::Check-Valid-Until": "false", "APT::Get::List-Cleanup": "false", "quiet": "1"}
    argv = ["apt-get", *[a for k, v in opts.items() for a in ("-o", f"{k}={v}")], *args]
    try:
        return subprocess.run(argv, cwd=tmp, capture_output=True, text=True, timeout=STEP_SECONDS)
    except FileNotFoundError:
        raise HostError("vmcore", "apt-get is not installed: --debuginfo fetches Debian's packages with it") from None
    except subprocess.TimeoutExpired:
        raise HostError("vmcore", f"apt-get {args[0]} took longer than {STEP_SECONDS} s") from None


def _said(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.startswith(("E:", "W:"))]
    return (lines[0] if lines else (done.stderr.strip().splitlines() or ["no output"])[-1]).strip()


def vmlinux_for(report: dict, log=sys.stderr) -> Path:
    """The vmlinux (with debug info) of the kernel that crashed in this run: from the cache, or fetched once."""
    img = report.get("image") or {}
    release = img.get("kernel_booted") or img.get("kernel") or ""
    if not RELEASE.fullmatch(release):
        raise InputError("vmcore", f"the run's report names no kernel release ({release!r}): give --vmlinux PATH")
    suites = _suites(report)
    root = paths.owned_cache() / "debuginfo"
    root.mkdir(exist_ok=True)
    final = root / release / "vmlinux"
    if final.exists():
        return final
    with paths.locked(root):
        if final.exists():   # fetched by another invocation while this one waited
            return final
        package = f"linux-image-{release}-dbg"
        # The owner's pid is in the name: `lab clean` removes it once that process is gone.
        tmp = Path(tempfile.mkdtemp(prefix=f".{release}-fetch-{os.getpid()}-", dir=root))
        try:
            (tmp / "sources.list").write_text(_sources(suites))
            for sub in ("sources.list.d", "lists/partial", "cache/archives/partial", "unpacked"):
                (tmp / sub).mkdir(parents=True)
            print(f"debuginfo: looking for {package} in {', '.join(suites)} (Debian's archive)", file=log, flush=True)
            done = _apt(tmp, "update")
            if done.returncode != 0:
                raise HostError("vmcore", f"apt-get update for {', '.join(suites)} failed: {_said(done)}")
            uris = _apt(tmp, "download", "--print-uris", package)
            if uris.returncode != 0:
                raise InputError("vmcore", f"{package} is not in {', '.join(suites)}: {_said(uris)}")
            size = next((int(w) for line in uris.stdout.splitlines() for w in line.split()[2:3] if w.isdigit()), 0)
            print(f"debuginfo: fetching {package} ({size / 2**20:.0f} MiB) and keeping its vmlinux; "
                  "a few minutes, once per kernel", file=log, flush=True)
            done = _apt(tmp, "download", package)
            debs = sorted(tmp.glob("*.deb"))
            if done.returncode != 0 or not debs:
                raise HostError("vmcore", f"apt-get download {package} failed: {_said(done)}")
            _unpack_vmlinux(debs[0], release, tmp / "unpacked")
            (tmp / release).mkdir()
            (tmp / "unpacked" / "usr/lib/debug/boot" / f"vmlinux-{release}").rename(tmp / release / "vmlinux")
            (tmp / release).rename(root / release)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
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
