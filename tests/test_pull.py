"""`lab images pull` end to end against a local HTTP server on loopback that serves locally built image
files: checksum files in both formats, a corrupted download, an interrupted one that resumes, and two
pulls at once. No internet is used."""
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lab import image
from loopback import Server

ROOT = Path(__file__).resolve().parent.parent
BUILT = image.cached("debian12")
pytestmark = pytest.mark.skipif(BUILT is None, reason="the debian12 image is not built (make image)")


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


def sha(path: Path, algo="sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def pull(tmp_path, catalog: str, name: str):
    (tmp_path / "catalog.toml").write_text(catalog)
    env = dict(os.environ, LAB_CATALOG=str(tmp_path / "catalog.toml"), LAB_CACHE_DIR=str(tmp_path / "cache"))
    return subprocess.Popen([sys.executable, "-m", "lab", "images", "pull", name], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def entry(name, url, **extra):
    lines = [f'[{name}]', f'url = "{url}"', 'family = "debian"', 'kdump = "kdump-tools"', 'user = "debian"',
             'crashkernel = "grub-reboot"'] + [f'{k} = "{v}"' for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def test_pull_verifies_against_the_checksum_file_and_caches_once(server, tmp_path):
    server.routes["/img/disk.qcow2"] = BUILT.disk
    server.routes["/img/CHECKSUM"] = f"SHA256 (disk.qcow2) = {sha(BUILT.disk)}\n".encode()   # BSD format
    catalog = entry("local", f"{server.url}/img/disk.qcow2", checksum_url=f"{server.url}/img/CHECKSUM",
                    checksum_entry="disk.qcow2")
    out, err = pull(tmp_path, catalog, "local").communicate(timeout=300)
    cached = Path(out.strip())
    assert cached.parent == tmp_path / "cache" / "cloud" / "local", err
    assert sha(cached) == sha(BUILT.disk)
    assert "verified (sha256)" in err
    again = pull(tmp_path, catalog, "local")
    assert again.communicate(timeout=60)[0].strip() == str(cached) and again.returncode == 0
    assert len(server.gets("/img/disk.qcow2")) == 1   # the second pull found it in the cache
    listing = subprocess.run([sys.executable, "-m", "lab", "images"], cwd=ROOT, capture_output=True, text=True,
                             env=dict(os.environ, LAB_CATALOG=str(tmp_path / "catalog.toml"),
                                      LAB_CACHE_DIR=str(tmp_path / "cache")))
    assert re.search(r"local\s+debian kdump-tools\s+cached, 808 MiB", listing.stdout) or \
        re.search(r"local\s+debian kdump-tools\s+cached, \d+ MiB", listing.stdout), listing.stdout


def test_gnu_checksum_files_with_sha512_are_read_too(server, tmp_path):
    server.routes["/img/initrd.img"] = BUILT.initrd
    server.routes["/img/SHA512SUMS"] = (f"{'0' * 128}  other.img\n{sha(BUILT.initrd, 'sha512')} *initrd.img\n").encode()
    catalog = entry("local", f"{server.url}/img/initrd.img", checksum_url=f"{server.url}/img/SHA512SUMS",
                    checksum_entry="initrd.img", checksum_algo="sha512")
    p = pull(tmp_path, catalog, "local")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert sha(Path(out.strip()), "sha512") == sha(BUILT.initrd, "sha512")


def test_a_corrupted_download_is_removed_and_nothing_is_cached(server, tmp_path):
    corrupted = bytearray(BUILT.initrd.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    server.routes["/img/initrd.img"] = bytes(corrupted)
    catalog = entry("local", f"{server.url}/img/initrd.img", sha256=sha(BUILT.initrd))
    p = pull(tmp_path, catalog, "local")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2
    last = err.splitlines()[-1]   # progress lines come before it
    assert last.startswith("lab: pull: local: sha256 mismatch"), err
    assert "the download was removed, nothing cached" in last
    assert list((tmp_path / "cache" / "cloud" / "local").iterdir()) == []


def test_an_interrupted_download_resumes_where_it_stopped(server, tmp_path):
    server.routes["/img/initrd.img"] = BUILT.initrd
    server.drop_after["/img/initrd.img"] = 10 << 20
    catalog = entry("local", f"{server.url}/img/initrd.img", sha256=sha(BUILT.initrd))
    first = pull(tmp_path, catalog, "local")
    _, err = first.communicate(timeout=120)
    assert first.returncode == 2 and "download interrupted at 10485760" in err, err
    part = tmp_path / "cache" / "cloud" / "local" / "initrd.img.part"
    assert part.stat().st_size == 10 << 20
    second = pull(tmp_path, catalog, "local")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert "resuming at 10.0 MiB" in err
    assert server.gets("/img/initrd.img")[-1] == "bytes=10485760-"
    assert sha(Path(out.strip())) == sha(BUILT.initrd) and not part.exists()


def test_a_pull_that_gets_nothing_is_one_line_and_lab_clean_removes_its_folder(server, tmp_path):
    catalog = entry("local", f"{server.url}/img/missing.img", sha256="0" * 64)   # the server says 404
    p = pull(tmp_path, catalog, "local")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and err.count("\n") == 1 and "HTTP 404" in err, err
    folder = tmp_path / "cache" / "cloud" / "local"
    assert list(folder.iterdir()) == []
    env = dict(os.environ, LAB_CATALOG=str(tmp_path / "catalog.toml"), LAB_CACHE_DIR=str(tmp_path / "cache"))
    cleaned = subprocess.run([sys.executable, "-m", "lab", "clean"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert f"removed empty image folder {folder}" in cleaned.stdout, cleaned.stdout + cleaned.stderr
    assert not folder.exists()


def test_two_pulls_at_once_download_once_and_agree(server, tmp_path):
    server.routes["/img/initrd.img"] = BUILT.initrd
    catalog = entry("local", f"{server.url}/img/initrd.img", sha256=sha(BUILT.initrd))
    (tmp_path / "catalog.toml").write_text(catalog)
    pulls = [pull(tmp_path, catalog, "local") for _ in range(2)]
    results = [p.communicate(timeout=120) for p in pulls]
    assert [p.returncode for p in pulls] == [0, 0], [e for _, e in results]
    assert results[0][0] == results[1][0]
    assert len(server.gets("/img/initrd.img")) == 1
    assert sha(Path(results[0][0].strip())) == sha(BUILT.initrd)


@pytest.mark.parametrize("text, words", [
    ("[x\nurl = 1\n", "malformed TOML"),
    (entry("x", "http://h/i.img", sha256="ab") + 'colour = "blue"\n', "[x]: unknown key 'colour'"),
    (entry("x", "http://h/i.img"), "needs sha256, or checksum_url and checksum_entry"),
    (entry("x", "file:///etc/passwd", sha256="ab"), "url must be http(s)"),
    (entry("x", "http://h/i.img", sha256="ab").replace('"grub-reboot"', '"cmdline"'),
     "crashkernel 'cmdline' is not one of grub-reboot"),
    (entry("x", "http://h/i.img", sha256="ab") + 'packages = "kdump-tools"\n', "packages must be a list of package names"),
    (entry("x", "http://h/i.img", sha256="ab") + 'packages = ["kdump-tools; reboot"]\n', "packages must be a list"),
])
def test_a_bad_catalog_is_one_line_naming_file_and_key(tmp_path, text, words):
    p = pull(tmp_path, text, "x")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and err.count("\n") == 1 and err.startswith("lab: catalog: "), err
    assert str(tmp_path / "catalog.toml") in err and words in err
    assert not (tmp_path / "cache").exists()
