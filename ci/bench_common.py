"""What the benchmark's phases share (ci/bench.py, ci/bench_peer.py): running commands,
builds, PostgreSQL, memory sampling and the load generator."""

import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BenchError(Exception):
    pass


def service_of(process):
    """The service a process belongs to: a replica counts as its service (orders-2 is
    orders)."""
    return re.sub(r"-\d+$", "", process)


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


def percentile(values, p):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def run(cmd, **kwargs):
    kwargs.setdefault("check", True)
    return subprocess.run(cmd, **kwargs)


def cargo_build(workspace, target_dir, release=False):
    """(seconds, packages compiled) of one `cargo build --workspace`."""
    cmd = ["cargo", "build", "--workspace", "--message-format=json-render-diagnostics"]
    if release:
        cmd.append("--release")
    env = dict(os.environ, CARGO_TARGET_DIR=target_dir)
    started = time.perf_counter()
    done = run(cmd, cwd=workspace, env=env, stdout=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    compiled = set()
    for line in done.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and not message.get("fresh"):
            compiled.add(message["package_id"])
    return elapsed, len(compiled)


def database_url(admin_url, name):
    base = admin_url.split("?")[0]
    return base.rsplit("/", 1)[0] + "/" + name


def psql(url, sql, separator="|"):
    return run(["psql", url, "-XAtqc", sql, "-F", separator], stdout=subprocess.PIPE, text=True).stdout.strip()


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def port_in_use(port):
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


class RssSampler:
    """Samples the resident memory of the system's processes every 200 ms in a thread,
    keeping each one's peak, while a load runs."""

    def __init__(self, pids):
        self.pids = pids
        self.peak = {name: 0.0 for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.2)

    def sample(self):
        for name, pid in self.pids.items():
            value = rss_mb(pid)
            if value is not None:
                self.peak[name] = max(self.peak[name], value)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()


def wrk(settings, url, token, method, path, concurrency, work, body="", header="", paths=()):
    """wrk against the server at `url` on `path`, or on each of `paths` in turn."""
    threads = min(concurrency, 2)
    out = os.path.join(work, "wrk.json")
    env = dict(os.environ, BENCH_METHOD=method, BENCH_PATH=path, BENCH_TOKEN=token, BENCH_BODY=body,
               BENCH_PATHS=",".join(paths),
               BENCH_HEADER=header, BENCH_OUT=out,
               BENCH_MAX_PER_THREAD=str(settings.max_requests // threads))
    run(["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{settings.load_seconds}s",
         "--timeout", "5s", "-s", os.path.join(ROOT, "ci", "bench_load.lua"),
         url], env=env, stdout=subprocess.DEVNULL)
    with open(out) as f:
        figures = json.load(f)
    errors = sum(figures["errors"].values())
    if figures["requests"] == 0 or errors > 0.01 * figures["requests"]:
        raise BenchError(f"{method} {path} at concurrency {concurrency}: {errors} errors in "
                         f"{figures['requests']} requests {figures['errors']}")
    latency = figures["latency_us"]
    return {"concurrency": concurrency, "rps": figures["requests"] / (figures["duration_us"] / 1e6),
            "requests": figures["requests"], "errors": errors, "p50_ms": latency["p50"] / 1000,
            "p99_ms": latency["p99"] / 1000}


def median_run(runs, measure):
    """The run with the median throughput of `runs` calls of `measure`."""
    results = sorted((measure() for _ in range(runs)), key=lambda r: r["rps"])
    return results[len(results) // 2]


class StatementProfile:
    """What the services sent PostgreSQL while a load ran, from pg_stat_statements:
    statements by normalised text, with their calls per request."""

    def __init__(self, admin_url, databases):
        self.admin_url = admin_url
        self.databases = databases
        psql(admin_url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def reset(self):
        psql(self.admin_url, "SELECT pg_stat_statements_reset()")

    def per_request(self, requests):
        listed = ", ".join(f"'{d}'" for d in self.databases)
        rows = psql(self.admin_url, (
            "SELECT d.datname, sum(s.calls), regexp_replace(s.query, '\\s+', ' ', 'g') "
            "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            f"WHERE d.datname IN ({listed}) GROUP BY 1, 3 ORDER BY 2 DESC"), separator="\x1f")
        statements = []
        for line in rows.splitlines():
            database, calls, query = line.split("\x1f", 2)
            statements.append({"database": database, "per_request": int(calls) / requests, "query": query})
        return statements
