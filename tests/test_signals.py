"""How the lab stops on a signal (lab/signals.py): SIGINT, SIGTERM and SIGHUP unwind alike, a signal
never lands between libvirt creating a domain and the lab keeping its handle, and a second signal does
not cut the cleanup short. Each case runs in a child Python, which sends the signals to itself."""
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT


def child(body: str) -> subprocess.CompletedProcess:
    script = "import os, signal, time\nfrom lab import signals\nsignals.install()\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)


def settle():
    return "time.sleep(0.05)\n"


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_each_stop_signal_unwinds_as_an_interrupt_named_after_it(sig):
    done = child(f"""
        try:
            os.kill(os.getpid(), signal.{sig}); {settle()}
        except KeyboardInterrupt as exc:
            print("unwound", exc.args[0])
        """)
    assert done.stdout.strip() == f"unwound {sig}", done.stderr


def test_a_signal_inside_a_held_block_waits_for_its_end():
    done = child(f"""
        try:
            with signals.held():
                os.kill(os.getpid(), signal.SIGTERM); {settle()}
                print("handle kept")
        except KeyboardInterrupt as exc:
            print("then unwound", exc.args[0])
        """)
    assert done.stdout.split("\n")[:2] == ["handle kept", "then unwound SIGTERM"], done.stderr


def test_the_second_signal_is_reported_and_the_cleanup_goes_on():
    done = child(f"""
        try:
            os.kill(os.getpid(), signal.SIGINT); {settle()}
        except KeyboardInterrupt:
            with signals.teardown():
                os.kill(os.getpid(), signal.SIGINT); {settle()}
                print("cleanup finished")
        """)
    assert "cleanup finished" in done.stdout, done.stderr
    assert "Ctrl-C again to abandon" in done.stderr


def test_a_third_signal_abandons_the_cleanup():
    done = child(f"""
        try:
            os.kill(os.getpid(), signal.SIGINT); {settle()}
        except KeyboardInterrupt:
            try:
                with signals.teardown():
                    os.kill(os.getpid(), signal.SIGINT); {settle()}
                    os.kill(os.getpid(), signal.SIGINT); {settle()}
                    print("cleanup finished")
            except KeyboardInterrupt:
                print("abandoned")
        """)
    assert done.stdout.strip() == "abandoned", done.stderr


def test_a_first_signal_during_a_normal_teardown_does_not_interrupt_it():
    done = child(f"""
        with signals.teardown():
            os.kill(os.getpid(), signal.SIGHUP); {settle()}
            print("cleanup finished")
        """)
    assert done.stdout.strip() == "cleanup finished", done.stderr
