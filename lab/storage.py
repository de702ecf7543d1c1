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

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

import libvirt

from . import host, paths
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


def _failed(what: str, exc: libvirt.libvirtError) -> host.Refused:
    return host.Refused("storage", f"{what}: {host.one_line(exc.get_error_message() or str(exc))}")


_guard = threading.Lock()
_host_locks: dict[str, threading.Lock] = {}


def _host_lock(uri: str) -> threading.Lock:
    """One per host in this process: the pool made once, one upload at a time."""
    with _guard:
        return _host_locks.setdefault(uri, threading.Lock())


def pool(conn: libvirt.virConnect, create: bool = True) -> libvirt.virStoragePool | None:
    """The lab's pool on this host (LAB_POOL names another), started; made as a directory pool if missing."""
    name, uri = pool_name(), host.uri_of(conn)
    with _host_lock(uri):
        try:
            found = conn.storagePoolLookupByName(name)
        except libvirt.libvirtError:
            if not create:
                return None
            found = _define(conn, name, uri)
        if not found.isActive():
            try:
                found.create(0)
            except libvirt.libvirtError as exc:
                if not found.isActive():   # another lab may have started it meanwhile
                    raise host.Refused("storage", f"storage pool {name!r} on {uri} does not start: "
                                       f"{host.one_line(exc.get_error_message())}; {_hint(uri)}") from None
        return found


def _define(conn: libvirt.virConnect, name: str, uri: str) -> libvirt.virStoragePool:
    try:
        made = conn.storagePoolDefineXML(f"<pool type='dir'><name>{escape(name)}</name>"
                                         f"<target><path>{POOL_PATH}</path></target></pool>", 0)
    except libvirt.libvirtError as exc:
        try:
            return conn.storagePoolLookupByName(name)   # another lab defined it meanwhile
        except libvirt.libvirtError:
            raise host.Refused("storage", f"{uri} has no storage pool {name!r} and refused one: "
                               f"{host.one_line(exc.get_error_message())}; {_hint(uri)}") from None
    try:
        made.build(0)
    except libvirt.libvirtError as exc:
        made.undefine()   # or the hint's pool-define-as would find it there
        raise host.Refused("storage", f"{uri} has no storage pool {name!r} and refused one: "
                           f"{host.one_line(exc.get_error_message())}; {_hint(uri)}") from None
    return made


# -- digests --------------------------------------------------------------------------------------------
_digests: dict[tuple, str] = {}
_checked: set[tuple[str, str]] = set()     # (uri, volume) read back and found right in this process


def digest(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _guard:   # two runs starting together hash the image once
        if key not in _digests:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
            _digests[key] = h.hexdigest()
        return _digests[key]


@contextlib.contextmanager
def _stream(conn: libvirt.virConnect):
    """A libvirt stream, finished on success and aborted on any failure (an open one keeps its volume busy)."""
    stream = conn.newStream(0)
    try:
        yield stream
        stream.finish()
    except BaseException:
        try:
            stream.abort()
        except libvirt.libvirtError:
            pass
        raise


def _read_back(conn: libvirt.virConnect, vol: libvirt.virStorageVol) -> str:
    h = hashlib.sha256()
    with _stream(conn) as stream:
        vol.download(stream, 0, 0, 0)
        stream.recvAll(lambda _s, data, _o: h.update(data), None)
    return h.hexdigest()


def _send(conn: libvirt.virConnect, vol: libvirt.virStorageVol, path: Path) -> None:
    with _stream(conn) as stream, open(path, "rb") as f:
        vol.upload(stream, 0, path.stat().st_size, 0)
        stream.sendAll(lambda _s, n, _o: f.read(min(n, CHUNK)), None)


def _new_volume(storage: libvirt.virStoragePool, name: str, size: int, fmt: str = "raw", backing: str | None = None,
                backing_format: str = "qcow2") -> libvirt.virStorageVol:
    chain = (f"<backingStore><path>{escape(backing)}</path><format type='{backing_format}'/></backingStore>"
             if backing else "")
    return storage.createXML(f"<volume><name>{escape(name)}</name><capacity unit='bytes'>{size}</capacity>"
                             f"<target><format type='{fmt}'/><permissions><mode>0600</mode></permissions></target>"
                             f"{chain}</volume>", 0)


def _uploads_folder() -> Path:
    folder = paths.owned_cache() / "uploads"   # its flock: one upload at a time from this machine
    folder.mkdir(exist_ok=True)
    return folder


def uploaded(conn: libvirt.virConnect, storage: libvirt.virStoragePool, path: Path, suffix: str,
             say=lambda _m: None, fmt: str = "raw", capacity: int | None = None) -> libvirt.virStorageVol:
    """`path` as a volume of the host, named by its digest, sent once and checked against the digest.
    `fmt` is what the host is told the file is (a qcow2 image: the raw copy converts from that)."""
    uri, want = host.uri_of(conn), digest(path)
    name = f"{IMAGE_VOLUME}{want[:24]}{suffix}"
    # One at a time: runs of this batch in this process, other labs on this machine by the file lock.
    with _host_lock(uri), paths.locked(_uploads_folder()):
        try:
            vol = storage.storageVolLookupByName(name)
        except libvirt.libvirtError:
            vol = None
        if vol is not None and (uri, name) in _checked:
            return vol
        try:
            if vol is not None and _read_back(conn, vol) != want:
                say(f"volume {name} on {uri} does not match its digest (an upload cut short?): sending it again")
                vol.delete(0)
                vol = None
            if vol is None:
                size = path.stat().st_size
                say(f"uploading {path.name} ({size / 2**20:.0f} MiB) to {uri} as volume {name}")
                vol = _new_volume(storage, name, capacity or size, fmt)
                try:
                    _send(conn, vol, path)
                    got = _read_back(conn, vol)
                except BaseException:
                    vol.delete(0)   # a partial volume under the digest's name would be taken for the image
                    raise
                if got != want:
                    vol.delete(0)
                    raise host.Refused("storage", f"volume {name} on {uri} reads back as sha256 {got[:16]}…, "
                                       f"not {want[:16]}…: the upload was damaged")
        except libvirt.libvirtError as exc:
            raise _failed(f"sending {path.name} to {uri}", exc) from None
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
    info = subprocess.run(["qemu-img", "info", "--output=json", str(image.disk)], capture_output=True, text=True)
    if info.returncode != 0:
        raise HostError("image", f"qemu-img info {image.disk}: {host.one_line(info.stderr)[:200]}")
    virtual_size = json.loads(info.stdout)["virtual-size"]
    storage = pool(conn)
    where = {"disk": uploaded(conn, storage, image.disk, ".qcow2", say, fmt="qcow2", capacity=virtual_size).path()}
    for part, suffix in (("kernel", ".vmlinuz"), ("initrd", ".initrd")):
        local = getattr(image, part)
        where[part] = uploaded(conn, storage, local, suffix, say).path() if local else None
    return RemoteImage(where["disk"], where["kernel"], where["initrd"], digest(image.disk), virtual_size)


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
            raise _failed(f"the run's seed on {host.uri_of(self.conn)}", exc) from None
        if self.seed.path() != self.seed_path:
            raise host.Refused("storage", f"pool {pool_name()!r} put the seed at {self.seed.path()}, not beside the disk: "
                               "the lab needs a directory pool")

    def names(self) -> list[str]:
        return [v.name() for v in (self.disk, self.seed) if v is not None]

    def fetch_disk(self, into: Path) -> Path:
        """The run's disk, read back from the host into `into` (holes stay holes; only root reads it:
        it holds the guest's memory dump and its secrets)."""
        with os.fdopen(os.open(into, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            def data(_s, chunk, _o):
                f.write(chunk)
                return 0

            def hole(_s, length, _o):
                f.seek(length, os.SEEK_CUR)
                return 0
            try:
                with _stream(self.conn) as stream:
                    self.disk.download(stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
                    stream.sparseRecvAll(data, hole, None)
            except libvirt.libvirtError as exc:
                raise HostError("teardown", f"reading the run's disk back from {host.uri_of(self.conn)}: "
                                            f"{host.one_line(exc.get_error_message())}") from None
            f.truncate(f.tell())
        return into

    def delete(self) -> list[str]:
        """Delete the run's volumes; the names of those the host kept (it refused, or is gone)."""
        left = []
        for vol in (self.disk, self.seed):
            if vol is None:
                continue
            try:
                vol.delete(0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    left.append(vol.name())
        return left


def _origin() -> str:
    """This machine, in a volume's name: `lab clean` on another machine leaves the volumes of this one's runs."""
    return hashlib.sha256(platform.node().encode()).hexdigest()[:8]


def run_volumes(conn: libvirt.virConnect, remote: RemoteImage, run_id: str, fmt: str) -> RunVolumes:
    """The run's disk: an overlay on the image's volume, or a raw copy made by the host's libvirt."""
    storage = pool(conn)
    base = f"{RUN_VOLUME}{_origin()}-{os.getpid()}-{run_id}"   # whose lab: `lab clean` leaves a live run's volumes
    try:
        if fmt == "qcow2":
            disk = _new_volume(storage, f"{base}-disk.qcow2", remote.virtual_size, "qcow2", backing=remote.disk)
        else:
            source = conn.storageVolLookupByPath(remote.disk)
            disk = storage.createXMLFrom(f"<volume><name>{base}-disk.raw</name><capacity unit='bytes'>"
                                         f"{remote.virtual_size}</capacity><target><format type='raw'/>"
                                         "<permissions><mode>0600</mode></permissions></target></volume>", source, 0)
    except libvirt.libvirtError as exc:
        raise _failed(f"the run's disk on {host.uri_of(conn)}", exc) from None
    return RunVolumes(conn, disk, seed_name=f"{base}-seed.iso")


@dataclass(frozen=True)
class Leftover:
    volume: libvirt.virStorageVol
    pid: int | None        # the lab process that made a run's volume; None for an image's
    ours: bool             # made by a lab on this machine (a pid elsewhere means nothing here)


def leftovers(conn: libvirt.virConnect) -> list[Leftover]:
    """Volumes of the lab's pool that carry its mark (every volume there was made through libvirt, which
    knows them: no pool refresh, which libvirt refuses while another run builds a volume)."""
    storage = pool(conn, create=False)
    if storage is None or not storage.isActive():
        return []
    found = []
    for vol in storage.listAllVolumes(0):
        name = vol.name()
        if name.startswith(RUN_VOLUME):
            origin, _, rest = name[len(RUN_VOLUME):].partition("-")
            pid = rest.split("-", 1)[0]
            found.append(Leftover(vol, int(pid) if pid.isdigit() else None, origin == _origin()))
        elif name.startswith(IMAGE_VOLUME):
            found.append(Leftover(vol, None, True))
    return found
