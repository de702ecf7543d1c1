"""`lab`: run scenarios on real guests, classify saved logs, list images, clean up."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import paths, signals
from .errors import LabError


def _scenarios(args) -> list:
    from . import scenario as sc
    chosen, sources = [], []
    for item in args.scenarios or sc.DEFAULT_RUN:
        if item.endswith(".toml") or "/" in item:
            loaded = sc.load_file(item)
            chosen += loaded
            sources += [item] * len(loaded)
        else:
            chosen.append(sc.resolve(item))
            sources.append(f"built-in {item}")
    overrides = list(args.set) + ([f"repeat={args.repeat}"] if args.repeat is not None else [])
    overrides += [f"image={args.image}"] if args.image else []
    if args.kernel_package:
        overrides.append(f"kernel={args.kernel_package}")
    if args.kernel_deb:
        overrides.append(f"kernel={os.path.abspath(args.kernel_deb)}")
    overrides += ["keep=true"] if getattr(args, "keep", False) else []
    chosen = [sc.with_overrides(s, overrides) for s in chosen] if overrides else chosen
    sc.check_total(chosen, sources)   # the invocation as a whole: its size, and one scenario per name
    return chosen


def _hosts(args) -> list[str] | None:
    """The hosts asked for (lab/hosts_option.py): --host, else the scenario files' [hosts], else LAB_HOSTS."""
    from . import hosts_option
    from . import scenario as sc
    files = [item for item in getattr(args, "scenarios", None) or [] if item.endswith(".toml") or "/" in item]
    named = [uri for item in files for uri in sc.load_file_hosts(item)]
    return hosts_option.chosen_hosts(args.host, named, os.environ)


def _check_writable(root: Path) -> None:
    """The results folder can be made (or written) here: checked before anything is contacted or created."""
    probe = root
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise LabError("results", f"cannot create {root}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise LabError("results", f"cannot create {root}: {probe} is not writable")


def _cmd_run(args) -> int:
    import time
    import uuid
    scenarios = _scenarios(args)   # everything is validated before anything is created
    hosts = _hosts(args)
    from . import batch, host, image, results   # after: a refused scenario is answered without them
    if args.parallel is not None and not 1 <= args.parallel <= 16:
        raise LabError("run", f"--parallel {args.parallel} is outside 1..16")
    root = Path(args.results) if args.results else paths.results_dir()
    _check_writable(root)
    if args.dry_run:
        return _dry_run(scenarios, root, hosts)
    missing = host.missing_tools(raw_disks=any(s.profile == "hyperv-gen1" for s in scenarios))
    if missing:
        raise LabError("host", f"not installed: {', '.join(missing)}; `make setup` installs them")
    for name, kernel in dict.fromkeys((s.image, s.kernel) for s in scenarios):
        image.check_in_archive(name, kernel)
    # Every host must answer (or at least one, the others named) before a results folder is made.
    if hosts:
        from .placement import Placement
        hosts = Placement.open(hosts, sys.stderr)
    else:
        host.disconnect(host.connect())
    parallel = args.parallel or batch.default_parallel(scenarios, hosts)
    folder = root / f"lab-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise LabError("results", f"cannot create {folder}: {exc.strerror}") from None
    runs = sum(s.repeat for s in scenarios)
    print(f"lab: {runs} run(s), {parallel} at a time; results in {folder}", file=sys.stderr, flush=True)
    started = time.monotonic()
    reports = batch.run_many(scenarios, folder, parallel, snapshot=args.snapshot, hosts=hosts)
    data = results.write_invocation(folder, reports, parallel, time.monotonic() - started)
    if args.json:
        print(json.dumps(reports, indent=2, default=str))
    else:
        print(results.table(reports))
        for name, row in data["scenarios"].items():
            if row["runs"] > 1:
                rates = ", ".join(f"{v} {n}" for v, n in row["counts"].items() if n)
                print(f"{name}: {row['runs']} runs: {rates}")
        print(f"\nresults: {folder} (summary.json, junit.xml, one folder per run)")
    return 0 if data["all_expectations_held"] else 1


def _dry_run(scenarios, root: Path, hosts: list[str] | None) -> int:
    import time
    from . import dryrun, host
    folder = root / f"dry-run-{time.strftime('%Y%m%d-%H%M%S')}"
    default = f"{host.uri()} (the default host: LAB_URI or {host.DEFAULT_URI})"
    print(f"hosts: {', '.join(hosts) if hosts else default}")
    for scenario in scenarios:
        print(f"{scenario.name} ({scenario.profile}, image {scenario.image}, expect {scenario.expect or '-'}):")
        for piece in dryrun.plan(scenario, folder / scenario.name):
            print(f"  {piece.what:<22} {piece.path}")
        print("  " + (folder / scenario.name / "cmdline.txt").read_text().replace("\n", "\n  ").rstrip())
    print(f"\nnothing was started or created on the host; the rendered files are in {folder}")
    return 0


def _cmd_scenarios(args) -> int:
    from . import scenario as sc
    rows = [{"name": s.name, "profile": s.profile, "expect": s.expect, "what": s.description,
             "kernel_panic": s.kernel_panic, "kdump": s.kdump, "kdump_config": s.kdump_config, "fault": s.fault or None}
            for s in sc.BASE_SCENARIOS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['profile']:<11}  expect {r['expect'] or '-':<6}  {r['what']}")
    return 0


def _cmd_ps(args) -> int:
    from . import kept
    guests = kept.listing()
    if args.json:
        print(json.dumps([g.to_json() for g in guests], indent=2))
        return 0
    if not guests:
        print("no lab guests on this host")
    for g in guests:
        age = f"{g.age_seconds / 60:.0f} min" if g.age_seconds is not None else "?"
        what = f"kept at {g.stage} ({g.verdict})" if g.kept else f"a run in progress (pid {g.owner})"
        print(f"{g.run_id:<48} {g.state:<9} {age:>7}  {what}")
    return 0


def _cmd_attach(args) -> int:
    from . import host, kept
    guest = kept.find(args.run)
    print(f"lab: attaching to {guest.domain}'s serial console; Ctrl-] detaches", file=sys.stderr, flush=True)
    os.execvp("virsh", ["virsh", "-c", host.uri(), "console", guest.domain])


def _cmd_stop(args) -> int:
    from . import kept
    for line in kept.stop(args.run):
        print(line)
    return 0


def _cmd_classify(args) -> int:
    from . import recorded
    outputs = []
    sources = args.files or ["-"]
    for name in sources:
        if name == "-":
            v, label = recorded.classify_saved(sys.stdin.buffer)
        else:
            try:
                with open(name, "rb") as log:
                    v, label = recorded.classify_saved(log)
            except OSError as exc:
                raise LabError("classify", f"cannot read {name}: {exc.strerror}") from None
        outputs.append({"file": name, **v.to_json(), **({"label": label} if label else {})})
    if args.json:
        print(json.dumps(outputs if len(outputs) > 1 else outputs[0], indent=2))
    else:
        for out in outputs:
            how = f", {out['confidence']} by {out['rule']}" if out["confidence"] else f", {out['rule']}"
            print(f"{out['file']}: {out['verdict']} (stage {out['stage']}{how}): {out['diagnosis']}")
            if "label" in out:
                print(f"    labelled {out['label']['verdict']} (stage {out['label']['stage']}) in its header; "
                      "lines are counted from the first line after its --- line")
            for ev in out["evidence"]:
                print(f"    line {ev['line']}: {ev['text']}")
    return 0


def _cmd_vmcore(args) -> int:
    from . import results
    if args.lines < 1:
        raise LabError("vmcore", f"--lines {args.lines}: expected 1 or more")
    root = Path(args.results) if args.results else paths.results_dir()
    vmlinux = Path(args.vmlinux) if args.vmlinux else None
    for line in results.vmcore_opened(args.run, root, args.lines, args.debuginfo, vmlinux):
        print(line)
    return 0


def _cmd_images(args) -> int:
    from . import image
    if args.action == "build":
        if args.name and args.name not in image.RECIPES:
            raise LabError("image", f"{args.name!r} is not built here (recipes: {', '.join(image.RECIPES)}); "
                                    "a published image is pulled: `lab images pull NAME`")
        img = image.ensure(args.name or image.DEFAULT)
        print(img.disk)
        return 0
    if args.action == "pull":
        if not args.name:
            raise LabError("image", "which image? `lab images pull NAME` (names: `lab images`)")
        print(image.pull(args.name))
        return 0
    print("built offline (lab images build NAME):")
    for row in image.listing():
        state = f"cached, {row['size_bytes'] / 2**20:.0f} MiB, {row['disk']}" if row["cached"] else "not built"
        print(f"  {row['name']:<16} {row['key']}  {state}")
    print("published cloud images (lab images pull NAME, or lab run --image NAME; none was booted here):")
    for row in image.published_listing():
        if row["cached"]:
            state = f"cached, {row['size_bytes'] / 2**20:.0f} MiB; digest checked against {row['checked']}"
        elif row["partial_bytes"]:
            state = (f"partial, {row['partial_bytes'] / 2**20:.0f} MiB downloaded (pull again to resume); "
                     f"to be checked against {row['checked']}")
        else:
            state = f"available; to be checked against {row['checked']}"
        print(f"  {row['name']:<16} {row['family']:<6} {row['kdump']:<12}  {state}")
    return 0


def _cmd_clean(args) -> int:
    from . import clean
    hosts = _hosts(args)
    for line in clean.clean(images=args.images, force=args.force, snapshots=args.snapshots, hosts=hosts):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run scenarios on real guests (default: the three base scenarios)")
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO|FILE.toml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a scenario value")
    p.add_argument("--results", metavar="DIR", help="where results folders go (default: ./results)")
    p.add_argument("--parallel", type=int, metavar="N", help="runs at once (default: from cores and free memory)")
    p.add_argument("--repeat", type=int, metavar="N", help="run each scenario N times")
    p.add_argument("--image", metavar="NAME", help="run on this image (`lab images`); a published one is pulled "
                                                   "when it is not in the cache")
    kernel = p.add_mutually_exclusive_group()
    kernel.add_argument("--kernel-package", metavar="SUITE/PACKAGE",
                        help="boot a kernel from Debian's archive instead of the image's own, e.g. "
                             "bookworm-backports/linux-image-amd64 (the image is rebuilt with it, cached)")
    kernel.add_argument("--kernel-deb", metavar="PATH",
                        help="boot the kernel of this package (e.g. from `make bindeb-pkg`) instead of the image's own")
    p.add_argument("--snapshot", action="store_true",
                   help="restore each run from a ready-to-panic snapshot of its configuration instead of booting")
    p.add_argument("--keep", action="store_true",
                   help="leave each guest as it is after its verdict (lab ps, lab attach RUN, lab stop RUN)")
    p.add_argument("--dry-run", action="store_true",
                   help="render the domain XML, seed, command lines and kdump config of each run, start nothing")
    p.add_argument("--host", action="append", default=[], metavar="URI",
                   help="a libvirt host to spread the runs over, e.g. qemu+ssh://root@h/system (repeatable; "
                        "else the files' [hosts], else LAB_HOSTS, else LAB_URI or qemu:///system)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_cmd_run)
    p = sub.add_parser("ps", help="lab guests on this host: kept ones (--keep) and runs in progress")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_cmd_ps)
    p = sub.add_parser("attach", help="the serial console of a lab guest (virsh console)")
    p.add_argument("run", metavar="RUN")
    p.set_defaults(fn=_cmd_attach)
    p = sub.add_parser("stop", help="destroy a kept lab guest and remove its scratch")
    p.add_argument("run", metavar="RUN")
    p.set_defaults(fn=_cmd_stop)
    p = sub.add_parser("scenarios", help="the built-in scenarios: name, profile, expected verdict, what each shows")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_cmd_scenarios)
    p = sub.add_parser("vmcore", help="a finished dump run's vmcore: where it is, its panic line, the end of its dmesg")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--lines", type=int, default=25, help="lines of the crashed kernel's log to print (default 25)")
    p.add_argument("--results", metavar="DIR", help="where the runs are (default: LAB_RESULTS_DIR or ./results)")
    symbols = p.add_mutually_exclusive_group()
    symbols.add_argument("--debuginfo", action="store_true",
                         help="also the crashed task's backtrace, with the kernel's debug symbols fetched from "
                              "Debian's archive (linux-image-RELEASE-dbg, about 1 GB once per kernel, cached)")
    symbols.add_argument("--vmlinux", metavar="PATH", help="the same with this vmlinux (your own kernel's, with debug info)")
    p.set_defaults(fn=_cmd_vmcore)
    p = sub.add_parser("classify", help="classify saved serial logs (or stdin) into a verdict")
    p.add_argument("files", nargs="*", metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_cmd_classify)
    p = sub.add_parser("images", help="list images, build the offline one, or pull a published one")
    p.add_argument("action", nargs="?", choices=["list", "build", "pull"], default="list")
    p.add_argument("name", nargs="?")
    p.set_defaults(fn=_cmd_images)
    p = sub.add_parser("clean", help="remove what the lab made: its domains, overlays and probe leftovers")
    p.add_argument("--images", action="store_true", help="also remove cached images")
    p.add_argument("--snapshots", action="store_true", help="also remove ready-to-panic snapshots")
    p.add_argument("--force", action="store_true", help="also remove domains of lab runs still going")
    p.add_argument("--host", action="append", default=[], metavar="URI",
                   help="clean this libvirt host (repeatable; else LAB_HOSTS, else LAB_URI or qemu:///system)")
    p.set_defaults(fn=_cmd_clean)
    args = parser.parse_args(argv)
    signals.install()   # SIGTERM and SIGHUP unwind like Ctrl-C: every run's teardown still happens
    try:
        return args.fn(args)
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"lab: interrupted ({exc.args[0] if exc.args else 'SIGINT'})", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lab classify … | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
