"""Turns the benchmark's results.json into the table (printed, and written as results.md),
the plot (bench.png) and, with --readme, the README's benchmark section (between the
`<!-- bench:begin -->` and `<!-- bench:end -->` markers). Each figure is set against its
target from the benchmark issue."""

import argparse
import json
import math
import os
import sys

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def verdict(ok):
    return "met" if ok else "**missed**"


def growth_exponent(rows):
    """The slope of log(time) against log(contexts) between the two largest sizes:
    1 is linear growth."""
    a, b = rows[-2], rows[-1]
    return math.log(b["median_s"] / a["median_s"]) / math.log(b["contexts"] / a["contexts"])


def targets(results):
    """(target, measured, verdict) rows."""
    rows = []
    gen = {r["contexts"]: r for r in results["generation"]}
    if 2 in gen:
        t = gen[2]["median_s"]
        rows.append(("generate 2 contexts < 0.1 s", f"{t:.3f} s", verdict(t < 0.1)))
    if 50 in gen:
        t = gen[50]["median_s"]
        rows.append(("generate 50 contexts < 1 s", f"{t:.3f} s", verdict(t < 1)))
    if len(gen) >= 2:
        e = growth_exponent(results["generation"])
        rows.append(("generation grows close to linearly", f"exponent {e:.2f} (1 = linear)", verdict(e <= 1.2)))
    build = results["build"]
    if "cold_s" in build:
        rows.append(("cold debug build of 2-context Kafka workspace <= 3 min",
                     f"{build['cold_s']:.0f} s", verdict(build["cold_s"] <= 180)))
    rows.append(("incremental build after editing one service <= 5 s",
                 f"{build['incremental_s']:.1f} s", verdict(build["incremental_s"] <= 5)))
    load = results["system"]["load"]
    ratios = [p["rps"] / g["rps"] for p, g in zip(load["post"], load["pgbench_insert"])]
    rows.append(("POST >= 40% of pgbench inserts at equal concurrency",
                 ", ".join(f"{r:.0%} (c={p['concurrency']})" for r, p in zip(ratios, load["post"])),
                 verdict(min(ratios) >= 0.4)))
    cached = load["get_cached"]
    rows.append(("cached GET p99 < 2 ms",
                 ", ".join(f"{g['p99_ms']:.2f} ms (c={g['concurrency']})" for g in cached),
                 verdict(all(g["p99_ms"] < 2 for g in cached))))
    events = results["system"]["events"]
    rows.append(("event p99 < 250 ms (order committed -> billing committed)",
                 f"{events['p99_ms']:.0f} ms", verdict(events["p99_ms"] < 250)))
    idle = results["system"]["idle_rss_mb"]
    services = {k: v for k, v in idle.items() if k != "gateway"}
    rows.append(("idle RSS < 30 MB a service",
                 ", ".join(f"{k} {v:.1f} MB" for k, v in services.items()),
                 verdict(all(v < 30 for v in services.values()))))
    return rows


def table(results):
    m = results["machine"]
    system = results["system"]
    lines = [
        f"Measured {results['date']} ({results['mode']} run, system built `{system['profile']}`) on "
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"PostgreSQL {m['postgres']}, {m['rustc']}. Load generator (wrk, pgbench) on the same machine.",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {v} | {ok} |" for t, v, ok in targets(results)]
    lines += ["", "Generation (`archscaffold new`, including `git init` and the first commit):", "",
              "| contexts | median | min | max | runs | files | peak RSS |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["generation"]:
        lines.append(f"| {r['contexts']} | {r['median_s'] * 1000:.0f} ms | {r['min_s'] * 1000:.0f} ms | "
                     f"{r['max_s'] * 1000:.0f} ms | {r['runs']} | {r['files']} | {r['peak_rss_mb']:.0f} MB |")
    b = results["build"]
    lines += ["", "Build of the generated 2-context Kafka workspace (`cargo build --workspace`, debug):", ""]
    if "cold_s" in b:
        lines.append(f"- cold: {b['cold_s']:.0f} s, {b['cold_crates']} crates compiled")
    else:
        lines.append(f"- warm-up on the shared target directory: {b['warm_s']:.0f} s, {b['warm_crates']} crates compiled")
    lines.append(f"- incremental, after editing `{b['edited']}`: {b['incremental_s']:.1f} s "
                 f"(median of {b['incremental_runs']}), {b['incremental_crates']} crates compiled")
    load = system["load"]
    lines += ["", "Load through the gateway (wrk) and PostgreSQL alone (pgbench, one single-row INSERT a "
              "transaction), same server, same concurrency:", "",
              "| concurrency | POST /v1/orders | cached GET | uncached GET | pgbench insert | POST / pgbench | drain after POST |",
              "|---:|---|---|---|---|---:|---:|"]

    def cell(f):
        return f"{f['rps']:.0f}/s, p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms"

    for i, c in enumerate(results["settings"]["concurrencies"]):
        post, pg = load["post"][i], load["pgbench_insert"][i]
        lines.append(f"| {c} | {cell(post)} | {cell(load['get_cached'][i])} | {cell(load['get_uncached'][i])} | "
                     f"{cell(pg)} | {post['rps'] / pg['rps']:.0%} | {load['drain_s'][i]:.1f} s |")
    if "post_cpu_ms" in load:
        lines += ["", "CPU per request, in ms (a POST's includes the work its events cause: the relay, "
                  "billing's consumer, the gateway's cache invalidation), against pgbench's server CPU "
                  "per insert:", "",
                  "| concurrency | " + " | ".join(load["post_cpu_ms"][0]) + " | POST total | pgbench insert |",
                  "|---:|" + "---:|" * (len(load["post_cpu_ms"][0]) + 2)]
        for i, c in enumerate(results["settings"]["concurrencies"]):
            by_process = load["post_cpu_ms"][i]
            lines.append(f"| {c} | " + " | ".join(f"{v:.2f}" for v in by_process.values())
                         + f" | {sum(by_process.values()):.2f} | {load['pgbench_cpu_ms'][i]:.2f} |")
    e = system["events"]
    lines += ["", f"Event latency (order committed -> billing's aggregate committed, from PostgreSQL commit "
              f"timestamps), {e['events']} orders at {e['rate_per_s']:.0f}/s: p50 {e['p50_ms']:.1f} ms, "
              f"p99 {e['p99_ms']:.1f} ms, max {e['max_ms']:.1f} ms.", "",
              "| process | idle RSS | peak RSS under load |", "|---|---:|---:|"]
    for name, idle in system["idle_rss_mb"].items():
        lines.append(f"| {name} | {idle:.1f} MB | {system['load_peak_rss_mb'][name]:.1f} MB |")
    return "\n".join(lines) + "\n"


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    gen = results["generation"]
    xs = [r["contexts"] for r in gen]
    ax = axes[0][0]
    ax.plot(xs, [r["median_s"] for r in gen], "o-", label="archscaffold new (median)")
    ax.plot(xs, [gen[0]["median_s"] * x / xs[0] for x in xs], ":", color="grey", label="linear from the first point")
    ax.set(xscale="log", yscale="log", xlabel="contexts", ylabel="seconds", title="Generation time")
    ax.legend()

    load = results["system"]["load"]
    cs = results["settings"]["concurrencies"]
    series = [("post", "POST /v1/orders"), ("get_cached", "GET, cached"),
              ("get_uncached", "GET, uncached"), ("pgbench_insert", "pgbench INSERT")]
    for ax, key, label in ((axes[0][1], "rps", "requests / s"), (axes[1][0], "p99_ms", "p99 ms")):
        for name, title in series:
            ax.plot(cs, [f[key] for f in load[name]], "o-", label=title)
        ax.set(xscale="log", xlabel="concurrency", ylabel=label)
        ax.set_xticks(cs, [str(c) for c in cs])
        ax.legend()
    axes[0][1].set_title("Throughput")
    axes[1][0].set(yscale="log", title="p99 latency")

    ax = axes[1][1]
    system = results["system"]
    names = list(system["idle_rss_mb"])
    positions = range(len(names))
    ax.bar([p - 0.2 for p in positions], [system["idle_rss_mb"][n] for n in names], 0.4, label="idle")
    ax.bar([p + 0.2 for p in positions], [system["load_peak_rss_mb"][n] for n in names], 0.4, label="peak under load")
    ax.set_xticks(list(positions), names)
    e = system["events"]
    ax.set(ylabel="MB", title=f"Resident memory (event p50 {e['p50_ms']:.0f} ms, p99 {e['p99_ms']:.0f} ms)")
    ax.legend()
    m = results["machine"]
    fig.suptitle(f"archscaffold benchmark, {results['date']}: {m['cpu']}, {m['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def update_readme(readme, text, image):
    with open(readme) as f:
        content = f.read()
    if BEGIN not in content or END not in content:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} section to replace")
    head, rest = content.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    section = f"{BEGIN}\n{text}\n![benchmark plot]({image})\n{END}"
    with open(readme, "w") as f:
        f.write(head + section + tail)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="results.json from ci/bench.py")
    parser.add_argument("--readme", help="README to update with the table and plot")
    args = parser.parse_args()
    with open(args.results) as f:
        results = json.load(f)
    out = os.path.dirname(os.path.abspath(args.results))
    text = table(results)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    png = os.path.join(out, "bench.png")
    plot(results, png)
    sys.stdout.write(text)
    print(f"\nplot: {png}")
    if args.readme:
        image = os.path.relpath(png, os.path.dirname(os.path.abspath(args.readme)))
        update_readme(args.readme, text, image)
        print(f"updated {args.readme}")


if __name__ == "__main__":
    main()
