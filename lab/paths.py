"""Where the lab reads its recipes and writes its cache, runs and artifacts.

Everything the lab may later delete lives in a folder that carries its mark (MARK), and each run's
scratch carries its owner's pid from the moment it appears: `lab clean` deletes nothing else.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import HostError

PROJECT = Path(__file__).resolve().parent.parent
IMAGES = PROJECT / "images"
DOMAINS = PROJECT / "domains"

NAME_PREFIX = "panic-lab-"
METADATA_NS = "https://panic-lab.invalid/run/1"
MARK = ".panic-lab"          # in a folder the lab created: `lab clean` may delete inside it
OWNER = "owner.pid"          # in a run's scratch: the lab process that owns it
NEW_SCRATCH = ".new-"        # a run's scratch while it is being made: .new-<pid>-<random>


# As root, QEMU runs as libvirt's own user (lab/qemu_user.py), which cannot pass /root (0700).
ROOT_CACHE = Path("/var/cache/panic-lab")


def _home_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "panic-lab"


def cache_dir() -> Path:
    if os.environ.get("LAB_CACHE_DIR"):
        return Path(os.environ["LAB_CACHE_DIR"])
    return ROOT_CACHE if os.geteuid() == 0 else _home_cache()


_moved = False


def _move_roots_old_cache_once() -> None:
    """Before QEMU ran unprivileged, root's cache was /root/.cache/panic-lab: the first lab process that
    writes to the cache moves it, if it is the lab's (marked, root's) and no run of it is going (a rename:
    images are gigabytes). A reader (`lab images`, a dry run) moves nothing."""
    global _moved
    if _moved:
        return
    _moved = True
    old = Path(pwd.getpwuid(0).pw_dir) / ".cache" / "panic-lab"   # root's own, whatever HOME a sudo kept
    if not is_marked(old) or old.stat().st_uid != 0:
        return
    runs = old / "runs"
    if ROOT_CACHE.exists() or (runs.is_dir() and any(owner_alive(scratch_owner(e) or 0) for e in runs.iterdir())):
        why = f"{ROOT_CACHE} exists" if ROOT_CACHE.exists() else "a run of it is still going"
        print(f"cache: {old} is no longer used and was not moved ({why}); the cache is {ROOT_CACHE}",
              file=sys.stderr, flush=True)
        return
    try:
        ROOT_CACHE.parent.mkdir(parents=True, exist_ok=True)
        os.rename(old, ROOT_CACHE)
        os.chmod(ROOT_CACHE, 0o755)
        for seed in ROOT_CACHE.glob("snapshots/*/seed.iso"):   # 0644 was safe under /root: not here
            os.chmod(seed, 0o400)
        print(f"cache: moved {old} to {ROOT_CACHE} (QEMU now runs as libvirt's unprivileged user, "
              "which cannot read under /root)", file=sys.stderr, flush=True)
    except OSError as exc:
        print(f"cache: {old} is no longer used, and could not be moved to {ROOT_CACHE} ({exc.strerror}); "
              "move it there by hand, or remove it", file=sys.stderr, flush=True)


def work_dir() -> Path:
    """Per-run scratch (overlays, seeds): removed when the run ends. LAB_WORK_DIR puts it elsewhere
    (a Gen1 run copies the whole disk: about 1.3 GB), in a folder of its own that the lab creates there."""
    base = os.environ.get("LAB_WORK_DIR")
    return Path(base) / "panic-lab" if base else cache_dir() / "runs"


def results_dir() -> Path:
    return Path(os.environ.get("LAB_RESULTS_DIR") or (PROJECT / "results"))


def is_marked(folder: Path) -> bool:
    return (folder / MARK).is_file()


def claim(folder: Path, adopt: bool = False) -> Path:
    """Make `folder` the lab's: it appears with the mark already inside (made aside, then renamed into
    place), so no one ever sees it unmarked. An existing unmarked folder is refused, unless it is empty
    or `adopt` (a path whose very name is the lab's) says it may be marked where it stands."""
    if is_marked(folder):
        return folder
    if adopt and folder.is_dir():
        _write_mark(folder)
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}{NEW_SCRATCH}", dir=folder.parent))
    try:
        os.chmod(tmp, 0o755)   # QEMU's unprivileged user passes through to the images
        _write_mark(tmp)
        try:
            os.rename(tmp, folder)   # replaces an empty folder; fails on a non-empty one
        except OSError:
            if not is_marked(folder):   # another lab process may have won the race: then it is ours too
                raise HostError("scratch", f"{folder} exists and is not the lab's (no {MARK} in it); "
                                           "move it away or point the lab elsewhere") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _write_mark(folder: Path) -> None:
    tmp = folder / f"{MARK}.tmp-{os.getpid()}"
    tmp.write_text("made by panic-lab: `lab clean` may remove what it made in here\n")
    os.replace(tmp, folder / MARK)


def owned_cache() -> Path:
    """The cache, marked as the lab's; called by everything that writes into it. A home cache made
    before marks existed is adopted; a LAB_CACHE_DIR or /var/cache/panic-lab that is not the lab's
    (unmarked, not empty) is refused."""
    if os.environ.get("LAB_CACHE_DIR"):
        return claim(cache_dir())
    if os.geteuid() != 0:
        return claim(cache_dir(), adopt=True)
    _move_roots_old_cache_once()
    return claim(ROOT_CACHE)


def scratch_root() -> Path:
    """The marked folder that holds every run's scratch: QEMU's user may pass through it, not list it."""
    if os.environ.get("LAB_WORK_DIR"):
        root = claim(work_dir())
    else:
        owned_cache()   # the cache's own runs folder: the cache is the lab's, so is this
        root = claim(work_dir(), adopt=True)
    os.chmod(root, 0o711)
    return root


def new_scratch(run_id: str) -> Path:
    """A run's scratch folder, with its owner's pid in it from the first moment it exists."""
    root = scratch_root()
    tmp = Path(tempfile.mkdtemp(prefix=f"{NEW_SCRATCH}{os.getpid()}-", dir=root))
    os.chmod(tmp, 0o711)   # QEMU's user may open the files it was given, and list nothing
    (tmp / OWNER).write_text(f"{os.getpid()}\n")
    try:
        os.rename(tmp, root / run_id)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise HostError("scratch", f"{root / run_id} already exists") from None
    return root / run_id


def owner_alive(pid: int) -> bool:
    """Is the process that owns something of the lab's still there? (This process never counts.)"""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_scratch(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def scratch_owner(entry: Path) -> int | None:
    """The pid that owns an entry of the scratch folder, or None if it carries no owner mark."""
    if entry.name.startswith(NEW_SCRATCH):
        pid = entry.name[len(NEW_SCRATCH):].split("-", 1)[0]
        return int(pid) if pid.isdigit() else None
    try:
        text = (entry / OWNER).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def private_file(path: Path, text: str) -> None:
    """A file only its owner can read, from its first byte (the seed's user-data holds a password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


@contextlib.contextmanager
def locked(folder: Path):
    """An exclusive flock on a folder itself, held for the block: no lock file is left behind."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
