"""`make bench`: per-stage timings of the base scenarios, the lab's own overhead per run, and the
classifier's offline throughput. Results go to JSON; nothing here is a pass/fail test."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from . import paths, runner, transcript, verdict
from . import scenario as sc

CORPUS = paths.PROJECT.parent / "shared" / "corpus"


def _stage_times(report: dict) -> dict:
    stages = {s["name"]: s["t"] for s in report["stages"] if s["t"] is not None}
    panic = stages.get("panicked")
    return {name: {"from_resume": t, "from_panic": round(t - panic, 3) if panic is not None and t >= panic else None}
            for name, t in stages.items()}


def classifier_throughput(target_bytes: int = 8 * 2**20) -> dict:
    logs = [p.read_bytes() for p in sorted(CORPUS.glob("*.log"))] if CORPUS.exists() else []
    logs += [p.read_bytes() for p in sorted((paths.PROJECT / "tests" / "transcripts").glob("*.log"))]
    one = b"".join(logs)
    blob = one * max(1, target_bytes // max(1, len(one)))
    started = time.perf_counter()
    verdict.derive(transcript.read(blob))
    seconds = time.perf_counter() - started
    return {"bytes": len(blob), "seconds": round(seconds, 3), "mb_per_s": round(len(blob) / 2**20 / seconds, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lab.bench")
    parser.add_argument("--out", default="bench.json")
    parser.add_argument("--runs", type=int, default=1, help="runs of each scenario (median reported)")
    parser.add_argument("scenarios", nargs="*", default=list(sc.DEFAULT_RUN))
    args = parser.parse_args(argv)
    results = paths.results_dir() / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    out: dict = {"machine": {"node": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count()},
                 "scenarios": {}}
    for name in args.scenarios:
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
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for name, row in out["scenarios"].items():
        print(f"{name:<14} wall {row['wall_seconds_median']:6.1f} s   lab overhead {row['lab_overhead_seconds_median']:.2f} s"
              f"   teardown {row['teardown_seconds_median']:.2f} s")
    print(f"classifier     {out['classifier']['mb_per_s']} MB/s over {out['classifier']['bytes']} bytes")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
