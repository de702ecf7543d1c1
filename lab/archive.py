"""Debian's archive through apt, with its own sources, lists and cache in a scratch folder: the host's
apt state is neither read nor changed, and the Release files' signatures are checked against the host's
Debian keyring. Used to look a kernel package up before an image is built for it, and to fetch debug
symbols."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import paths
from .errors import HostError, InputError

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
STEP_SECONDS = 1800   # apt's download of a 0.9-1 GB package, or unpacking one


def release_pockets(suite: str) -> list[str]:
    """A stable release as the image recipe installs it: the suite, its -updates and its -security."""
    return [suite, f"{suite}-updates", f"{suite}-security"]


def sources(pockets: list[str]) -> str:
    """sources.list lines for the given suites (a -security one from the security mirror)."""
    mirror = os.environ.get("LAB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    security = os.environ.get("LAB_DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
    return "".join(f"deb [signed-by={KEYRING}] {security if pocket.endswith('-security') else mirror} {pocket} main\n"
                   for pocket in pockets)


def scratch_root() -> Path:
    """Where apt's scratch folders go: in the lab's cache (a fetched file is then renamed into place)."""
    root = paths.owned_cache() / "archive"
    root.mkdir(exist_ok=True)
    return root


class Archive:
    """apt on the given suites (pockets), in a scratch folder of its own (removed on exit); errors name `stage`."""

    def __init__(self, pockets: list[str], stage: str, what: str):
        self.pockets, self.stage, self.what = list(dict.fromkeys(pockets)), stage, what

    def __enter__(self) -> "Archive":
        # The owner's pid is in the name: `lab clean` removes it once that process is gone.
        self.dir = Path(tempfile.mkdtemp(prefix=f".{self.what}-fetch-{os.getpid()}-", dir=scratch_root()))
        try:
            (self.dir / "sources.list").write_text(sources(self.pockets))
            for sub in ("sources.list.d", "lists/partial", "cache/archives/partial"):
                (self.dir / sub).mkdir(parents=True)
            done = self._apt("update")
            if done.returncode != 0:
                raise HostError(self.stage, f"apt-get update for {', '.join(self.pockets)} failed: {_said(done)}")
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _apt(self, *args: str) -> subprocess.CompletedProcess:
        opts = {"Dir::Etc::SourceList": self.dir / "sources.list", "Dir::Etc::SourceParts": self.dir / "sources.list.d",
                "Dir::State::Lists": self.dir / "lists", "Dir::Cache": self.dir / "cache", "Debug::NoLocking": "true",
                "Acquire::Check-Valid-Until": "false", "APT::Get::List-Cleanup": "false", "quiet": "1"}
        argv = ["apt-get", *[a for k, v in opts.items() for a in ("-o", f"{k}={v}")], *args]
        try:
            return subprocess.run(argv, cwd=self.dir, capture_output=True, text=True, timeout=STEP_SECONDS)
        except FileNotFoundError:
            raise HostError(self.stage, "apt-get is not installed: Debian's archive is read with it") from None
        except subprocess.TimeoutExpired:
            raise HostError(self.stage, f"apt-get {args[0]} took longer than {STEP_SECONDS} s") from None

    def size_of(self, package: str) -> int:
        """The package's size in bytes; an InputError if no suite has it."""
        done = self._apt("download", "--print-uris", package)
        if done.returncode != 0:
            raise InputError(self.stage, f"{package} is not in {', '.join(self.pockets)} (Debian's archive): {_said(done)}")
        return next((int(w) for line in done.stdout.splitlines() for w in line.split()[2:3] if w.isdigit()), 0)

    def download(self, package: str) -> Path:
        done = self._apt("download", package)
        debs = sorted(self.dir.glob("*.deb"))
        if done.returncode != 0 or not debs:
            raise HostError(self.stage, f"apt-get download {package} failed: {_said(done)}")
        return debs[0]


def _said(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.startswith(("E:", "W:"))]
    return (lines[0] if lines else (done.stderr.strip().splitlines() or ["no output"])[-1]).strip()
