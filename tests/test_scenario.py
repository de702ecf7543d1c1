import pytest

from lab import scenario as sc
from lab.errors import InputError


def test_base_scenarios_are_valid_and_expect_their_verdicts():
    assert {s.name: s.expect for s in sc.BASE_SCENARIOS.values()} == {
        "panic-reboot": "reboot", "panic-hang": "hang", "kdump": "dump",
        "hyperv-kdump-default": "hang", "hyperv-kdump-kb2858695": "dump", "hyperv-kdump-timeout": "reboot", "hyperv-kdump-hvcrash": "dump",
        "hyperv-panic-hang": "hang", "hyperv-panic-reboot": "reboot", "hyperv-kdump-not-armed": "hang"}
    for s in sc.BASE_SCENARIOS.values():
        sc.validate(s)


def test_override_changes_only_what_is_asked():
    s = sc.with_overrides(sc.resolve("kdump"), ["kernel_panic=7", "memory_mib=2048"])
    assert (s.kernel_panic, s.memory_mib, s.kdump) == (7, 2048, True)


@pytest.mark.parametrize("override, words", [
    (["kernel_panic=abc"], "expected a number"),
    (["kernel_panic=99999"], "outside -1..3600"),
    (["memory_mib=512"], "leaves less than 384 MiB"),
    (["vcpus=64"], "host's cores"),
    (["crashkernel=lots"], "expected a size"),
    (["nonsense=1"], "unknown key 'nonsense'"),
    (["kdump"], "expected key=value"),
    (["kdump_cmdline_append=a;reboot"], "shell metacharacters"),
    (["stall_seconds=0"], "must be positive"),
    (["fault=stale-vmbus"], "needs profile hyperv-gen1"),
    (["fault=meteor"], "unknown fault 'meteor'"),
    (["hv_crash=true"], "hv_crash needs profile hyperv-gen1"),
    (["kdump_config=rhel5"], "unknown kdump_config 'rhel5'"),
])
def test_bad_values_are_refused_with_one_line(override, words):
    with pytest.raises(InputError) as err:
        sc.with_overrides(sc.resolve("kdump"), override)
    assert words in str(err.value)
    assert "\n" not in str(err.value)
    assert err.value.stage == "scenario"


def test_unknown_scenario_names_the_known_ones():
    with pytest.raises(InputError, match="unknown scenario 'nope'.*panic-reboot"):
        sc.resolve("nope")


def test_cmdline_carries_crashkernel_only_when_reserved():
    assert "crashkernel=256M" in sc.resolve("kdump").cmdline()
    assert "crashkernel" not in sc.with_overrides(sc.resolve("panic-hang"), ["crashkernel=0"]).cmdline()
