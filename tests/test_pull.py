"""`lab images pull` end to end against a local HTTP server on loopback that serves small qcow2 images
made with qemu-img: a pinned digest, checksum files in both formats, a corrupted download, an interrupted
one that resumes, two pulls at once, and images that would make QEMU open other files. No internet is used."""
import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import run_lab, spawn_lab
from lab import catalog, checksums
from loopback import Server



@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def qcow2(tmp_path, need_tool):
    """Makes a qcow2 image of about `mib` MiB of random data, with extra `qemu-img create -o` options."""
    qemu_img = need_tool("qemu-img")
    made = tmp_path / "images"
    made.mkdir()

    def make(name: str, mib: int = 1, options: str = "") -> Path:
        raw = made / f"{name}.raw"
        raw.write_bytes(os.urandom(mib << 20))   # random: the qcow2 file is as big as the data
        path = made / name
        if options:   # create with the option, then write the data through the image
            subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-o", options, str(path), f"{mib}M"],
                           check=True, cwd=made)
            subprocess.run([qemu_img, "convert", "-n", "-f", "raw", "-O", "qcow2", str(raw), str(path)],
                           check=True, cwd=made)
        else:
            subprocess.run([qemu_img, "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
        raw.unlink()
        return path
    return make


def sha(path: Path, algo="sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def pull(tmp_path, catalog: str, name: str, env=None):
    (tmp_path / "catalog.toml").write_text(catalog)
    env = dict(os.environ, LAB_CATALOG=str(tmp_path / "catalog.toml"), LAB_CACHE_DIR=str(tmp_path / "cache"),
               **(env or {}))
    return spawn_lab("images", "pull", name, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def entry(name, url, **extra):
    lines = [f'[{name}]', f'url = "{url}"', 'family = "debian"', 'kdump = "kdump-tools"', 'user = "debian"',
             'crashkernel = "grub-reboot"'] + [f'{k} = "{v}"' for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def test_pull_verifies_against_a_pinned_digest_and_caches_once(server, tmp_path, qcow2):
    disk = qcow2("disk.qcow2")
    server.routes["/img/disk.qcow2"] = disk
    catalog = entry("local", f"{server.url}/img/disk.qcow2", sha256=sha(disk))
    out, err = pull(tmp_path, catalog, "local").communicate(timeout=300)
    cached = Path(out.strip())
    assert cached.parent == tmp_path / "cache" / "cloud" / "local", err
    assert sha(cached) == sha(disk)
    assert "verified (sha256) against the catalog's pinned sha256" in err
    again = pull(tmp_path, catalog, "local")
    assert again.communicate(timeout=60)[0].strip() == str(cached) and again.returncode == 0
    assert len(server.gets("/img/disk.qcow2")) == 1   # the second pull found it in the cache
    listing = run_lab("images", text=True,
                             env=dict(os.environ, LAB_CATALOG=str(tmp_path / "catalog.toml"),
                                      LAB_CACHE_DIR=str(tmp_path / "cache")))
    assert re.search(r"local\s+debian kdump-tools\s+cached, \d+ MiB; digest checked against the catalog's pinned "
                     r"sha256", listing.stdout), listing.stdout


@pytest.mark.parametrize("listing, algo", [
    ("SHA256 (disk.qcow2) = {digest}\n", "sha256"),                                  # BSD
    ("{other}  other.img\n{digest} *disk.qcow2\n", "sha512"),                         # GNU, binary mode
])
def test_checksum_files_are_read_in_both_formats(server, tmp_path, listing, algo):
    # In-process: a catalog refuses a checksum file over plain http, and the loopback server has no TLS.
    digest = hashlib.new(algo, b"an image").hexdigest()
    server.routes["/img/SUMS"] = listing.format(digest=digest, other="0" * len(digest)).encode()
    e = catalog.Entry(name="local", url=f"{server.url}/img/disk.qcow2", family="debian", kdump="kdump-tools",
                      user="debian", crashkernel="grub-reboot", checksum_url=f"{server.url}/img/SUMS",
                      checksum_entry="disk.qcow2", checksum_algo=algo)
    assert checksums.expected(e) == (digest, checksums.UNSIGNED)


@pytest.mark.parametrize("url, checksum_url", [
    ("http://{host}/img/disk.qcow2", "https://example.invalid/SUMS"),
    ("https://example.invalid/disk.qcow2", "http://{host}/img/SUMS"),
    ("http://{host}/img/disk.qcow2", "http://{host}/img/SUMS"),
])
def test_plain_http_without_a_pinned_digest_is_refused_before_any_request(server, tmp_path, url, checksum_url):
    host = server.url.split("//", 1)[1]
    catalog = entry("local", url.format(host=host), checksum_url=checksum_url.format(host=host),
                    checksum_entry="disk.qcow2")
    p = pull(tmp_path, catalog, "local")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and err.count("\n") == 1 and err.startswith("lab: catalog: "), err
    assert "is plain http: pin the image's sha256" in err
    assert server.log == [] and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("kind, words", [
    ("backing", "it has a backing file ('base.qcow2')"),
    ("data-file", "it keeps its data in an external file ('data.raw')"),
    ("raw", "not a qcow2 image"),
])
def test_an_image_that_is_not_a_standalone_qcow2_is_refused_and_removed(server, tmp_path, qcow2, kind, words):
    if kind == "backing":
        qcow2("base.qcow2")
        image = qcow2("disk.qcow2", options="backing_file=base.qcow2,backing_fmt=qcow2")
    elif kind == "data-file":
        image = qcow2("disk.qcow2", options="data_file=data.raw")
    else:
        image = tmp_path / "disk.raw"
        image.write_bytes(os.urandom(1 << 20))
    server.routes["/img/disk.qcow2"] = image
    p = pull(tmp_path, entry("local", f"{server.url}/img/disk.qcow2", sha256=sha(image)), "local")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    last = err.splitlines()[-1]   # progress lines come before it
    assert last.startswith(f"lab: pull: local: {words}") and last.endswith("the download was removed, nothing cached"), err
    assert list((tmp_path / "cache" / "cloud" / "local").iterdir()) == []


def test_without_qemu_img_a_pull_is_one_line_and_downloads_nothing(server, tmp_path):
    server.routes["/img/disk.qcow2"] = b"QFI\xfb"
    catalog = entry("local", f"{server.url}/img/disk.qcow2", sha256=hashlib.sha256(b"QFI\xfb").hexdigest())
    p = pull(tmp_path, catalog, "local", env={"PATH": str(tmp_path / "no-tools")})
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and err.count("\n") == 1, err
    assert err.startswith("lab: pull: qemu-img not installed"), err
    assert server.log == [] and not (tmp_path / "cache" / "cloud").exists()


def test_a_corrupted_download_is_removed_and_nothing_is_cached(server, tmp_path, qcow2):
    disk = qcow2("disk.qcow2")
    corrupted = bytearray(disk.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    server.routes["/img/disk.qcow2"] = bytes(corrupted)
    catalog = entry("local", f"{server.url}/img/disk.qcow2", sha256=sha(disk))
    p = pull(tmp_path, catalog, "local")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2
    last = err.splitlines()[-1]   # progress lines come before it
    assert last.startswith("lab: pull: local: sha256 mismatch"), err
    assert "the download was removed, nothing cached" in last
    assert list((tmp_path / "cache" / "cloud" / "local").iterdir()) == []


def test_an_interrupted_download_resumes_where_it_stopped(server, tmp_path, qcow2):
    disk = qcow2("disk.qcow2", mib=16)
    server.routes["/img/disk.qcow2"] = disk
    server.drop_after["/img/disk.qcow2"] = 10 << 20
    catalog = entry("local", f"{server.url}/img/disk.qcow2", sha256=sha(disk))
    first = pull(tmp_path, catalog, "local")
    _, err = first.communicate(timeout=120)
    assert first.returncode == 2 and "download interrupted at 10485760" in err, err
    part = tmp_path / "cache" / "cloud" / "local" / "disk.qcow2.part"
    assert part.stat().st_size == 10 << 20
    second = pull(tmp_path, catalog, "local")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert "resuming at 10.0 MiB" in err
    assert server.gets("/img/disk.qcow2")[-1] == "bytes=10485760-"
    assert sha(Path(out.strip())) == sha(disk) and not part.exists()


def test_a_pull_that_gets_nothing_is_one_line_and_lab_clean_removes_its_folder(server, tmp_path):
    catalog = entry("local", f"{server.url}/img/missing.img", sha256="0" * 64)   # the server says 404
    p = pull(tmp_path, catalog, "local")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and err.count("\n") == 1 and "HTTP 404" in err, err
    folder = tmp_path / "cache" / "cloud" / "local"
    assert list(folder.iterdir()) == []
    # libvirt's in-process test driver and a scratch of the test's own: no libvirtd needed, nothing real touched.
    env = dict(os.environ, LAB_CATALOG=str(tmp_path / "catalog.toml"), LAB_CACHE_DIR=str(tmp_path / "cache"),
               LAB_URI="test:///default", LAB_WORK_DIR=str(tmp_path / "work"))
    cleaned = run_lab("clean", env=env, text=True)
    assert f"removed empty image folder {folder}" in cleaned.stdout, cleaned.stdout + cleaned.stderr
    assert not folder.exists()


def test_two_pulls_at_once_download_once_and_agree(server, tmp_path, qcow2):
    disk = qcow2("disk.qcow2", mib=16)
    server.routes["/img/disk.qcow2"] = disk
    catalog = entry("local", f"{server.url}/img/disk.qcow2", sha256=sha(disk))
    (tmp_path / "catalog.toml").write_text(catalog)
    pulls = [pull(tmp_path, catalog, "local") for _ in range(2)]
    results = [p.communicate(timeout=120) for p in pulls]
    assert [p.returncode for p in pulls] == [0, 0], [e for _, e in results]
    assert results[0][0] == results[1][0]
    assert len(server.gets("/img/disk.qcow2")) == 1
    assert sha(Path(results[0][0].strip())) == sha(disk)


def test_the_listing_says_what_each_digest_will_be_checked_against(tmp_path):
    text = (entry("signed", "https://h/a.img", checksum_url="https://h/SUMS", checksum_entry="a.img",
                  checksum_signature="https://h/SUMS.gpg", checksum_keyring="/usr/share/keyrings/k.gpg")
            + entry("unsigned", "https://h/b.img", checksum_url="https://h/SUMS", checksum_entry="b.img")
            + entry("pinned", "https://h/c.img", sha256="c" * 64))
    (tmp_path / "catalog.toml").write_text(text)
    done = run_lab("images", text=True, env={"LAB_CATALOG": str(tmp_path / "catalog.toml"),
                                            "LAB_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    for name, check in [("signed", "a signed checksum file"), ("unsigned", "an unsigned checksum file"),
                        ("pinned", "the catalog's pinned sha256")]:
        assert re.search(rf"\n  {name} +debian kdump-tools +available; to be checked against {check}\n", done.stdout), \
            done.stdout


@pytest.mark.parametrize("text, words", [
    ("[x\nurl = 1\n", "malformed TOML"),
    (entry("x", "http://h/i.img", sha256="ab") + 'colour = "blue"\n', "[x]: unknown key 'colour'"),
    (entry("x", "http://h/i.img"), "needs sha256, or checksum_url and checksum_entry"),
    (entry("x", "file:///etc/passwd", sha256="ab"), "url must be http(s)"),
    (entry("x", "http://h/i.img", sha256="ab").replace('"grub-reboot"', '"cmdline"'),
     "crashkernel 'cmdline' is not one of grub-reboot"),
    (entry("x", "http://h/i.img", sha256="ab") + 'packages = "kdump-tools"\n', "packages must be a list of package names"),
    (entry("x", "http://h/i.img", sha256="ab") + 'packages = ["kdump-tools; reboot"]\n', "packages must be a list"),
    (entry("x", "http://h/i.img", sha256="ab") + 'packages = ["kdump-tools\\n"]\n', "packages must be a list"),
    (entry('"../../x"', "https://h/i.img", sha256="a" * 64), "['../../x']: a catalog name is"),
    (entry('".."', "https://h/i.img", sha256="a" * 64), "['..']: a catalog name is"),
    (entry('"a/b"', "https://h/i.img", sha256="a" * 64), "['a/b']: a catalog name is"),
    (entry("x", "https://h/img/..", sha256="a" * 64), "url must end in a file name"),
    (entry("x", "https://h/img/", sha256="a" * 64).replace("/img/", "/img/../"), "url must end in a file name"),
    (entry("x", "https://h/a b.img", sha256="a" * 64), "url must be http(s), without spaces"),
    (entry("x", "https://h/i.img", sha256="ab"), "sha256 must be 64 hex digits"),
    (entry("x", "https://h/i.img", sha256="a" * 64).replace('family = "debian"', 'family = ["debian"]'),
     "family = ['debian']: expected a string"),
    (entry("x", "https://h/i.img", checksum_url="file:///etc/SUMS", checksum_entry="i.img"), "checksum_url must be http(s)"),
    (entry("x", "https://h/i.img", checksum_url="https://h/SUMS", checksum_entry="i.img",
           checksum_signature="https://h/SUMS.gpg"), "checksum_signature and checksum_keyring go together"),
    (entry("x", "https://h/i.img", checksum_url="https://h/SUMS", checksum_entry="i.img",
           checksum_keyring="/usr/share/keyrings/k.gpg"), "checksum_signature and checksum_keyring go together"),
    (entry("x", "https://h/i.img", sha256="a" * 64, checksum_signature="clearsigned",
           checksum_keyring="/usr/share/keyrings/k.gpg"), "checksum_signature needs checksum_url, without a pinned sha256"),
    (entry("x", "https://h/i.img", checksum_url="https://h/SUMS", checksum_entry="i.img", checksum_signature="gpg",
           checksum_keyring="/usr/share/keyrings/k.gpg"), "checksum_signature must be the signature's http(s) URL"),
    (entry("x", "https://h/i.img", checksum_url="https://h/SUMS", checksum_entry="i.img",
           checksum_signature="clearsigned", checksum_keyring="https://h/KEY.gpg"),
     "checksum_keyring must be the absolute path of a keyring file on this host"),
    (entry("x", "https://h/i.img", checksum_url="https://h/SUMS", checksum_entry="i.img",
           checksum_signature="clearsigned", checksum_keyring="keys/k.gpg"), "checksum_keyring must be the absolute path"),
    (entry("x", "http://h/i.img", checksum_url="https://h/SUMS", checksum_entry="i.img",
           checksum_signature="clearsigned", checksum_keyring="/k.gpg"), "url is plain http: pin the image's sha256"),
])
def test_a_bad_catalog_is_one_line_naming_file_and_key(tmp_path, text, words):
    p = pull(tmp_path, text, "x")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and err.count("\n") == 1 and err.startswith("lab: catalog: "), err
    assert str(tmp_path / "catalog.toml") in err and words in err
    assert not (tmp_path / "cache").exists()
