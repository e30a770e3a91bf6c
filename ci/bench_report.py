"""Turns the benchmark's results.json into the table (printed, and written as results.md),
the plot (bench.png) and, with --readme, the README's benchmark section (between the
`<!-- bench:begin -->` and `<!-- bench:end -->` markers). Each figure is set against its
target from the benchmark issue."""

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import service_of  # noqa: E402

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
    gen = {r["contexts"]: r for r in results.get("generation", [])}
    for n, limit in ((2, 0.1), (50, 1)):
        if n in gen:
            cold, warm = gen[n]["median_s"], gen[n].get("warm_median_s")
            measured = f"{cold:.3f} s" + (f" (with the formatting cache: {warm:.3f} s)" if warm else "")
            rows.append((f"generate {n} contexts < {limit:g} s, first run", measured, verdict(cold < limit)))
    if len(gen) >= 2:
        e = growth_exponent(results["generation"])
        rows.append(("generation grows close to linearly", f"exponent {e:.2f} (1 = linear)", verdict(e <= 1.2)))
    build = results.get("build", {})
    if "cold_s" in build:
        rows.append(("cold debug build of 2-context Kafka workspace <= 3 min",
                     f"{build['cold_s']:.0f} s", verdict(build["cold_s"] <= 180)))
    if build:
        rows.append(("incremental build after editing one service <= 5 s",
                     f"{build['incremental_s']:.1f} s", verdict(build["incremental_s"] <= 5)))
    if "events" in results:
        rows.append(event_target(results["events"]["events"], results["events"]["bus"]))
    if "system" not in results:
        return rows
    load = results["system"]["load"]
    for name, title in (("post", "POST"), ("command", "a command")):
        ratios = [f["rps"] / limit["rps"] for f, limit in zip(load[name], load[f"limit_{name}"])]
        ceilings = [c for _, _, _, c in ceilings_of(results, name)]
        rows.append((f"{title} >= 50% of the same SQL in pgbench, at equal concurrency",
                     ", ".join(f"{r:.0%} (c={f['concurrency']})" for r, f in zip(ratios, load[name]))
                     + "; at most " + ", ".join(f"{c:.0%}" for c in ceilings)
                     + " were our own processes free (see the ceiling below)",
                     verdict(min(ratios) >= 0.5)))
    cached = [g for g in load["get_cached"] if g["concurrency"] == 4] or load["get_cached"]
    rows.append(("cached GET p99 < 2 ms at concurrency 4",
                 ", ".join(f"{g['p99_ms']:.2f} ms (c={g['concurrency']})" for g in cached),
                 verdict(all(g["p99_ms"] < 2 for g in cached))))
    peer = results.get("peer")
    if peer:
        # Issue 31's targets beside the peer, at the lowest concurrency (one request at a time).
        for title, ours, theirs, bound in (
                ("uncached GET by id", load["get_uncached"][0], peer["load"]["get"][0], 2),
                ("create", load["post"][0], peer["load"]["post"][0], 3)):
            ratio = ours["p50_ms"] / theirs["p50_ms"]
            rows.append((f"{title} p50 <= {bound}x {peer['name']}'s at concurrency {ours['concurrency']}",
                         f"{ours['p50_ms']:.2f} ms against {theirs['p50_ms']:.2f} ms ({ratio:.1f}x)",
                         verdict(ratio <= bound)))
    first_post = load["post"][0]
    create_cpu = sum(first_post["cpu_ms"].values())
    rows.append((f"CPU per create, all processes, <= 3.5 ms at concurrency {first_post['concurrency']}",
                 f"{create_cpu:.2f} ms", verdict(create_cpu <= 3.5)))
    rows.append(event_target(results["system"]["events"], "kafka"))
    streams = results["system"].get("streams")
    if streams:
        held = streams["rss_held_mb"] - streams["rss_before_mb"]
        rows.append((f"{streams['streams']:,} idle event streams < 50 MB of gateway memory",
                     f"{held:.1f} MB ({streams['per_stream_kb']:.1f} KB a stream)", verdict(held < 50)))
    idle = results["system"]["idle_rss_mb"]
    services = {k: v for k, v in idle.items() if k != "gateway"}
    rows.append(("idle RSS < 30 MB a service",
                 ", ".join(f"{k} {v:.1f} MB" for k, v in services.items()),
                 verdict(all(v < 30 for v in services.values()))))
    return rows


def our_services(system):
    """The gateway and the services, replicas counted as their service."""
    return {service_of(process) for process in system["idle_rss_mb"]}


def ceilings_of(results, name):
    """What CPU alone allows `name` (post or command) against its same-SQL limit, per
    concurrency: (concurrency, CPU per request outside our processes (the broker, Redis,
    PostgreSQL) in ms, the requests a second the machine's cores allow at that CPU,
    that rate over the limit's). An upper bound however cheap the gateway and the services
    became, since it counts none of their CPU and none of wrk's."""
    system = results["system"]
    ours = our_services(system)
    cores = results["machine"]["cores"]
    rows = []
    for figures, limit in zip(system["load"][name], system["load"][f"limit_{name}"]):
        outside = sum(ms for process, ms in figures["cpu_ms"].items() if process not in ours)
        most = cores * 1000 / outside
        rows.append((figures["concurrency"], outside, most, most / limit["rps"]))
    return rows


def event_target(events, bus):
    """An event's latency against the target at 20 events a second (issue 31)."""
    return (f"event p50 < 30 ms, p99 < 100 ms, order committed -> billing committed ({bus}, "
            f"{events['rate_per_s']:.0f}/s)",
            f"p50 {events['p50_ms']:.1f} ms, p99 {events['p99_ms']:.1f} ms",
            verdict(events["p50_ms"] < 30 and events["p99_ms"] < 100))


def table(results):
    m = results["machine"]
    profile = f", system built `{results['system']['profile']}`" if "system" in results else ""
    lines = [
        f"Measured {results['date']} ({results['mode']} run{profile}) on "
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"PostgreSQL {m['postgres']}, {m['rustc']}. Load generator (wrk, pgbench) on the same machine.",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {v} | {ok} |" for t, v, ok in targets(results)]
    if "generation" in results:
        lines += generation_table(results["generation"])
    if "build" in results:
        lines += build_table(results["build"])
    if "system" in results:
        lines += system_tables(results)
    if "system" in results and "peer" in results:
        lines += peer_table(results)
    return "\n".join(lines) + "\n"


def generation_table(rows):
    lines = ["", "Generation (`archscaffold new`, including `git init` and the first commit; first runs have an empty "
             "formatting cache, warm runs the one the first run filled):", "",
              "| contexts | median | min | max | median, formatting cache warm | runs | files | peak RSS |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['contexts']} | {r['median_s'] * 1000:.0f} ms | {r['min_s'] * 1000:.0f} ms | "
                     f"{r['max_s'] * 1000:.0f} ms | {r.get('warm_median_s', float('nan')) * 1000:.0f} ms | "
                     f"{r['runs']} | {r['files']} | {r['peak_rss_mb']:.0f} MB |")
    return lines


def build_table(b):
    lines = ["", "Build of the generated 2-context Kafka workspace (`cargo build --workspace`, debug):", ""]
    if "cold_s" in b:
        lines.append(f"- cold: {b['cold_s']:.0f} s, {b['cold_crates']} crates compiled")
    else:
        lines.append(f"- warm-up on the shared target directory: {b['warm_s']:.0f} s, {b['warm_crates']} crates compiled")
    lines.append(f"- incremental, after editing `{b['edited']}`: {b['incremental_s']:.1f} s "
                 f"(median of {b['incremental_runs']}), {b['incremental_crates']} crates compiled")
    return lines


def system_tables(results):
    system = results["system"]
    load = system["load"]
    lines = []
    lines += ["", "Load through the gateway (wrk), beside the same SQL in pgbench (`ci/bench_sql`: what one "
              "request makes the services send PostgreSQL, from the create or change to both relays and "
              "billing's consumer), on the same server at the same concurrency. Each figure is the "
              f"median-throughput run of {results['settings'].get('load_runs', 1)}, "
              f"{results['settings']['load_seconds']} s each:", "",
              "| concurrency | POST /v1/orders | same SQL (pgbench) | ratio | command (change_note) "
              "| same SQL (pgbench) | ratio | cached GET | uncached GET |",
              "|---:|---|---|---:|---|---|---:|---|---|"]

    def cell(f):
        return f"{f['rps']:.0f}/s, p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms"

    for i, c in enumerate(results["settings"]["concurrencies"]):
        post, command = load["post"][i], load["command"][i]
        limit_post, limit_command = load["limit_post"][i], load["limit_command"][i]
        lines.append(f"| {c} | {cell(post)} | {cell(limit_post)} | {post['rps'] / limit_post['rps']:.0%} "
                     f"| {cell(command)} | {cell(limit_command)} | {command['rps'] / limit_command['rps']:.0%} "
                     f"| {cell(load['get_cached'][i])} | {cell(load['get_uncached'][i])} |")
    lines += ["", "Statements sent PostgreSQL per request (pg_stat_statements), by the services and by the "
              "same-SQL script built from their mix in the same run (the benchmark fails when the two are "
              "more than 10% apart):", "",
              "| concurrency | POST sent | POST script | command sent | command script |",
              "|---:|---:|---:|---:|---:|"]
    for i, c in enumerate(results["settings"]["concurrencies"]):
        sent = {name: sum(s["per_request"] for s in load[name][i]["sent"]) for name in ("post", "command")}
        lines.append(f"| {c} | {sent['post']:.1f} | {load['limit_post'][i]['statements']:.1f} | "
                     f"{sent['command']:.1f} | {load['limit_command'][i]['statements']:.1f} |")
    first = load["post"][0]
    lines += ["", f"What one POST sent at concurrency {first['concurrency']}, by statement:", "",
              "| database | per POST | statement |", "|---|---:|---|"]
    for s in first["sent"]:
        if s["per_request"] >= 0.05:
            query = s["query"] if len(s["query"]) <= 110 else s["query"][:107] + "..."
            lines.append(f"| {s['database']} | {s['per_request']:.2f} | `{query}` |")
    lines += ["", "CPU per request, in ms (a request's includes the work its events cause: the relays, "
              "billing's consumer, the gateway's cache invalidation), against PostgreSQL's CPU per "
              "transaction of the same SQL in pgbench:", "",
              "| request | concurrency | " + " | ".join(load["post"][0]["cpu_ms"]) + " | total | pgbench: postgres |",
              "|---|---:|" + "---:|" * (len(load["post"][0]["cpu_ms"]) + 2)]
    for name in ("post", "command"):
        for i, c in enumerate(results["settings"]["concurrencies"]):
            by_process = load[name][i]["cpu_ms"]
            lines.append(f"| {name} | {c} | " + " | ".join(f"{v:.2f}" for v in by_process.values())
                         + f" | {sum(by_process.values()):.2f} | {load['limit_' + name][i]['cpu_ms']['postgres']:.2f} |")
    outside = sorted(set(load["post"][0]["cpu_ms"]) - our_services(system))
    lines += ["", f"The ceiling: what the machine's {results['machine']['cores']} cores allow a request whose "
              f"only CPU is that of the processes that are not ours ({', '.join(outside)}), against the "
              "same SQL in pgbench. Our gateway and services costing nothing, and wrk nothing, the ratio "
              "could not be higher:", "",
              "| request | concurrency | CPU outside our processes | requests/s at most | same SQL | ceiling |",
              "|---|---:|---:|---:|---:|---:|"]
    for name in ("post", "command"):
        for (c, cpu_ms, most, ceiling), limit in zip(ceilings_of(results, name), load[f"limit_{name}"]):
            lines.append(f"| {name} | {c} | {cpu_ms:.2f} ms | {most:.0f}/s | {limit['rps']:.0f}/s | {ceiling:.0%} |")
    e = system["events"]
    lines += ["", f"Event latency (order committed -> billing's aggregate committed, from PostgreSQL commit "
              f"timestamps), {e['events']} orders at {e['rate_per_s']:.0f}/s: p50 {e['p50_ms']:.1f} ms, "
              f"p99 {e['p99_ms']:.1f} ms, max {e['max_ms']:.1f} ms.", ""]
    streams = system.get("streams")
    if streams:
        lines += [f"Event streams: {streams['streams']:,} idle `text/event-stream` clients, each a different "
                  f"caller, took the gateway from {streams['rss_before_mb']:.1f} to {streams['rss_held_mb']:.1f} MB "
                  f"({streams['per_stream_kb']:.1f} KB a stream); one order's creation reached all of them "
                  f"{streams['fan_out_max_ms']:.0f} ms after its answer (p50 {streams['fan_out_p50_ms']:.0f} ms).", ""]
    lines += [
              "| process | idle RSS | peak RSS under load |", "|---|---:|---:|"]
    for name, idle in system["idle_rss_mb"].items():
        lines.append(f"| {name} | {idle:.1f} MB | {system['load_peak_rss_mb'][name]:.1f} MB |")
    return lines


def peer_table(results):
    """Ours beside the peer's scaffold, with what each does per request."""
    peer, system = results["peer"], results["system"]
    ours, theirs = system["load"], peer["load"]
    name = f"{peer['name']} {peer['version']}"

    def cell(f):
        return f"{f['rps']:.0f}/s, p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms"

    lines = ["", f"Beside {name} (`loco new`, then `cargo loco generate scaffold order customer_id:string "
             "total_cents:big_int note:string --api`, built release, production environment, same PostgreSQL, "
             "same wrk script). What a request does differs, and the table says so:", "",
             f"| | archscaffold (example shop) | {name} (scaffold) |", "|---|---|---|",
             "| a create does | gateway: JWT, rate limits; gRPC hop to orders; one statement writing the "
             "idempotency key, the row and the outbox event; then the relay publishes the event and billing "
             "consumes it (inbox, its own row and event) | JWT check; one INSERT |",
             "| a get by id does | gateway: JWT, rate limits, Redis cache (cached) or a gRPC hop and one SELECT "
             "(uncached) | JWT check; one SELECT |"]
    sent = sum(s["per_request"] for s in theirs["post"][0]["sent"])
    ours_sent = sum(s["per_request"] for s in ours["post"][0]["sent"])
    lines.append(f"| statements per create, c={ours['post'][0]['concurrency']} | {ours_sent:.1f} | {sent:.1f} |")
    by_c = {f["concurrency"]: f for f in theirs["post"]}
    for f in ours["post"]:
        if f["concurrency"] in by_c:
            lines.append(f"| create, c={f['concurrency']} | {cell(f)} | {cell(by_c[f['concurrency']])} |")
    gets = {f["concurrency"]: f for f in theirs["get"]}
    for i, f in enumerate(ours["get_uncached"]):
        c = f["concurrency"]
        if c in gets:
            lines.append(f"| get by id, c={c} | uncached {cell(f)}; cached {cell(ours['get_cached'][i])} "
                         f"| {cell(gets[c])} |")
    idle = system["idle_rss_mb"]
    peak = system["load_peak_rss_mb"]
    lines.append(f"| idle RSS | {sum(idle.values()):.0f} MB in {len(idle)} processes (gateway, two replicas "
                 f"of each service) | {peer['idle_rss_mb']:.0f} MB in 1 |")
    lines.append(f"| peak RSS under load | {sum(peak.values()):.0f} MB | {peer['load_peak_rss_mb']:.0f} MB |")
    gen = {r["contexts"]: r for r in results.get("generation", [])}
    if 2 in gen:
        g = peer["generation"]
        lines.append(f"| generation | {gen[2]['median_s']:.2f} s (`archscaffold new`, 2 contexts, first run) "
                     f"| {g['new_s']:.2f} s (`loco new`) + {g['scaffold_s']:.0f} s (scaffold: compiles the app, "
                     "migrates a live database, generates the entities from it) |")
    build = results.get("build", {})
    if "cold_s" in build:
        lines.append(f"| cold debug build | {build['cold_s']:.0f} s, {build['cold_crates']} crates (2-context "
                     f"workspace) | {peer['build']['cold_s']:.0f} s, {peer['build']['cold_crates']} crates "
                     "(the app as `loco new` writes it) |")
    return lines


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "generation" not in results or "system" not in results:
        return False
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
    series = [("post", "POST /v1/orders"), ("limit_post", "POST's SQL in pgbench"),
              ("command", "command"), ("limit_command", "command's SQL in pgbench"),
              ("get_cached", "GET, cached"), ("get_uncached", "GET, uncached")]
    peer = results.get("peer")
    for ax, key, label in ((axes[0][1], "rps", "requests / s"), (axes[1][0], "p99_ms", "p99 ms")):
        for name, title in series:
            ax.plot(cs, [f[key] for f in load[name]], "o-", label=title)
        if peer:
            for name, title in (("post", "create"), ("get", "get by id")):
                figures = peer["load"][name]
                ax.plot([f["concurrency"] for f in figures], [f[key] for f in figures], "s--",
                        label=f"{peer['name']}: {title}")
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
    return True


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
    plotted = plot(results, png)
    sys.stdout.write(text)
    if plotted:
        print(f"\nplot: {png}")
    if args.readme:
        if not plotted:
            raise SystemExit("the README's table needs every phase: run ci/bench without --phases")
        image = os.path.relpath(png, os.path.dirname(os.path.abspath(args.readme)))
        update_readme(args.readme, text, image)
        print(f"updated {args.readme}")


if __name__ == "__main__":
    main()
