"""Random input for the three ways a user's text gets in (a scenario file, `--set key=value`, a catalog):
each either gives valid objects or is refused with one line (InputError), never another exception, and
nothing is created on disk on the way."""
import dataclasses
import datetime as dt
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab import catalog
from lab import scenario as sc
from lab.errors import InputError

FIELDS = [f.name for f in dataclasses.fields(sc.Scenario)]
FUZZ = settings(max_examples=250, deadline=None, database=None,   # no .hypothesis folder in the project
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Where the input file goes, and where the lab would write: none of them may change."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "input").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_CACHE_DIR", str(root / "cache"))
        mp.setenv("LAB_RESULTS_DIR", str(root / "results"))
        mp.setenv("LAB_WORK_DIR", str(root / "work"))
        mp.delenv("LAB_CATALOG", raising=False)   # scenarios are checked against the project's own catalog
        yield root


def refused_in_one_line_or(call):
    """What call() returns, or None when it raised InputError with a one-line message."""
    try:
        return call()
    except InputError as exc:
        assert len(str(exc).splitlines()) == 1, repr(str(exc))
        return None


def nothing_made(root: Path) -> None:
    assert sorted(p.name for p in root.iterdir()) == ["input"]
    assert [p.name for p in (root / "input").iterdir()] in ([], ["input.toml"])


# -- TOML text from Python values ---------------------------------------------------------------------

def toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):   # JSON's escapes are TOML's, but TOML wants DEL escaped too
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml(str(k))} = {toml(v)}" for k, v in value.items()) + "}"


def document(tables: dict) -> str:
    return "".join(f"{toml(str(k))} = {toml(v)}\n" for k, v in tables.items())


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)   # no lone surrogates: not UTF-8
scalars = st.one_of(
    text, st.integers(), st.integers(-2, 5000), st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 0.0]),
    st.booleans(), st.dates(),
    st.datetimes(timezones=st.sampled_from([None, dt.timezone.utc, dt.timezone(dt.timedelta(hours=-5, minutes=-30))])),
    st.times(),
)
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                        max_leaves=6)

def mostly(likely, rarely, odds: int = 5):
    """`rarely` about once in `odds`: random keys and values everywhere would rarely get past the first check."""
    return st.integers(1, odds).flatmap(lambda n: rarely if n == odds else likely)


# Values a user might well write, so that the fuzz also gets past the first checks.
plausible = {
    "name": st.from_regex(r"[a-z0-9][a-z0-9-]{0,70}", fullmatch=True),
    "base": st.sampled_from(sorted(sc.BASE_SCENARIOS)),
    "image": st.sampled_from(["debian12", "centos7", "nope"]),
    "profile": st.sampled_from(sorted(sc.PROFILES)),
    "kdump_config": st.sampled_from(sc.KDUMP_CONFIGS),
    "fault": st.sampled_from(sc.FAULTS),
    "trigger": st.sampled_from(["sysrq", "nmi", "cpu:0", "cpu:1", "nmi\n"]),
    "expect": st.sampled_from(sc.VERDICTS),
    "crashkernel": st.sampled_from(["256M", "0", "1G", "256M\n"]),
    "repeat": st.integers(0, 120),
    "vcpus": st.integers(0, 3),
    "memory_mib": st.integers(200, 20000),
    "kernel_panic": st.integers(-2, 4000),
    "stall_seconds": st.floats() | st.integers(-1, 4000),
    "boot_seconds": st.floats() | st.integers(-1, 4000),
}
field_key = mostly(st.sampled_from(FIELDS + ["base"]), text, odds=20)


@st.composite
def scenario_table(draw) -> dict:
    keys = draw(st.lists(field_key, max_size=8, unique=True))
    if draw(st.integers(0, 4)) < 4:   # mostly a table that can stand: it has a name or a base
        keys.append(draw(st.sampled_from(["name", "base"])))
    return {k: draw(mostly(plausible[k], anything) if k in plausible else anything) for k in keys}


@st.composite
def scenario_document(draw) -> str:
    doc = {}
    if draw(st.integers(0, 9)) < 9:
        doc["scenario"] = draw(mostly(st.lists(scenario_table(), min_size=1, max_size=3),
                                      scenario_table() | anything))
    if draw(st.booleans()):
        axes = draw(st.lists(field_key, max_size=3, unique=True))
        doc["matrix"] = {k: draw(mostly(st.lists(plausible[k] if k in plausible else anything, min_size=1, max_size=3),
                                        anything)) for k in axes}
    if draw(st.integers(0, 4)) == 4:   # [hosts]: uris = [libvirt URIs]
        uri = mostly(st.sampled_from(["qemu:///system", "qemu+ssh://root@h/system?keyfile=/k", "test:///default",
                                      "qemu+ssh://h", "http://h/", "qemu:///sys tem"]), text)
        doc["hosts"] = draw(mostly(st.fixed_dictionaries({"uris": mostly(st.lists(uri, max_size=3), anything)}),
                                   anything))
    if draw(st.integers(0, 9)) == 9:
        doc[draw(text)] = draw(anything)
    return document(doc)


@given(content=scenario_document() | text | st.binary(max_size=64))
@FUZZ
def test_a_random_scenario_file_is_loaded_or_refused_in_one_line(places, content):
    path = places / "input" / "input.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    runs = refused_in_one_line_or(lambda: sc.load_file(str(path)))
    hosts = refused_in_one_line_or(lambda: sc.load_file_hosts(str(path)))
    assert hosts is None or all(isinstance(h, str) and "://" in h for h in hosts)
    assert runs is None or hosts is not None   # a file load_file takes has a [hosts] that is fine too
    for run in runs or []:
        assert isinstance(run, sc.Scenario) and sc.NAME.fullmatch(run.name)
        sc.validate(run)
    assert runs is None or sum(r.repeat for r in runs) <= sc.MAX_RUNS
    path.unlink()
    nothing_made(places)


override = mostly(
    st.builds(lambda key, sep, value: f"{key}{sep}{value}",
              mostly(st.sampled_from(FIELDS + ["kernel-panic", "memory.mib", " vcpus "]), text),
              mostly(st.just("="), st.sampled_from([" = ", ""])),
              mostly(st.sampled_from(["nan", "inf", "-inf", "1e999", "-0", "0", "1", "3600", "3601", "true", "yes",
                                      "cpu:0", "nmi\n", "99999999999999999999999", "1_0", "256M", "debian12", "dump"]),
                     text)),
    text,
)


@given(overrides=st.lists(override, max_size=4))
@FUZZ
def test_random_set_options_are_applied_or_refused_in_one_line(places, overrides):
    result = refused_in_one_line_or(lambda: sc.with_overrides(sc.BASE_SCENARIOS["panic-reboot"], overrides))
    if result is not None:
        sc.validate(result)
        assert math.isfinite(result.stall_seconds) and math.isfinite(result.boot_seconds)
    nothing_made(places)


catalog_plausible = {
    "url": st.sampled_from(["https://h/i.qcow2", "http://h/i.qcow2", "file:///etc/passwd", "https://h/..", "https://h/",
                            "https://h/a b.img", "https://h/i.img\n"]),
    "checksum_url": st.sampled_from(["https://h/SUMS", "http://h/SUMS", "ftp://h/SUMS"]),
    "checksum_entry": st.sampled_from(["i.qcow2"]),
    "sha256": st.sampled_from(["a" * 64, "ab", ""]),
    "checksum_algo": st.sampled_from(["sha256", "sha512", "md5"]),
    "family": st.sampled_from(["debian"]),
    "kdump": mostly(st.just("kdump-tools"), st.sampled_from(["dracut-kdump", "kdump-tools\n"])),
    "user": st.sampled_from(["debian"]),
    "crashkernel": st.sampled_from(catalog.CRASHKERNEL_WAYS),
    "packages": st.lists(st.sampled_from(["kdump-tools", "kexec-tools", "a;b", "x\n"]), max_size=2),
}
catalog_key = mostly(st.sampled_from(sorted(catalog.KEYS)), text, odds=20)


@st.composite
def catalog_table(draw) -> dict:
    keys = draw(st.sets(catalog_key, max_size=11))
    if draw(st.integers(0, 4)) < 4:   # mostly every required key, so that the later checks are reached
        keys |= {"url", "family", "kdump", "user", "crashkernel"}
    if draw(st.integers(0, 4)) < 4:
        keys |= {draw(st.sampled_from(["sha256", "checksum_url"]))}
    return {k: draw(mostly(catalog_plausible[k], anything) if k in catalog_plausible else anything) for k in keys}


entry_name = mostly(st.sampled_from(["debian12-cloud", "ubuntu20.04", "x_y"]),
                    st.sampled_from(["..", "a..b", "../../x", "a/b", ".x", "X", "x\n"]) | text, odds=10)


@given(content=st.dictionaries(entry_name, mostly(catalog_table(), anything), max_size=3).map(document)
       | text | st.binary(max_size=64))
@FUZZ
def test_a_random_catalog_is_loaded_or_refused_in_one_line(places, content):
    path = places / "input" / "input.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    entries = refused_in_one_line_or(lambda: catalog.load(path))
    for name, e in (entries or {}).items():
        assert catalog.NAME.fullmatch(name) and ".." not in name and e.name == name
        assert e.filename not in ("", ".", "..") and "/" not in e.filename
        assert e.sha256 or not (e.url.startswith("http://") or e.checksum_url.startswith("http://"))
    path.unlink()
    nothing_made(places)
