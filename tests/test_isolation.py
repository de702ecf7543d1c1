"""Two `lab run` invocations at once on one host: nothing shared but the image, which is built once.

The build lock is shown on a tiny recipe (the real one takes two minutes; `make image` and the fault
tests' build points run it), the rest on two real guests.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from junitparser import JUnitXml

from conftest import ROOT
from lab import image, paths

TINY_RECIPE = """#!/bin/sh
# A recipe with the real one's outputs, made in two seconds; each build leaves its pid in the ledger.
set -e
echo $$ >> "$LEDGER"
sleep 2
echo 0.0-test > "$1/kernel-version"
for f in disk.qcow2 vmlinuz initrd.img; do : > "$1/$f"; done
"""
ENSURE = "import sys; from pathlib import Path; from lab import image; " \
         "image.RECIPES['tiny'] = image.Recipe(Path(sys.argv[1]), 'tiny'); print(image.ensure('tiny').disk)"


def test_two_invocations_that_both_need_a_new_image_build_it_once(tmp_path, monkeypatch):
    recipe = tmp_path / "tiny"
    recipe.mkdir()
    (recipe / "build.sh").write_text(TINY_RECIPE)
    (recipe / "build.sh").chmod(0o755)
    env = dict(os.environ, LAB_CACHE_DIR=str(tmp_path / "cache"), LEDGER=str(tmp_path / "ledger"))
    both = [subprocess.Popen([sys.executable, "-c", ENSURE, str(recipe)], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in both]
    assert [p.returncode for p in both] == [0, 0], [err for _, err in outputs]
    assert len((tmp_path / "ledger").read_text().split()) == 1, "the recipe ran more than once"
    assert sum(err.count("image: building tiny") for _, err in outputs) == 1
    disks = {out.strip() for out, _ in outputs}
    assert len(disks) == 1 and Path(disks.pop()).parent.name.startswith("tiny-")
    # no build folder is left, only the finished image (and the lab's mark)
    monkeypatch.setitem(image.RECIPES, "tiny", image.Recipe(recipe, "tiny"))
    assert [p.name for p in (tmp_path / "cache" / "images").iterdir()] == [f"tiny-{image.recipe_key('tiny')}"]


@pytest.mark.live
def test_two_invocations_at_once_keep_their_runs_apart(side_by_side):
    """A two-run matrix and a single run, started together (conftest.side_by_side): one results root,
    one scratch root, and nothing shared but the image."""
    tmp, matrix, single = side_by_side
    for done in (matrix, single):
        assert done.returncode == 0, done.stderr[-2000:]
    reports = matrix.reports + single.reports
    assert len(reports) == 3 and len({r["run_id"] for r in reports}) == 3
    assert all(r["verdict"] == "reboot" for r in reports), [r["diagnosis"] for r in reports]
    folders = {Path(r["artifacts"]["dir"]) for r in reports}
    assert len(folders) == 3 and all(f.parent.parent == tmp / "results" for f in folders)
    assert {f.parent for f in folders} == {matrix.folder, single.folder} and matrix.folder != single.folder
    assert len({r["image"]["key"] for r in reports}) == 1
    # every run's scratch is gone; the marked folder that held it stays
    assert [p.name for p in (tmp / "work" / "panic-lab").iterdir()] == [paths.MARK]
    for folder in folders:   # the seed's user-data holds the guest's root password
        assert (folder / "user-data").stat().st_mode & 0o077 == 0
    for done in (matrix, single):   # each invocation's junit.xml names its own runs, a real console in each
        suite = next(iter(JUnitXml.fromfile(str(done.folder / "junit.xml"))))
        assert [case.name for case in suite] == [r["run_id"] for r in done.reports]
