"""Stage 6 for a set of runs: summary.json (rates, percentiles), junit.xml, report.html and the table
printed at the end of `lab run`, made from the runs' report.json form; and a finished run's vmcore,
read back from its folder (`lab vmcore RUN`)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from . import debuginfo, vmcore
from .errors import HostError, InputError, shown_path
from .hosts_option import short_uri
from .transcript import console_lines
from .vocabulary import HostEvent, Stage


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)


def _stage_times(report: dict) -> dict[str, float]:
    """Seconds from the panic (or from the trigger, when the panic line never reached the console)."""
    stages = {s["name"]: s["t"] for s in report.get("stages", []) if s.get("t") is not None}
    start = stages.get("panicked")
    if start is None:
        start = next((e["t"] for e in report.get("host_events", []) if e["kind"] == HostEvent.TRIGGER), None)
    if start is None:
        return {}
    return {name: round(t - start, 3) for name, t in stages.items() if t >= start}


def host_uri(report: dict) -> str | None:
    """The libvirt URI a run used, in full; None when its report does not know (a run that never started)."""
    return (report.get("host") or {}).get("uri")


def summary(reports: list[dict], invocation: str, parallel: int, wall: float) -> dict:
    """Per scenario: how many runs ended how, whether the expectations held, stage time percentiles, and
    how many of its runs each host ran (a run whose host is not known is not counted there)."""
    scenarios: dict[str, dict] = {}
    for r in reports:
        name = r["scenario"]["name"]
        row = scenarios.setdefault(name, {"runs": 0, "expect": r["scenario"].get("expect"),
                                          "counts": {v: 0 for v in ("reboot", "dump", "hang", "unknown", "error")},
                                          "expectation_met": 0, "times": {}, "hosts": {}})
        row["runs"] += 1
        if (uri := host_uri(r)):
            row["hosts"][uri] = row["hosts"].get(uri, 0) + 1
        row["counts"][r["verdict"] or "error"] += 1
        row["expectation_met"] += r.get("expectation_met") is True
        for stage, t in _stage_times(r).items():
            row["times"].setdefault(stage, []).append(t)
    for row in scenarios.values():
        row["rates"] = {v: round(n / row["runs"], 3) for v, n in row["counts"].items() if n}
        row["stage_seconds_from_panic"] = {
            stage: {"n": len(ts), "p50": _percentile(ts, 0.5), "p90": _percentile(ts, 0.9), "max": max(ts)}
            for stage, ts in row.pop("times").items()}
    return {"invocation": invocation, "parallel": parallel, "wall_seconds": round(wall, 1), "runs": len(reports),
            "all_expectations_held": all(r.get("expectation_met") is not False and not r.get("cut_short")
                                         for r in reports),
            "hosts": list(dict.fromkeys(uri for r in reports if (uri := host_uri(r)))),
            "scenarios": scenarios,
            "run_list": [{"run_id": r.get("run_id"), "scenario": r["scenario"]["name"], "verdict": r["verdict"],
                          "expected": r["scenario"].get("expect"), "stage": r.get("stage"),
                          "diagnosis": r.get("diagnosis") or r.get("error"),
                          "folder": (r.get("artifacts") or {}).get("dir"), "host": host_uri(r)} for r in reports]}


def _excerpt(report: dict, lines: int = 40) -> str:
    """The console around the last evidence line: what a reader of a failed test needs first."""
    folder = (report.get("artifacts") or {}).get("dir")
    log = Path(folder) / "console.log" if folder else None
    if not log or not log.exists():
        return ""
    text = log.read_bytes().decode(errors="replace").replace("\r", "").splitlines()
    marks = [e["line"] for e in report.get("evidence", []) if e.get("line")]
    end = min(len(text), (max(marks) + 5) if marks else len(text))
    return "\n".join(text[max(0, end - lines):end])


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_safe(text: str) -> str:
    """Console text as XML 1.0 may carry it: a control character (ESC in every colour code) is
    written as its \\xNN escape, so the file stays well-formed and the reader still sees it."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


def junit(reports: list[dict], invocation: str) -> str:
    """One testcase per run; stage timings as properties; a transcript excerpt in each failure."""
    from xml.etree import ElementTree as ET
    failures = sum(1 for r in reports if r.get("expectation_met") is False and not r.get("cut_short"))
    errors = sum(1 for r in reports if r.get("cut_short"))
    suite = ET.Element("testsuite", name=f"panic-lab {invocation}", tests=str(len(reports)),
                       failures=str(failures), errors=str(errors),
                       time=str(round(sum((r.get("timings") or {}).get("wall_seconds", 0) for r in reports), 1)))
    for r in reports:
        case = ET.SubElement(suite, "testcase", classname=f"panic-lab.{r['scenario']['name']}",
                             name=r.get("run_id") or r["scenario"]["name"],
                             time=str((r.get("timings") or {}).get("wall_seconds", 0)))
        props = ET.SubElement(case, "properties")
        for key, value in [("verdict", r["verdict"] or "error"), ("stage", r.get("stage") or ""),
                           ("expected", r["scenario"].get("expect") or ""), ("host", host_uri(r) or "")] + \
                          [(f"seconds_from_panic.{k}", v) for k, v in _stage_times(r).items()]:
            ET.SubElement(props, "property", name=key, value=str(value))
        if r.get("cut_short"):
            error = ET.SubElement(case, "error", message=_xml_safe(str(r["cut_short"].get("why"))),
                                  type=str(r["cut_short"].get("by")))
            error.text = _xml_safe(_excerpt(r))
        elif r.get("expectation_met") is False:
            failure = ET.SubElement(case, "failure", type="verdict",
                                    message=_xml_safe(f"expected {r['scenario'].get('expect')}, got {r['verdict']}: {r.get('diagnosis')}"))
            failure.text = _xml_safe(_excerpt(r))
        ET.SubElement(case, "system-out").text = _xml_safe(r.get("diagnosis") or r.get("error") or "")
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


# How the timeline labels each stage (in the stages' own order).
TIMELINE_LABELS = {Stage.BOOTED: "boot", Stage.ARMED: "armed", Stage.PANICKED: "panic",
                   Stage.CAPTURE_KERNEL_BOOTED: "capture kernel", Stage.DUMP_SAVING: "dump", Stage.DUMP_SAVED: "saved",
                   Stage.RESET: "reset", Stage.BACK_AT_LOGIN: "login"}
COLOURS = {"reboot": "#2b7bb9", "dump": "#2e8b57", "hang": "#c0392b", "unknown": "#7f8c8d", "error": "#8e44ad"}


def _label_rows(labels: list[tuple[str, float]], char_px: float = 6.6) -> list[int]:
    """A row for each label (x-sorted, with its x): the first row where it does not touch the one before."""
    ends: list[float] = []
    rows = []
    for label, x in labels:
        half = (len(label) * char_px + 8) / 2
        row = next((n for n, end in enumerate(ends) if end < x - half), len(ends))
        if row == len(ends):
            ends.append(0.0)
        ends[row] = x + half
        rows.append(row)
    return rows


def _timeline_svg(r: dict, width: int = 720) -> str:
    """Stages on a time axis (seconds since the domain was resumed), and where a hang stopped. Labels that
    would touch go on rows of their own."""
    from html import escape
    points = [(TIMELINE_LABELS[Stage(s["name"])], s["t"]) for s in sorted(r.get("stages", []), key=lambda s: Stage(s["name"]).order)
              if s.get("t") is not None]
    stall = [e for e in r.get("host_events", []) if e["kind"] in (HostEvent.STALL, HostEvent.STRANDED)]
    if stall and r.get("verdict") == "hang":   # where the guest stopped; a run that went on has no such point
        points.append(("hang point", stall[0]["t"]))
    end = max([t for _, t in points] + [(r.get("timings") or {}).get("wall_seconds") or 1.0, 1.0])
    x = lambda t: 20 + (width - 40) * t / end   # noqa: E731
    points.sort(key=lambda p: p[1])
    rows = _label_rows([(label, x(t)) for label, t in points])
    axis = 16 + 13 * (max(rows, default=0) + 1)
    colour = COLOURS[r["verdict"] or "error"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{axis + 34}" role="img" '
             f'aria-label="timeline of {escape(r.get("run_id") or "")}">',
             f'<line x1="20" y1="{axis}" x2="{width - 20}" y2="{axis}" stroke="#bbb"/>']
    for tick in range(0, int(end) + 1, max(10, int(end / 8) // 10 * 10 or 10)):
        parts.append(f'<text x="{x(tick):.1f}" y="{axis + 30}" font-size="10" text-anchor="middle" fill="#666">{tick}s</text>')
    for (label, t), row in zip(points, rows):
        fill = "#c0392b" if label == "hang point" else colour
        parts.append(f'<circle cx="{x(t):.1f}" cy="{axis}" r="5" fill="{fill}"><title>{escape(label)} at {t:.1f} s</title></circle>')
        parts.append(f'<text class="label" x="{x(t):.1f}" y="{axis - 10 - 13 * row}" font-size="11" '
                     f'text-anchor="middle">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# Knowledge-base articles a diagnosis names, linked where the report shows it.
KB_LINKS = {"KB2858695": "https://support.microsoft.com/kb/2858695"}
CONTEXT_LINES = 3   # console lines shown around each stage's evidence


def _console_lines(r: dict) -> list[str] | None:
    """The run's console, numbered as the stages' `line` counts it."""
    artifacts = r.get("artifacts") or {}
    try:
        return console_lines((Path(artifacts["dir"]) / artifacts.get("transcript", "console.log")).read_bytes())
    except (KeyError, TypeError, OSError):
        return None


def _run_html(r: dict) -> str:
    from html import escape
    verdict = r["verdict"] or "error"
    diagnosis = escape(r.get("diagnosis") or r.get("error") or "")
    for kb, url in KB_LINKS.items():
        diagnosis = diagnosis.replace(kb, f'<a href="{url}">{kb}</a>')
    img = r.get("image") or {}
    kernel = debuginfo.booted_release(r) or "?"
    artifacts = r.get("artifacts") or {}
    folder = Path(artifacts["dir"]).name if artifacts.get("dir") else ""
    console_link = (f' <a href="{escape(folder)}/{escape(artifacts.get("transcript", "console.log"))}">console.log</a>'
                    if folder else "")
    lines = _console_lines(r)
    evidence = []
    for stage in sorted((s for s in r.get("stages", []) if s.get("line")), key=lambda s: s["line"]):
        n, t = stage["line"], stage.get("t")
        summary = (f'<summary><b>{escape(stage["name"])}</b>{f" at {t:.1f} s" if t is not None else ""}, line {n}: '
                   f'<code>{escape(stage["text"][:160])}</code></summary>')
        if lines and n <= len(lines):
            shown = range(max(1, n - CONTEXT_LINES), min(len(lines), n + CONTEXT_LINES) + 1)
            body = "\n".join(f'{">" if i == n else " "}{i:>6}  {lines[i - 1]}' for i in shown)
            evidence.append(f"<details>{summary}<pre>{escape(body)}</pre></details>")
        else:
            evidence.append(f"<details>{summary}<p>(the console log is not beside the report)</p></details>")
    return (f'<section class="run"><h3><span class="badge {verdict}">{verdict}</span> '
            f'{escape(r.get("run_id") or r["scenario"]["name"])}</h3>'
            f'<p>image {escape(img.get("name") or "?")} ({escape(img.get("key") or "?")}), kernel '
            f'<b>{escape(kernel)}</b>; host {_host_html(host_uri(r))};{console_link}</p>'
            f'<p>stage reached: <b>{escape(r.get("stage") or "-")}</b>; {diagnosis}</p>{_timeline_svg(r)}'
            f'<div class="evidence">{"".join(evidence)}</div></section>')


def _host_html(uri: str | None) -> str:
    """The short form shown, the full URI on hover."""
    from html import escape
    return f'<span title="{escape(uri)}">{escape(short_uri(uri))}</span>' if uri else "-"


def html_report(reports: list[dict], data: dict) -> str:
    """One self-contained page (no scripts, no external files): the verdict matrix, then each run: its
    image and kernel, its console, the diagnosis, its timeline and each stage's evidence in context."""
    from html import escape
    verdicts = ["reboot", "dump", "hang", "unknown", "error"]
    rows = []
    for name, row in data["scenarios"].items():
        cells = "".join(f'<td class="n {v if row["counts"][v] else ""}">{row["counts"][v] or ""}</td>' for v in verdicts)
        held = "" if not row["expect"] else ("held" if row["expectation_met"] == row["runs"] else
                                             f'{row["expectation_met"]}/{row["runs"]} held')
        hosts = ", ".join(f"{_host_html(uri)} ({n})" for uri, n in row.get("hosts", {}).items()) or "-"
        rows.append(f'<tr><th>{escape(name)}</th><td>{escape(row["expect"] or "-")}</td>{cells}'
                    f'<td>{escape(held)}</td><td class="hosts">{hosts}</td></tr>')
    runs = [_run_html(r) for r in reports]
    style = ("body{font:14px sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}td.n{text-align:center;min-width:3em}"
             + "".join(f".{v}{{background:{c}22}}.badge.{v}{{background:{c};color:#fff}}" for v, c in COLOURS.items())
             + ".badge{padding:2px 8px;border-radius:4px;font-size:12px}.run{margin:1.5em 0}"
             "details{margin:2px 0}pre{background:#f6f6f6;padding:6px;overflow-x:auto;font-size:12px}")
    head = "".join(f"<th>{v}</th>" for v in verdicts)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>panic-lab {escape(data["invocation"])}</title>'
            f'<style>{style}</style></head><body><h1>panic-lab results: {escape(data["invocation"])}</h1>'
            f'<p>{data["runs"]} run(s), {data["parallel"]} at a time, {data["wall_seconds"]} s; every expectation '
            f'{"held" if data["all_expectations_held"] else "did <b>not</b> hold"}.</p>'
            f'<h2>Verdicts</h2><table id="matrix"><tr><th>scenario</th><th>expected</th>{head}<th>expectation</th>'
            '<th>hosts</th></tr>'
            f'{"".join(rows)}</table><h2>Runs</h2>{"".join(runs)}</body></html>\n')


def write_invocation(folder: Path, reports: list[dict], parallel: int, wall: float) -> dict:
    """summary.json, junit.xml and report.html at the top of an invocation's results folder."""
    data = summary(reports, folder.name, parallel, wall)
    for name, text in (("summary.json", json.dumps(data, indent=2, default=str) + "\n"),
                       ("junit.xml", junit(reports, folder.name)),
                       ("report.html", html_report(reports, data))):
        try:
            (folder / name).write_text(text)
        except OSError as exc:
            raise HostError("report", f"cannot write {folder / name}: {exc.strerror}") from None
    return data


def _vmcore_cell(vm: dict) -> str:
    """The host's check of the dump: how many, passed or failed, and the size as saved."""
    if not vm:
        return "-"
    size = f", {vm['size'] / 2**20:.1f} MiB" if vm.get("size") else ""
    return f"{vm.get('count', 0)} {vm.get('check', '')}{size}"


def table(reports: list[dict]) -> str:
    """The runs, one line each; the host in its short form (short_uri), the full URI is in report.json."""
    rows = [("scenario", "host", "accel", "verdict", "expected", "stage", "vmcore", "wall", "diagnosis")]
    for r in reports:
        vm = r.get("vmcore") or {}
        host = short_uri(host_uri(r))
        if "error" in r:   # the run failed on the host before it had a report
            rows.append((r["scenario"]["name"], host, "-", "error", r["scenario"].get("expect") or "-", "-", "-", "-",
                         r["error"][:90]))
            continue
        rows.append((r["scenario"]["name"], host, r["accel"]["name"], r["verdict"] or "error", r.get("expected") or "-",
                     r["stage"], _vmcore_cell(vm),
                     f"{r['timings']['wall_seconds']:.0f}s", r["diagnosis"][:90]))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return "\n".join(lines)


# Where the crashed kernel's own report starts: an oops prints its trace before the panic line.
REPORT_START = re.compile(r"cut here|BUG: |Oops: |general protection fault|Unable to handle kernel|sysrq: Trigger a crash")


def vmcore_opened(run_id: str, results: Path, lines: int = 25, symbols: bool = False,
                  vmlinux: Path | None = None) -> list[str]:
    """`lab vmcore RUN`: what the host's check found in a finished run's folder, and the crashed kernel's
    log from its report on (extracted with makedumpfile --dump-dmesg, no debug symbols needed). `results`
    is the results root or one invocation's folder. With `symbols` (--debuginfo), or a `vmlinux` of its
    own, also the crashed task's backtrace, unwound from the dump with the kernel's debug symbols."""
    if vmlinux is not None and not vmlinux.is_file():
        raise InputError("vmcore", f"--vmlinux {shown_path(vmlinux)}: no such file")
    named = re.fullmatch(r"[a-z0-9-]+", run_id)
    folders = sorted([*results.glob(f"*/{run_id}/report.json"), *results.glob(f"{run_id}/report.json")]) if named else []
    if not folders:
        raise InputError("vmcore", f"no finished run {run_id!r} under {results} (a run id, as report.json names it)")
    folder = folders[-1].parent
    try:
        report = json.loads(folders[-1].read_text())
        found = report.get("vmcore")
        if not found or not found.get("file"):
            why = (found or {}).get("why") or "no capture kernel ran"
            raise InputError("vmcore", f"run {run_id} has no vmcore (verdict {report.get('verdict')}): {why}")
        dmesg = (folder / found["dmesg"]).read_text(errors="replace").splitlines() if found.get("dmesg") else []
        out = [f"vmcore: {folder / found['file']} ({found['size'] / 2**20:.1f} MiB {found['format']} as saved at "
               f"{found['guest_path']}; check {found['check']})",
               f"panic line: {found['dump_panic'] or '(none in the dump)'}; the console's "
               f"{'matches' if found.get('panic_lines_match') else 'differs'}"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError("vmcore", f"{folder}: cannot read the run's report or vmcore-dmesg.txt ({exc})") from None
    if dmesg:
        panics = [i for i, line in enumerate(dmesg) if vmcore.PANIC_TEXT.search(line)]
        if panics:   # from the start of the crashed kernel's report (its trace) on
            starts = [i for i in range(max(0, panics[-1] - 80), panics[-1] + 1) if REPORT_START.search(dmesg[i])]
            start = starts[0] if starts else panics[-1]
        else:
            start = max(0, len(dmesg) - lines)
        shown = dmesg[start:start + lines]
        out += [f"the crashed kernel's log, lines {start + 1}-{start + len(shown)} of {len(dmesg)} "
                f"({folder / found['dmesg']}):", *shown]
    if symbols or vmlinux is not None:
        out += debuginfo.backtrace(folder / found["file"], vmlinux or debuginfo.vmlinux_for(report),
                                   debuginfo.booted_release(report))
    return out
