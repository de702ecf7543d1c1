"""Stage 1, image: the guest's base disk, kernel and initrd, built offline and cached by recipe hash."""
from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .errors import HostError, InputError

RECIPES = {"debian12": paths.IMAGES / "debian12"}
BUILD_TOOLS = ("mmdebstrap", "mkfs.ext4", "qemu-img")


@dataclass(frozen=True)
class Image:
    name: str
    key: str
    disk: Path
    kernel: Path
    initrd: Path
    kernel_version: str


def recipe_key(name: str) -> str:
    """Hash of every file of the recipe: change one and the image is rebuilt."""
    recipe = RECIPES[name]
    digest = hashlib.sha256()
    for path in sorted(p for p in recipe.rglob("*") if p.is_file()):
        digest.update(path.relative_to(recipe).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _image_dir(name: str, key: str) -> Path:
    return paths.cache_dir() / "images" / f"{name}-{key}"


def _load(name: str, key: str) -> Image | None:
    where = _image_dir(name, key)
    manifest = where / "manifest.json"
    if not manifest.exists():
        return None
    data = json.loads(manifest.read_text())
    return Image(name, key, where / "disk.qcow2", where / "vmlinuz", where / "initrd.img", data["kernel_version"])


def cached(name: str) -> Image | None:
    if name not in RECIPES:
        raise InputError("image", f"unknown image {name!r} (known: {', '.join(RECIPES)})")
    return _load(name, recipe_key(name))


def ensure(name: str, log=sys.stderr) -> Image:
    """Return the cached image, building it once (under a lock) if its recipe is new."""
    image = cached(name)
    if image:
        return image
    missing = [tool for tool in BUILD_TOOLS if not shutil.which(tool)]
    if missing:
        raise HostError("image", f"cannot build {name}: {', '.join(missing)} not installed (make setup)")
    key = recipe_key(name)
    root = paths.cache_dir() / "images"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        image = _load(name, key)  # another process may have built it while we waited
        if image:
            return image
        started = time.monotonic()
        print(f"image: building {name} ({key}); about 2 minutes", file=log, flush=True)
        with tempfile.TemporaryDirectory(prefix=f".{name}-build-", dir=root, ignore_cleanup_errors=True) as tmp:
            build = subprocess.run([str(RECIPES[name] / "build.sh"), tmp], stdout=log, stderr=log)
            if build.returncode != 0:
                raise HostError("image", f"building {name} failed (exit {build.returncode}); see the output above")
            version = (Path(tmp) / "kernel-version").read_text().strip()
            (Path(tmp) / "manifest.json").write_text(json.dumps({
                "name": name, "key": key, "kernel_version": version,
                "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build_seconds": round(time.monotonic() - started, 1),
            }, indent=2))
            final = _image_dir(name, key)
            Path(tmp).rename(final)
        print(f"image: {name} ready in {time.monotonic() - started:.0f} s", file=log, flush=True)
        return _load(name, key)


def listing() -> list[dict]:
    rows = []
    for name in RECIPES:
        image = cached(name)
        size = image.disk.stat().st_size if image else 0
        rows.append({"name": name, "key": recipe_key(name), "cached": bool(image),
                     "disk": str(image.disk) if image else None, "size_bytes": size})
    return rows
