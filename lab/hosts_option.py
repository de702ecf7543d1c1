"""Which libvirt hosts an invocation uses: `--host URI` (repeatable), a scenario file's [hosts] table,
or LAB_HOSTS, checked before anything starts. None means the single default host (LAB_URI or
qemu:///system), as before there were several."""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from .errors import InputError, shown

ENV = "LAB_HOSTS"
# driver[+transport]://[user@][host[:port]]/path[?params]: the drivers the lab runs on (test:// for the
# test tier), and a path, which libvirt needs (/system, /session, /default); no spaces or control characters.
URI = re.compile(r"(qemu|test)(\+[a-z0-9]+)?://[^/\s\x00-\x1f\x7f]*/[^\s\x00-\x1f\x7f]*")
EXAMPLE = "expected a libvirt URI such as qemu:///system or qemu+ssh://root@host/system"
SHORT_MAX = 40   # characters of a URI in the results table


def is_remote(uri: str) -> bool:
    """A URI that names a host (even 127.0.0.1 over ssh) shares no filesystem with the lab: its images and
    disks travel as storage volumes (lab/storage.py). qemu:///system names none."""
    return bool(urlsplit(uri).hostname)


def checked_uri(uri: object, where: str) -> str:
    """`uri` when it is a plausible libvirt URI; else one line naming where it came from."""
    if not isinstance(uri, str) or not URI.fullmatch(uri):
        raise InputError("hosts", f"{where}: {shown(uri)}: {EXAMPLE}")
    return uri


def from_env(environ: Mapping[str, str]) -> list[str]:
    """LAB_HOSTS: URIs separated by whitespace or commas (a URI holds neither)."""
    return [u for u in re.split(r"[\s,]+", environ.get(ENV, "")) if u]


def chosen_hosts(cli_hosts: Iterable[str], files_hosts: Iterable[str],
                 environ: Mapping[str, str]) -> list[str] | None:
    """The hosts to use, in order and without repeats: --host when given, else the scenario files'
    [hosts], else LAB_HOSTS, else None (the default host). Every source is checked, the unused ones
    too: a typo in LAB_HOSTS is better told now than when --host is left off."""
    sources = [([checked_uri(u, "--host") for u in cli_hosts]),
               list(files_hosts),   # checked by the file's reader, which names the file
               [checked_uri(u, ENV) for u in from_env(environ)]]
    chosen = next((hosts for hosts in sources if hosts), None)
    return list(dict.fromkeys(chosen)) if chosen else None


def file_hosts(table: object, where: str) -> list[str]:
    """A scenario file's [hosts] table: `uris`, a non-empty list of libvirt URIs (its only key)."""
    if not isinstance(table, dict):
        raise InputError("hosts", f"{where}: [hosts]: expected a table with uris = [\"qemu:///system\", ...]")
    unknown = sorted(set(table) - {"uris"})
    if unknown:
        raise InputError("hosts", f"{where}: [hosts]: unknown key {shown(unknown[0])} (expected uris)")
    uris = table.get("uris")
    if not isinstance(uris, list) or not uris:
        raise InputError("hosts", f"{where}: [hosts] uris: expected a non-empty list of libvirt URIs")
    return [checked_uri(u, f"{where}: [hosts] uris") for u in uris]


def short_uri(uri: str | None) -> str:
    """A URI as the results table shows it: without its ?parameters (keyfile paths and the like are
    noise there; report.json keeps them), cut to SHORT_MAX characters. "-" when unknown."""
    if not uri:
        return "-"
    text = uri.split("?", 1)[0]
    return text if len(text) <= SHORT_MAX else text[:SHORT_MAX - 3] + "..."
