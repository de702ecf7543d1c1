"""A remote host's side of image and domain: volumes of a libvirt storage pool, sent through libvirt's
storage API over the same connection as everything else. Nothing assumes the host shares a filesystem
with the lab.

- The image (disk, kernel, initrd) is uploaded once per host as volumes named by their digest, and each
  volume is checked against that digest by reading it back (once per lab process and host).
- A run's disk is a volume too: a qcow2 overlay backed by the image's volume, or a raw copy made by the
  host's own libvirt; its seed is uploaded. After the run the disk comes back (sparse) for the vmcore
  check, and the run's volumes are deleted.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

import libvirt

from . import host
from .errors import HostError

if TYPE_CHECKING:   # types only
    from .image import Image

POOL_PATH = "/var/lib/libvirt/images/panic-lab"   # where libvirt keeps its own images, in a folder of ours
VOLUME_PREFIX = "panic-lab-"                      # the lab's mark on a volume: `lab clean --host` takes only these
IMAGE_VOLUME = VOLUME_PREFIX + "image-"
RUN_VOLUME = VOLUME_PREFIX + "run-"
CHUNK = 1 << 20


def pool_name() -> str:
    return os.environ.get("LAB_POOL") or "panic-lab"


def _hint(uri: str) -> str:
    name = pool_name()
    return (f"make one there: `virsh -c '{uri}' pool-define-as {name} dir --target {POOL_PATH} && "
            f"virsh -c '{uri}' pool-build {name} && virsh -c '{uri}' pool-start {name}`, or name one in LAB_POOL")


def pool(conn: libvirt.virConnect, create: bool = True) -> libvirt.virStoragePool | None:
    """The lab's pool on this host (LAB_POOL names another), started; made as a directory pool if missing."""
    name, uri = pool_name(), host.uri_of(conn)
    try:
        found = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        if not create:
            return None
        try:
            found = conn.storagePoolDefineXML(f"<pool type='dir'><name>{escape(name)}</name>"
                                              f"<target><path>{POOL_PATH}</path></target></pool>", 0)
            found.build(0)
        except libvirt.libvirtError as exc:
            raise HostError("storage", f"{uri} has no storage pool {name!r} and refused one: "
                                       f"{exc.get_error_message()}; {_hint(uri)}") from None
    if not found.isActive():
        try:
            found.create(0)
        except libvirt.libvirtError as exc:
            raise HostError("storage", f"storage pool {name!r} on {uri} does not start: "
                                       f"{exc.get_error_message()}; {_hint(uri)}") from None
    return found


# -- digests --------------------------------------------------------------------------------------------
_digests: dict[tuple, str] = {}
_checked: set[tuple[str, str]] = set()     # (uri, volume) read back and found right in this process
_uploading: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def digest(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        _digests[key] = h.hexdigest()
    return _digests[key]


def _read_back(conn: libvirt.virConnect, vol: libvirt.virStorageVol) -> str:
    h = hashlib.sha256()
    stream = conn.newStream(0)
    vol.download(stream, 0, 0, 0)
    stream.recvAll(lambda _s, data, _o: h.update(data), None)
    stream.finish()
    return h.hexdigest()


def _send(conn: libvirt.virConnect, vol: libvirt.virStorageVol, path: Path) -> None:
    stream = conn.newStream(0)
    vol.upload(stream, 0, path.stat().st_size, 0)
    with open(path, "rb") as f:
        stream.sendAll(lambda _s, n, _o: f.read(min(n, CHUNK)), None)
    stream.finish()


def _new_volume(storage: libvirt.virStoragePool, name: str, size: int, fmt: str = "raw", backing: str | None = None,
                backing_format: str = "qcow2") -> libvirt.virStorageVol:
    chain = (f"<backingStore><path>{escape(backing)}</path><format type='{backing_format}'/></backingStore>"
             if backing else "")
    return storage.createXML(f"<volume><name>{escape(name)}</name><capacity unit='bytes'>{size}</capacity>"
                             f"<target><format type='{fmt}'/><permissions><mode>0600</mode></permissions></target>"
                             f"{chain}</volume>", 0)


def uploaded(conn: libvirt.virConnect, storage: libvirt.virStoragePool, path: Path, suffix: str,
             say=lambda _m: None) -> libvirt.virStorageVol:
    """`path` as a volume of the host, named by its digest, sent once and checked against the digest."""
    uri, want = host.uri_of(conn), digest(path)
    name = f"{IMAGE_VOLUME}{want[:24]}{suffix}"
    with _guard:
        lock = _uploading.setdefault(uri, threading.Lock())
    with lock:   # two runs of one batch on one host: one upload, one at a time
        try:
            vol = storage.storageVolLookupByName(name)
        except libvirt.libvirtError:
            vol = None
        if vol is not None and (uri, name) in _checked:
            return vol
        if vol is not None and _read_back(conn, vol) != want:
            say(f"volume {name} on {uri} does not match its digest (an upload cut short?): sending it again")
            vol.delete(0)
            vol = None
        if vol is None:
            size = path.stat().st_size
            say(f"uploading {path.name} ({size / 2**20:.0f} MiB) to {uri} as volume {name}")
            try:
                vol = _new_volume(storage, name, size)
                _send(conn, vol, path)
            except libvirt.libvirtError as exc:
                raise HostError("storage", f"upload of {path.name} to {uri} failed: {exc.get_error_message()}") from None
            storage.refresh(0)   # the host probes the file it now holds (qcow2): a raw copy converts from that
            vol = storage.storageVolLookupByName(name)
            got = _read_back(conn, vol)
            if got != want:
                vol.delete(0)
                raise HostError("storage", f"volume {name} on {uri} reads back as sha256 {got[:16]}…, "
                                           f"not {want[:16]}…: the upload was damaged")
        _checked.add((uri, name))
        return vol


@dataclass(frozen=True)
class RemoteImage:
    """An image as a host has it: every path here is a volume's path on that host."""
    disk: str
    kernel: str | None
    initrd: str | None
    disk_digest: str
    virtual_size: int


def stage_image(conn: libvirt.virConnect, image: Image, say=lambda _m: None) -> RemoteImage:
    storage = pool(conn)
    paths = {}
    for part, suffix in (("disk", ".qcow2"), ("kernel", ".vmlinuz"), ("initrd", ".initrd")):
        local = getattr(image, part)
        paths[part] = uploaded(conn, storage, local, suffix, say).path() if local else None
    info = subprocess.run(["qemu-img", "info", "--output=json", str(image.disk)], capture_output=True, text=True)
    if info.returncode != 0:
        raise HostError("storage", f"qemu-img info {image.disk}: {info.stderr.strip()[:200]}")
    return RemoteImage(paths["disk"], paths["kernel"], paths["initrd"], digest(image.disk),
                       json.loads(info.stdout)["virtual-size"])


@dataclass
class RunVolumes:
    """A run's own volumes on a host: its disk and its seed (deleted when the run ends)."""
    conn: libvirt.virConnect
    disk: libvirt.virStorageVol
    seed_name: str
    seed: libvirt.virStorageVol | None = None

    @property
    def seed_path(self) -> str:
        """Where the seed will be: a directory pool keeps a volume under its name, beside the disk."""
        return f"{os.path.dirname(self.disk.path())}/{self.seed_name}"

    def send_seed(self, iso: Path) -> None:
        try:
            self.seed = _new_volume(self.disk.storagePoolLookupByVolume(), self.seed_name, iso.stat().st_size)
            _send(self.conn, self.seed, iso)
        except libvirt.libvirtError as exc:
            raise HostError("storage", f"the run's seed on {host.uri_of(self.conn)}: {exc.get_error_message()}") from None
        if self.seed.path() != self.seed_path:
            raise HostError("storage", f"pool {pool_name()!r} put the seed at {self.seed.path()}, not beside the disk: "
                                       "the lab needs a directory pool")

    def names(self) -> list[str]:
        return [v.name() for v in (self.disk, self.seed) if v is not None]

    def fetch_disk(self, into: Path) -> Path:
        """The run's disk, read back from the host into `into` (holes stay holes)."""
        with open(into, "wb") as f:
            def data(_s, chunk, _o):
                f.write(chunk)
                return 0

            def hole(_s, length, _o):
                f.seek(length, os.SEEK_CUR)
                return 0
            stream = self.conn.newStream(0)
            self.disk.download(stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
            stream.sparseRecvAll(data, hole, None)
            stream.finish()
            f.truncate(f.tell())
        return into

    def delete(self) -> None:
        for vol in (self.disk, self.seed):
            if vol is None:
                continue
            try:
                vol.delete(0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise HostError("teardown", f"volume {vol.name()} stays on the host: {exc.get_error_message()}; "
                                                "`lab clean --host URI` removes it") from None


def run_volumes(conn: libvirt.virConnect, remote: RemoteImage, run_id: str, fmt: str) -> RunVolumes:
    """The run's disk: an overlay on the image's volume, or a raw copy made by the host's libvirt."""
    storage = pool(conn)
    base = f"{RUN_VOLUME}{os.getpid()}-{run_id}"   # the owner's pid: `lab clean` leaves a live run's volumes
    try:
        if fmt == "qcow2":
            disk = _new_volume(storage, f"{base}-disk.qcow2", remote.virtual_size, "qcow2", backing=remote.disk)
        else:
            source = conn.storageVolLookupByPath(remote.disk)
            disk = storage.createXMLFrom(f"<volume><name>{base}-disk.raw</name><capacity unit='bytes'>"
                                         f"{remote.virtual_size}</capacity><target><format type='raw'/>"
                                         "<permissions><mode>0600</mode></permissions></target></volume>", source, 0)
    except libvirt.libvirtError as exc:
        raise HostError("storage", f"the run's disk on {host.uri_of(conn)}: {exc.get_error_message()}") from None
    return RunVolumes(conn, disk, seed_name=f"{base}-seed.iso")


def leftovers(conn: libvirt.virConnect) -> list[tuple[libvirt.virStorageVol, int | None]]:
    """Volumes of the lab's pool that carry its mark, each with the pid of the run that made it (None: an image's)."""
    storage = pool(conn, create=False)
    if storage is None or not storage.isActive():
        return []
    storage.refresh(0)
    found = []
    for vol in storage.listAllVolumes(0):
        name = vol.name()
        if name.startswith(RUN_VOLUME):
            pid = name[len(RUN_VOLUME):].split("-", 1)[0]
            found.append((vol, int(pid) if pid.isdigit() else None))
        elif name.startswith(IMAGE_VOLUME):
            found.append((vol, None))
    return found
