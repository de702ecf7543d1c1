"""report.html, as a developer reads it: per run the image and the kernel that booted, a link to the
console, the diagnosis with its KB linked, a timeline whose labels never overlap, and each stage's
evidence with the console lines around it (folded)."""
import re
import subprocess

from conftest import ROOT
from lab import recorded, results
from lab.verdict import derive
from lab.transcript import read
from lab.vocabulary import HostEvent

GEN1_STUCK = ROOT / "tests" / "transcripts" / "gen1-default-capture-kernel-stuck.log"


def _run_folder(tmp_path, log=GEN1_STUCK):
    """A finished run's folder as the runner leaves it: console.log beside report.json."""
    console = recorded.load(log).console
    folder = tmp_path / "lab-1" / "hyperv-kdump-default-1"
    folder.mkdir(parents=True)
    (folder / "console.log").write_bytes(console)
    v = derive(read(console))
    stages = [dict(vars(s), t=10.0 * n) for n, s in enumerate(v.stages, start=1)]
    report = {"run_id": folder.name, "scenario": {"name": "hyperv-kdump-default", "expect": "hang"},
              "verdict": "hang", "stage": v.stage, "expectation_met": True, "stages": stages,
              "diagnosis": "stuck. Fix: blacklist the hv_* drivers, as in Microsoft KB2858695.",
              "host_events": [{"kind": HostEvent.STALL, "t": 200.0, "text": "no progress"}],
              "image": {"name": "debian11", "key": "979483a7209b05f8", "kernel_booted": "5.10.0-46-amd64"},
              "timings": {"wall_seconds": 210.0},
              "artifacts": {"dir": str(folder), "transcript": "console.log"},
              "host": {"uri": "qemu+ssh://root@h1/system?keyfile=/root/.ssh/lab", "machine": "h1", "kernel": "6.1"}}
    return folder, report, console.decode(errors="replace").split("\n")


def test_each_run_shows_its_kernel_its_console_the_kb_and_each_stage_s_evidence_in_context(tmp_path):
    folder, report, lines = _run_folder(tmp_path)
    page = results.html_report([report], results.summary([report], "lab-1", 1, 210.0))
    assert "image debian11 (979483a7209b05f8), kernel <b>5.10.0-46-amd64</b>" in page
    # the host: short in the text (no keyfile), in full on hover; and per scenario in the matrix
    shown = '<span title="qemu+ssh://root@h1/system?keyfile=/root/.ssh/lab">qemu+ssh://root@h1/system</span>'
    assert f"<b>5.10.0-46-amd64</b>; host {shown};" in page
    assert f'<td class="hosts">{shown} (1)</td></tr>' in page
    assert f'<a href="{folder.name}/console.log">console.log</a>' in page
    assert '<a href="https://support.microsoft.com/kb/2858695">KB2858695</a>' in page
    folded = re.findall(r"<details><summary><b>(\w+)</b>.*?</summary><pre>(.*?)</pre></details>", page, re.S)
    assert [name for name, _ in folded] == [s["name"] for s in sorted(report["stages"], key=lambda s: s["line"])]
    for stage, (_, shown) in zip(sorted(report["stages"], key=lambda s: s["line"]), folded):
        marked = [row for row in shown.splitlines() if row.startswith("&gt;")]
        assert len(marked) == 1 and marked[0].split()[1] == str(stage["line"]), shown
        assert 2 <= len(shown.splitlines()) <= 2 * results.CONTEXT_LINES + 1


def test_a_hang_point_is_drawn_only_for_a_hang(tmp_path):
    _, report, _ = _run_folder(tmp_path)
    assert ">hang point</text>" in results._timeline_svg(report)
    report["verdict"] = "reboot"   # the same stall event, but the guest went on and reset
    assert "hang point" not in results._timeline_svg(report)


MEASURE = """<!DOCTYPE html><html><body>{svg}<script>
const boxes = [...document.querySelectorAll('text.label')].map(t => t.getBBox());
let overlaps = 0;
for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {{
  const a = boxes[i], b = boxes[j];
  if (a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height) overlaps++;
}}
document.body.dataset.labels = boxes.length; document.body.dataset.overlaps = overlaps;
</script></body></html>"""


def _overlaps_in_browser(chromium, svg, tmp_path):
    page = tmp_path / "timeline.html"
    page.write_text(MEASURE.format(svg=svg))
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-labels="(\d+)" data-overlaps="(\d+)"', dom.stdout)
    assert found, dom.stdout[-2000:]
    return int(found[1]), int(found[2])


def test_timeline_labels_do_not_overlap_as_the_browser_lays_them_out(tmp_path, need_tool, monkeypatch):
    """A dump whose last stages come within a second of each other (as trixie's and bullseye's did): the
    browser measures every label, and none touches another. On one row, as before, they did."""
    chromium = need_tool("chromium")
    crowded = {"run_id": "kdump-1", "verdict": "dump", "host_events": [], "timings": {"wall_seconds": 120.0},
               "stages": [{"name": n, "t": t} for n, t in (("booted", 5.7), ("armed", 56.3), ("panicked", 64.2),
                                                           ("capture_kernel_booted", 77.0), ("dump_saving", 110.2),
                                                           ("dump_saved", 117.0), ("reset", 117.5))]}
    assert _overlaps_in_browser(chromium, results._timeline_svg(crowded), tmp_path) == (7, 0)
    monkeypatch.setattr(results, "_label_rows", lambda labels, char_px=0: [0] * len(labels))
    labels, overlaps = _overlaps_in_browser(chromium, results._timeline_svg(crowded), tmp_path)
    assert labels == 7 and overlaps > 0   # the measurement can fail: one row does overlap
