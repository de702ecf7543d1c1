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

from . import paths, runner, transcript
from . import scenario as sc

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


def classifier_throughput(target_bytes: int = 100 * 2**20) -> dict:
    """Offline: the corpus concatenated into a ~100 MB file, classified from disk in CHUNK pieces."""
    one = _corpus_bytes()
    copies = max(1, target_bytes // len(one))
    with tempfile.TemporaryDirectory(prefix="panic-lab-bench-") as tmp:
        big = Path(tmp) / "corpus-concatenated.log"
        with big.open("wb") as out:
            for _ in range(copies):
                out.write(one)
        size = big.stat().st_size
        done = subprocess.run([sys.executable, "-c", _STREAM_CHILD, str(big)], capture_output=True, text=True,
                              cwd=paths.PROJECT, check=True)
    child = json.loads(done.stdout)
    return {"bytes": size, "copies_of_corpus": copies, "seconds": round(child["seconds"], 3),
            "mb_per_s": round(size / 2**20 / child["seconds"], 2), "events": child["events"],
            "chunk_bytes": transcript.CHUNK,
            "peak_rss_mib": round(child["rss_peak_kib"] / 1024, 1),
            "rss_growth_while_reading_mib": round((child["rss_peak_kib"] - child["rss_before_kib"]) / 1024, 1)}


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lab.bench")
    parser.add_argument("--out", default="bench.json")
    parser.add_argument("--runs", type=int, default=1, help="runs of each scenario (median reported)")
    parser.add_argument("--classifier-only", action="store_true", help="no guests: the classifier's figures only")
    parser.add_argument("scenarios", nargs="*", default=list(sc.DEFAULT_RUN))
    args = parser.parse_args(argv)
    results = paths.results_dir() / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    out: dict = {"machine": {"node": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count()},
                 "scenarios": {}}
    for name in ([] if args.classifier_only else args.scenarios):
        reports = [runner.run(sc.resolve(name), results) for _ in range(args.runs)]
        out["accel"] = reports[0]["accel"]["name"]
        out["scenarios"][name] = {
            "verdicts": [r["verdict"] for r in reports],
            "stages": [_stage_times(r) for r in reports],
            "wall_seconds_median": statistics.median(r["timings"]["wall_seconds"] for r in reports),
            "lab_overhead_seconds_median": statistics.median(r["timings"]["lab_seconds"] for r in reports),
            "teardown_seconds_median": statistics.median(r["timings"]["teardown_seconds"] for r in reports),
            "lab_overhead_parts": [r["timings"]["lab"] for r in reports],
        }
    out["classifier"] = classifier_throughput()
    out["streaming"] = streaming_latency()
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for name, row in out["scenarios"].items():
        print(f"{name:<14} wall {row['wall_seconds_median']:6.1f} s   lab overhead {row['lab_overhead_seconds_median']:.2f} s"
              f"   teardown {row['teardown_seconds_median']:.2f} s")
    c, st = out["classifier"], out["streaming"]
    print(f"classifier     {c['mb_per_s']} MB/s over {c['bytes'] / 2**20:.0f} MiB read from disk, peak RSS "
          f"{c['peak_rss_mib']} MiB (+{c['rss_growth_while_reading_mib']} MiB while reading, {c['events']} events)")
    print(f"streaming      line to stage event: median {st['median_us']} us, p99 {st['p99_us']} us, "
          f"max {st['max_us']} us ({st['events']} events)")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
