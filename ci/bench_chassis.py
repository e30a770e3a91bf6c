"""What the chassis costs a generated workspace, before and after, in one run (issue 28;
run it with ci/bench-chassis). Two generators, each built optimised: one from a git ref
(`--before`, e.g. the 0.8.0 release) and this tree. For each, on the same machine and in
alternation:

  lines     of `new shop --contexts orders,billing` (Kafka): total, Rust, one context's
            service, the vendored platform; files in .archscaffold/base/; and the share of
            orders' Rust lines (longer than three characters) that are byte-identical to a
            line of billing's
  new       `archscaffold new` for 2 and 50 contexts, cold (empty formatting cache) and
            warm, median of --runs, the two generators alternating
  build     cold `cargo build --workspace` of the 2-context workspace in a fresh target
            directory, then the incremental build after an edit of orders' rules.rs

Prints a table and writes the figures as JSON to --out. Only local processes; every loop
is bounded by --runs.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import count_files, generate_once  # noqa: E402
from bench_common import BenchError, cargo_build, log, run  # noqa: E402

EDITED_FILE = "services/orders/src/domain/rules.rs"


def rust_lines(root, under=""):
    """Lines of the .rs files under root/under."""
    total = 0
    for directory, subdirs, files in os.walk(os.path.join(root, under)):
        subdirs[:] = [d for d in subdirs if d not in (".git", ".archscaffold", "target")]
        for name in files:
            if name.endswith(".rs"):
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    total += sum(1 for _ in f)
    return total


def all_lines(root):
    total = 0
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in (".git", ".archscaffold", "target")]
        for name in files:
            with open(os.path.join(directory, name), "rb") as f:
                total += f.read().count(b"\n")
    return total


def significant_lines(root, under):
    """The Rust lines of a service longer than three characters (stripped), in order."""
    lines = []
    for directory, subdirs, files in sorted(os.walk(os.path.join(root, under))):
        subdirs.sort()
        for name in sorted(files):
            if name.endswith(".rs"):
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    lines.extend(line.rstrip("\n") for line in f if len(line.strip()) > 3)
    return lines


def identical_share(root, a, b):
    """Share of a's significant lines that occur byte for byte among b's."""
    mine = significant_lines(root, a)
    theirs = set(significant_lines(root, b))
    return sum(1 for line in mine if line in theirs) / max(1, len(mine))


def measure_lines(generator, work):
    out = os.path.join(work, "lines", "shop")
    shutil.rmtree(out, ignore_errors=True)
    run([generator, "new", "shop", "--contexts", "orders,billing", "--bus", "kafka", "--out", out, "--no-git"],
        stdout=subprocess.DEVNULL)
    figures = {
        "total_lines": all_lines(out),
        "rust_lines": rust_lines(out),
        "context_rust_lines": rust_lines(out, "services/orders"),
        "platform_rust_lines": rust_lines(out, "crates/platform"),
        "base_files": count_files(os.path.join(out, ".archscaffold", "base")),
        "identical_share": identical_share(out, "services/orders", "services/billing"),
    }
    shutil.rmtree(out, ignore_errors=True)
    return figures


def measure_new(generators, work, sizes, runs):
    """`new` per side and size, cold then warm, the sides alternating run by run so that
    the machine's noise falls on both alike."""
    rows = {side: {} for side in generators}
    for n in sizes:
        names = ",".join(f"ctx{i:03d}" for i in range(n))
        times = {side: {"cold": [], "warm": []} for side in generators}
        for attempt in range(runs):
            for side, generator in generators.items():
                out = os.path.join(work, f"new-{side}-{n}")
                cache = os.path.join(work, f"new-cache-{side}-{n}")
                shutil.rmtree(cache, ignore_errors=True)
                times[side]["cold"].append(generate_once(generator, n, names, out, cache)[0])
                times[side]["warm"].append(generate_once(generator, n, names, out, cache)[0])
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(cache, ignore_errors=True)
        for side in generators:
            rows[side][n] = {kind: statistics.median(values) for kind, values in
                             (("cold_s", times[side]["cold"]), ("warm_s", times[side]["warm"]))}
    return rows


def measure_build(generator, work, runs):
    workspace = os.path.join(work, "build", "shop")
    target = os.path.join(work, "build", "target")
    shutil.rmtree(os.path.dirname(workspace), ignore_errors=True)
    run([generator, "new", "shop", "--contexts", "orders,billing", "--bus", "kafka", "--out", workspace, "--no-git"],
        stdout=subprocess.DEVNULL)
    cold_s, cold_crates = cargo_build(workspace, target)
    times = []
    for attempt in range(runs):
        with open(os.path.join(workspace, EDITED_FILE), "a") as f:
            f.write(f"\n// benchmark edit {attempt}\n")
        elapsed, compiled = cargo_build(workspace, target)
        if compiled == 0:
            raise BenchError(f"editing {EDITED_FILE} recompiled nothing")
        times.append(elapsed)
    shutil.rmtree(os.path.dirname(workspace), ignore_errors=True)
    return {"cold_s": cold_s, "cold_crates": cold_crates, "incremental_s": statistics.median(times)}


def table(results):
    before, after = results["before"], results["after"]
    rows = [
        ("lines, total", "total_lines", "{:.0f}"),
        ("lines, Rust", "rust_lines", "{:.0f}"),
        ("Rust lines of one context (orders)", "context_rust_lines", "{:.0f}"),
        ("Rust lines of the platform", "platform_rust_lines", "{:.0f}"),
        ("files in .archscaffold/base/", "base_files", "{:.0f}"),
        ("orders' lines identical to billing's", "identical_share", "{:.0%}"),
    ]
    out = [f"| | {results['before_label']} | {results['after_label']} | after / before |", "|---|---:|---:|---:|"]
    for label, key, fmt in rows:
        b, a = before["lines"][key], after["lines"][key]
        out.append(f"| {label} | {fmt.format(b)} | {fmt.format(a)} | {a / b if b else 0:.2f} |")
    for n in sorted(before["new"], key=int):
        for kind in ("cold", "warm"):
            b, a = before["new"][n][f"{kind}_s"], after["new"][n][f"{kind}_s"]
            out.append(f"| `new`, {n} contexts, {kind} | {b * 1000:.0f} ms | {a * 1000:.0f} ms | {a / b:.2f} |")
    if "build" in before:
        for label, key in (("cold debug build", "cold_s"), ("incremental build after editing rules.rs", "incremental_s")):
            b, a = before["build"][key], after["build"][key]
            out.append(f"| {label} | {b:.0f} s | {a:.0f} s | {a / b:.2f} |")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before-generator", required=True)
    parser.add_argument("--before-label", required=True)
    parser.add_argument("--after-generator", required=True)
    parser.add_argument("--after-label", default="this tree")
    parser.add_argument("--out", required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-build", action="store_true", help="skip the cold builds (minutes each)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-chassis-", dir=args.out)
    results = {"before_label": args.before_label, "after_label": args.after_label,
               "before": {}, "after": {}}
    sides = (("before", args.before_generator), ("after", args.after_generator))
    for side, generator in sides:
        log(f"{side}: lines")
        results[side]["lines"] = measure_lines(generator, work)
    log("new, both sides alternating")
    for side, rows in measure_new(dict(sides), work, [2, 50], args.runs).items():
        results[side]["new"] = rows
    if not args.no_build:
        for side, generator in sides:
            log(f"{side}: cold build (a fresh target directory), then incremental")
            results[side]["build"] = measure_build(generator, work, args.runs)
    shutil.rmtree(work, ignore_errors=True)
    with open(os.path.join(args.out, "chassis.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(table(results))


if __name__ == "__main__":
    try:
        main()
    except (BenchError, subprocess.CalledProcessError) as e:
        print(f"bench failed: {e}", file=sys.stderr)
        sys.exit(1)
