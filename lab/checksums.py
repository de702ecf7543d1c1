"""What vouches for a published image's digest: the catalog's pinned sha256, or the project's
checksum file.

Part of stage 1, image. A checksum file from the image's own server says the download is intact, not
who made it; a pinned digest in the catalog is reviewed like any other change.
"""
from __future__ import annotations

import re
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from .errors import HostError

if TYPE_CHECKING:
    from .catalog import Entry

PINNED = "the catalog's pinned sha256"
UNSIGNED = "an unsigned checksum file"
TIMEOUT = 30       # seconds without a byte before a download counts as stalled


def fetch(url: str, start: int = 0):
    """An open HTTP response for `url` (from byte `start`); failures are one-line HostErrors."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        raise HostError("pull", f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise HostError("pull", f"{url}: {getattr(exc, 'reason', exc)}") from None


def expected(e: Entry) -> tuple[str, str]:
    """The digest the download must have, and what vouches for it."""
    if e.sha256:
        return e.sha256.lower(), PINNED
    with fetch(e.checksum_url) as response:
        data = response.read(4 << 20)
    return _digest_in(data.decode(errors="replace"), e), UNSIGNED


def _digest_in(text: str, e: Entry) -> str:
    want = e.checksum_entry
    for line in text.splitlines():
        # GNU: "digest  name" or "digest *name"; BSD: "SHA256 (name) = digest"
        gnu = re.match(r"^([0-9a-fA-F]{64,128})\s+\*?(\S+)$", line.strip())
        bsd = re.match(r"^(SHA\d+) \((.+)\) = ([0-9a-fA-F]{64,128})$", line.strip())
        if gnu and gnu.group(2) == want:
            return gnu.group(1).lower()
        if bsd and bsd.group(2) == want:
            return bsd.group(3).lower()
    raise HostError("pull", f"{e.checksum_url} has no entry for {want}")
