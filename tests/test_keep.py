"""--keep on a real guest: after its verdict the guest is left as it is, `lab ps` lists it, `lab attach`
reaches its serial console, and `lab stop` ends it (scratch and all)."""
import json

import pexpect
import pytest

from conftest import lab_command, run_lab
from lab import host, paths



def _domains() -> list[str]:
    conn = host.connect()
    try:
        return [d.name() for d in conn.listAllDomains()]
    finally:
        host.disconnect(conn)


@pytest.fixture
def kept_run(lab_run):
    yield lab_run
    if lab_run.report.get("kept") and lab_run.report["kept"]["domain"] in _domains():
        run_lab("stop", lab_run.report["run_id"], text=True)   # whatever the test found, nothing stays


@pytest.mark.live
@pytest.mark.lab(scenario="panic-hang", keep=True)
def test_a_kept_guest_stays_hung_until_it_is_stopped(kept_run):
    report = kept_run.report
    run_id, name = report["run_id"], report["kept"]["domain"]
    assert report["verdict"] == "hang" and report["kept"]["attach"] == f"lab attach {run_id}"
    assert name in _domains()

    listed = {g["run_id"]: g for g in json.loads(run_lab("ps", "--json", text=True).stdout)}
    assert listed[run_id]["kept"] is True and listed[run_id]["state"] == "running"
    assert (listed[run_id]["stage"], listed[run_id]["verdict"]) == ("panicked", "hang")

    console = pexpect.spawn(lab_command("attach", run_id)[0], lab_command("attach", run_id)[1:], timeout=30)
    console.expect("Connected to domain")
    console.send("\x1d")   # Ctrl-]: virsh detaches; the guest is untouched
    console.expect(pexpect.EOF)
    assert name in _domains()

    stopped = run_lab("stop", run_id, text=True)
    assert stopped.returncode == 0, stopped.stderr
    assert name not in _domains()
    assert not (paths.work_dir() / run_id).exists()
    assert run_id not in {g["run_id"] for g in json.loads(run_lab("ps", "--json", text=True).stdout)}
    gone = run_lab("attach", run_id, text=True)   # the run is over: one line, nothing started
    assert gone.returncode == 2 and gone.stderr.count("\n") == 1 and f"no lab guest {run_id!r}" in gone.stderr


@pytest.mark.libvirt
def test_stopping_or_attaching_to_a_guest_that_is_not_there_is_one_line():
    for command in ("stop", "attach"):
        done = run_lab(command, "no-such-run", text=True)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no lab guest 'no-such-run'" in done.stderr
