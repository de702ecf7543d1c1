"""`make bench`: per-stage timings of the base scenarios, the lab's own overhead per run, and the
classifier's offline throughput. Results go to JSON; nothing here is a pass/fail test."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import batch, budget, paths, runner, transcript
from . import scenario as sc
from .vocabulary import HostEvent

CORPUS = paths.PROJECT.parent / "shared" / "corpus"


def _stage_times(report: dict) -> dict:
    stages = {s["name"]: s["t"] for s in report["stages"] if s["t"] is not None}
    panic = stages.get("panicked")
    return {name: {"from_resume": t, "from_panic": round(t - panic, 3) if panic is not None and t >= panic else None}
            for name, t in stages.items()}


def _corpus_bytes() -> bytes:
    logs = [p.read_bytes() for p in sorted(CORPUS.glob("*.log"))] if CORPUS.exists() else []
    logs += [p.read_bytes() for p in sorted((paths.PROJECT / "tests" / "transcripts").glob("*.log"))]
    return b"".join(logs)


# Run in a child process, so that its peak RSS is the reader's alone.
_STREAM_CHILD = """
import json, sys, time
from lab import transcript, verdict
def hwm():   # this process's peak RSS in KiB (ru_maxrss would carry the parent's over exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
before = hwm()
started = time.perf_counter()
with open(sys.argv[1], "rb") as log:
    events = transcript.read(log)
v = verdict.derive(events)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "events": len(events), "verdict": v.verdict,
                  "rss_before_kib": before, "rss_peak_kib": hwm()}))
"""


def classifier_throughput(target_bytes: int = 100 * 2**20, repeats: int = 3) -> dict:
    """Offline: the corpus concatenated into a ~100 MB file, classified from disk in CHUNK pieces; the
    median of `repeats` passes, each in a fresh process."""
    one = _corpus_bytes()
    copies = max(1, target_bytes // len(one))
    with tempfile.TemporaryDirectory(prefix="panic-lab-bench-") as tmp:
        big = Path(tmp) / "corpus-concatenated.log"
        with big.open("wb") as out:
            for _ in range(copies):
                out.write(one)
        size = big.stat().st_size
        children = [json.loads(subprocess.run([sys.executable, "-c", _STREAM_CHILD, str(big)], capture_output=True,
                                              text=True, cwd=paths.PROJECT, check=True).stdout) for _ in range(repeats)]
    child = sorted(children, key=lambda c: c["seconds"])[len(children) // 2]
    return {"bytes": size, "copies_of_corpus": copies, "repeats": repeats, "seconds": round(child["seconds"], 3),
            "mb_per_s": round(size / 2**20 / child["seconds"], 2), "events": child["events"],
            "chunk_bytes": transcript.CHUNK,
            "peak_rss_mib": round(child["rss_peak_kib"] / 1024, 1),
            "rss_growth_while_reading_mib": round((child["rss_peak_kib"] - child["rss_before_kib"]) / 1024, 1)}


# A log of nothing but panic lines: each starts a cycle, and each cycle gets its own verdict.
_PANICS_CHILD = """
import json, sys, time
from lab import verdict
data = b"[   40.100000] Kernel panic - not syncing: sysrq triggered crash\\n" * int(sys.argv[1])
started = time.perf_counter()
v = verdict.classify(data)
print(json.dumps({"seconds": time.perf_counter() - started, "cycles": len(v.earlier) + v.earlier_omitted + 1}))
"""


def panic_lines(lines: int = 64_000, repeats: int = 3) -> dict:
    """`lines` panic lines classified (read and verdict) in a fresh process, the marker database compiled
    in it too; the median of `repeats`."""
    children = [json.loads(subprocess.run([sys.executable, "-c", _PANICS_CHILD, str(lines)], capture_output=True,
                                          text=True, cwd=paths.PROJECT, check=True).stdout) for _ in range(repeats)]
    child = sorted(children, key=lambda c: c["seconds"])[len(children) // 2]
    return {"lines": lines, "repeats": repeats, "seconds": round(child["seconds"], 3), "cycles": child["cycles"]}


def streaming_latency(repeats: int = 20) -> dict:
    """Live mode: the corpus fed one line per call, as a console delivers it; the latency of a stage event
    is the time from handing its line to the reader to getting the event back."""
    lines = _corpus_bytes().splitlines(keepends=True) * repeats
    reader = transcript.Reader()
    latencies = []
    for line in lines:
        started = time.perf_counter()
        if reader.feed(line):
            latencies.append(time.perf_counter() - started)
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e6, 1)
    return {"lines": len(lines), "events": len(latencies), "median_us": pct(0.5), "p99_us": pct(0.99),
            "max_us": round(latencies[-1] * 1e6, 1)}


SEED_MATRIX = ("panic-reboot", "panic-hang", "hyperv-kdump-default", "hyperv-kdump-kb2858695")
PARTS = ("scenarios", "snapshot", "matrix", "hog", "parallel", "classifier")


def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def _stage_medians(reports: list[dict]) -> dict:
    names = {n for r in reports for n in _stage_times(r)}
    return {n: _median([_stage_times(r).get(n, {}).get("from_panic") for r in reports]) for n in sorted(names)}


def hang_declaration(report: dict) -> dict | None:
    """For a run that stalled: how long after its last stage the lab declared it stuck, against the deadline
    it had, and how long the verdict then waited on the teardown."""
    stall = next((e for e in report["host_events"] if e["kind"] == HostEvent.STALL), None)
    if stall is None or not report["stages"]:
        return None
    last = report["stages"][-1]
    deadline = stall.get("deadline_s")
    after = stall["t"] - last["t"]
    return {"stage": last["name"], "deadline_s": deadline, "declared_after_s": round(after, 3),
            "over_deadline_s": round(after - deadline, 3) if deadline is not None else None,
            "then_teardown_s": report["timings"]["teardown_seconds"]}


def bench_scenarios(names, runs: int, results: Path) -> dict:
    out = {}
    for name in names:
        reports = [runner.run(sc.resolve(name), results).to_json() for _ in range(runs)]
        hangs = [h for h in map(hang_declaration, reports) if h]
        out[name] = {
            "runs": runs, "verdicts": [r["verdict"] for r in reports],
            "stage_seconds_from_panic_median": _stage_medians(reports),
            "wall_seconds_median": _median([r["timings"]["wall_seconds"] for r in reports]),
            "verdict_after_panic_seconds_median": _median([_verdict_after_panic(r) for r in reports]),
            "decided_by": [(r.get("decided_by") or {}).get("rule") or (r.get("decided_by") or {}).get("kind") for r in reports],
            "lab_overhead_seconds_median": _median([r["timings"]["lab_seconds"] for r in reports]),
            "teardown_seconds_median": _median([r["timings"]["teardown_seconds"] for r in reports]),
            "accel": reports[0]["accel"]["name"],
            "hang_over_deadline_seconds_median": _median([h["over_deadline_s"] for h in hangs]) if hangs else None,
            "hang_teardown_seconds_median": _median([h["then_teardown_s"] for h in hangs]) if hangs else None,
        }
    return out


def _verdict_after_panic(report: dict) -> float | None:
    """Seconds from the panic to the moment the verdict was certain (report verdict_t)."""
    panicked = next((s["t"] for s in report["stages"] if s["name"] == "panicked"), None)
    return round(report["verdict_t"] - panicked, 3) if panicked is not None and report.get("verdict_t") else None


def bench_snapshot(runs: int, results: Path, name: str = "kdump") -> dict:
    """A cold run against a repeat restored from a snapshot (the snapshot made first, not timed)."""
    runner.run(sc.resolve(name), results, snapshot=True)   # makes the snapshot if there is none
    cold = [runner.run(sc.resolve(name), results).to_json() for _ in range(runs)]
    warm = [runner.run(sc.resolve(name), results, snapshot=True).to_json() for _ in range(runs)]
    return {"scenario": name, "runs": runs,
            "cold_resume_to_verdict_median": _median([r["verdict_t"] for r in cold]),
            "snapshot_restore_to_verdict_median": _median([r["verdict_t"] for r in warm]),
            "vmcore_checks_snapshot": [(r["vmcore"] or {}).get("check") for r in warm],
            "cold_wall_median": _median([r["timings"]["wall_seconds"] for r in cold]),
            "snapshot_wall_median": _median([r["timings"]["wall_seconds"] for r in warm]),
            "verdicts_cold": [r["verdict"] for r in cold], "verdicts_snapshot": [r["verdict"] for r in warm],
            "clock_behind_seconds": [r["snapshot"]["clock"]["behind_seconds"] for r in warm]}


def bench_matrix(runs: int, results: Path) -> dict:
    """The seed matrix as `lab run` runs it (default parallelism): from warm snapshots (each made before
    the clock starts), and cold (every guest booted; the image cache warm)."""
    scenarios = [sc.resolve(n) for n in SEED_MATRIX]
    parallel = batch.default_parallel(scenarios)
    for s in scenarios:
        runner.run(s, results, snapshot=True)
    out = {"scenarios": list(SEED_MATRIX), "parallel": parallel, "runs": runs}
    for kind, snapshot in (("warm", True), ("cold", False)):
        walls, verdicts = [], []
        for _ in range(runs):
            started = time.monotonic()
            reports = batch.run_many(scenarios, results, parallel, snapshot=snapshot)
            walls.append(time.monotonic() - started)
            verdicts.append([r["verdict"] for r in reports])
        out[kind] = {"wall_seconds": [round(w, 1) for w in walls], "wall_seconds_median": _median(walls),
                     "verdicts": verdicts}
    return out


HOG = "while True: pass"


def bench_hog(runs: int, results: Path) -> dict:
    """The seed matrix, cold, while a busy loop holds every core: load must slow the runs, never change
    their verdicts (the early rules do not depend on time; the deadlines that remain are stretched)."""
    scenarios = [sc.resolve(n) for n in SEED_MATRIX]
    parallel = batch.default_parallel(scenarios)
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(os.cpu_count() or 1)]
    try:
        rounds = []
        for _ in range(runs):
            started = time.monotonic()
            reports = batch.run_many(scenarios, results, parallel)
            rounds.append({"wall_seconds": round(time.monotonic() - started, 1),
                           "verdicts": {r["scenario"]["name"]: r["verdict"] for r in reports},
                           "expectations_held": all(r.get("expectation_met") for r in reports)})
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    return {"scenarios": list(SEED_MATRIX), "hogs": len(hogs), "parallel": parallel, "rounds": rounds,
            "verdicts_unchanged": all(r["expectations_held"] for r in rounds)}


def bench_parallel(runs: int, results: Path, name: str = "panic-reboot") -> dict:
    """1, 2 and 3 runs at once on this machine: the wall time of the batch and of each run."""
    out = {}
    for n in (1, 2, 3):
        walls, each = [], []
        for _ in range(runs):
            started = time.monotonic()
            reports = batch.run_many([sc.resolve(name)] * n, results, n)
            walls.append(time.monotonic() - started)
            each += [r["timings"]["wall_seconds"] for r in reports]
        out[str(n)] = {"batch_wall_median": _median(walls), "run_wall_median": _median(each),
                       "runs_per_minute": round(60 * n / _median(walls), 2)}
    return out


def _machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return {"node": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(), "cpu": model,
            "mem_available_mib": budget.available_mib()}


def main(argv=None) -> int:
    from . import signals
    signals.install()   # SIGTERM and SIGHUP unwind like Ctrl-C: the run in flight cleans up after itself
    try:
        return _bench(argv)
    except KeyboardInterrupt as exc:
        print(f"bench: interrupted ({exc.args[0] if exc.args else 'SIGINT'}); nothing written", file=sys.stderr)
        return 130


def _bench(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lab.bench", description="Benchmarks; every figure a median of --runs.")
    parser.add_argument("--out", default="bench.json")
    parser.add_argument("--runs", type=int, default=3, help="runs behind each median (default 3)")
    parser.add_argument("--only", action="append", choices=PARTS, help="run only these parts (repeatable)")
    parser.add_argument("--classifier-only", action="store_true", help="same as --only classifier")
    parser.add_argument("scenarios", nargs="*", default=list(SEED_MATRIX))
    args = parser.parse_args(argv)
    parts = ["classifier"] if args.classifier_only else (args.only or list(PARTS))
    results = paths.results_dir() / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    results.mkdir(parents=True, exist_ok=True)
    out: dict = {"machine": _machine(), "runs_per_median": args.runs, "parts": parts}
    if "scenarios" in parts:
        out["scenarios"] = bench_scenarios(args.scenarios, args.runs, results)
    if "snapshot" in parts:
        out["snapshot"] = bench_snapshot(args.runs, results)
    if "matrix" in parts:
        out["matrix"] = bench_matrix(args.runs, results)
    if "hog" in parts:
        out["hog"] = bench_hog(args.runs, results)
    if "parallel" in parts:
        out["parallel"] = bench_parallel(args.runs, results)
    if "classifier" in parts:
        out["classifier"] = classifier_throughput(repeats=args.runs)
        out["classifier"]["panic_lines"] = panic_lines(repeats=args.runs)
        out["streaming"] = streaming_latency()
    if any(p != "classifier" for p in parts):
        from . import accel as accel_mod, host
        out["accel"] = accel_mod.cached_choice(host.connect())
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(table(out))
    print(f"written to {args.out}")
    return 0


def table(out: dict) -> str:
    lines = [f"machine: {out['machine']['cpu']} x{out['machine']['cpus']}, accel {out.get('accel', '-')}; "
             f"medians of {out['runs_per_median']}"]
    for name, row in out.get("scenarios", {}).items():
        stages = ", ".join(f"{k} {v}" for k, v in row["stage_seconds_from_panic_median"].items() if v is not None)
        lines.append(f"{name:<24} wall {row['wall_seconds_median']:6.1f} s  lab overhead "
                     f"{row['lab_overhead_seconds_median']:.2f} s  teardown {row['teardown_seconds_median']:.2f} s  "
                     f"from the panic: {stages}; verdict certain {row['verdict_after_panic_seconds_median']} s "
                     f"after the panic ({', '.join(map(str, row['decided_by']))})")
        if row.get("hang_over_deadline_seconds_median") is not None:
            lines.append(f"{'':<24} hang declared {row['hang_over_deadline_seconds_median']} s past its stage deadline, "
                         f"then {row['hang_teardown_seconds_median']} s of teardown before the verdict")
    if "snapshot" in out:
        s = out["snapshot"]
        lines.append(f"snapshot ({s['scenario']})      resume->verdict: cold {s['cold_resume_to_verdict_median']} s, "
                     f"from snapshot {s['snapshot_restore_to_verdict_median']} s; wall (vmcore checked) "
                     f"{s['cold_wall_median']} s vs {s['snapshot_wall_median']} s; checks {s['vmcore_checks_snapshot']}")
    if "matrix" in out:
        m = out["matrix"]
        for kind in ("warm", "cold"):
            lines.append(f"seed matrix, {kind}        {m[kind]['wall_seconds_median']} s wall ({m['parallel']} at a time"
                         f"{', from snapshots' if kind == 'warm' else ''}); verdicts {', '.join(m[kind]['verdicts'][-1])}")
    if "hog" in out:
        h = out["hog"]
        for n, r in enumerate(h["rounds"], 1):
            lines.append(f"seed matrix, {h['hogs']} CPU hogs  round {n}: {r['wall_seconds']} s wall, verdicts "
                         f"{', '.join(f'{k} {v}' for k, v in r['verdicts'].items())}; expectations held: {r['expectations_held']}")
    for n, row in out.get("parallel", {}).items():
        lines.append(f"{n} at once                batch {row['batch_wall_median']} s, each run {row['run_wall_median']} s, "
                     f"{row['runs_per_minute']} runs/min")
    if "classifier" in out:
        c, st = out["classifier"], out["streaming"]
        lines.append(f"classifier               {c['mb_per_s']} MB/s over {c['bytes'] / 2**20:.0f} MiB read from disk, "
                     f"peak RSS {c['peak_rss_mib']} MiB ({c['events']} events)")
        p = c["panic_lines"]
        lines.append(f"{p['lines']:,} panic lines       {p['seconds']} s to classify ({p['cycles']} cycles)")
        lines.append(f"streaming                line to stage event: median {st['median_us']} us, p99 {st['p99_us']} us")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
