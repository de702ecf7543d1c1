"""Two `lab run` invocations at once on one host: one image build, and nothing shared but the image."""
import json
import os
import subprocess
from pathlib import Path

import pytest
from junitparser import JUnitXml

from conftest import spawn_lab
from lab import paths

pytestmark = pytest.mark.live



def test_two_runs_at_once_build_the_image_once_and_do_not_collide(tmp_path):
    # A cache without the image: both runs need it, and only one may build it.
    env = dict(os.environ, LAB_CACHE_DIR=str(tmp_path / "cache"), LAB_RESULTS_DIR=str(tmp_path / "results"))
    labs = [spawn_lab("run", "panic-reboot", "--json", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)]
    outputs = [lab.communicate(timeout=900) for lab in labs]
    for lab, (out, err) in zip(labs, outputs):
        assert lab.returncode == 0, err[-2000:]
    builds = sum(err.count("image: building debian12") for _, err in outputs)
    assert builds == 1, "the image was built more than once"
    reports = [json.loads(out)[0] for out, _ in outputs]
    assert reports[0]["run_id"] != reports[1]["run_id"]
    assert all(r["verdict"] == "reboot" for r in reports), [r["diagnosis"] for r in reports]
    folders = {Path(r["artifacts"]["dir"]) for r in reports}
    assert len(folders) == 2 and all(f.parent.parent == tmp_path / "results" for f in folders)
    assert len({f.parent for f in folders}) == 2   # each invocation has its own results folder
    assert reports[0]["image"]["key"] == reports[1]["image"]["key"]
    # both runs' scratch is gone; the marked folder that held it stays
    assert [p.name for p in (tmp_path / "cache" / "runs").iterdir()] == [paths.MARK]
    for folder in folders:   # the seed's user-data holds the guest's root password
        assert (folder / "user-data").stat().st_mode & 0o077 == 0
    for suite_file in (tmp_path / "results").glob("*/junit.xml"):   # a real run's console, escapes and all
        suite = next(iter(JUnitXml.fromfile(str(suite_file))))
        assert [case.name for case in suite] == [r["run_id"] for r in reports if r["artifacts"]["dir"].startswith(str(suite_file.parent))]
