"""Where the gateway's and orders' CPU goes per request (ci/bench --try --phases profile):
`perf record` of each process while wrk loads one route, a flame graph of each
(bench/profiles/<load>-c<c>-<process>.svg, drawn by inferno), and the samples sorted into
the parts of a request (JWT, rate limits, the cache, gRPC client and server, the link's
tokens, tracing and metrics, sqlx, the allocator, the log writer, the kernel), turned into
microseconds per request with the CPU the process spent per request in the same run.

Samples are taken with DWARF unwinding (`--call-graph dwarf`), since release builds keep no
frame pointers; symbols come from the binaries' symbol tables.
"""

import collections
import os
import re
import shutil
import subprocess
import time

from bench_common import BenchError, log, run, wrk

# A stack's part: the first of these its frames match, leaf first. Order matters: the
# allocator and the kernel are what a frame of any part calls last.
PARTS = [
    ("allocator", r"mi_|mimalloc|_rjem_|malloc|free\b|realloc|__rust_alloc|__rust_dealloc"),
    ("kernel: network", r"^(tcp_|inet_|__sys_sendto|__sys_recvfrom|sock_|ip_|__dev_queue|net_rx|__netif|loopback)"),
    ("kernel: wake-ups", r"^(futex_|do_futex|try_to_wake_up|schedule|__schedule|ep_poll|do_epoll|__x64_sys_epoll)"),
    ("kernel: other", r"^(entry_SYSCALL|do_syscall|__x64_sys|syscall_|exit_to_user|asm_|irq|__irq)"),
    # Not SHA-256 itself (idempotency keys hash too: its caller decides, a frame up) nor
    # the admission layer's frames (`service_auth::Admitted`), which the whole call passes.
    ("JWT and link tokens", r"jsonwebtoken|hmac::|service_auth::(Minter|Admission|LinkKey|console_may_call)|"
                            r"gateway::auth::|verify_token"),
    ("rate limits", r"governor|rate_limit|RateLimit"),
    ("cache (Redis)", r"redis::|gateway::cache"),
    ("tracing and metrics", r"tracing|opentelemetry|metrics::|metrics_exporter|observe::|telemetry"),
    ("log writer", r"log_writer"),
    ("sqlx and the database protocol", r"sqlx"),
    ("gRPC and HTTP/2 (tonic, h2, hyper)", r"tonic::|h2::|hyper::|tower::|prost::"),
    ("HTTP (axum)", r"axum::|http::"),
    ("JSON", r"serde_json|serde::"),
    ("our code (platform, the generated service)", r"platform::|orders::|gateway::|billing::|contracts::"),
    ("async runtime", r"tokio::"),
]
COMPILED = [(name, re.compile(pattern)) for name, pattern in PARTS]
# Frames that only pass a poll on, which nearly every stack has near its root: a sample is
# not tracing's because its future is instrumented.
WRAPPERS = re.compile(r"tracing::instrument::Instrumented|tracing::span::Span::in_scope|"
                      r"core::future::future::Future>::poll$|^std::|^core::ops::function")
LOADS = ("get_uncached", "post", "command")


def tools():
    """perf and inferno's collapse and flame graph commands, or a BenchError naming the
    missing one (ci/setup-profile-tools.sh installs them, and ci/bench puts them on PATH)."""
    found = {}
    for name in ("perf", "inferno-collapse-perf", "inferno-flamegraph"):
        path = shutil.which(name)
        if not path:
            raise BenchError(f"{name} is not on PATH: run the profile phase through ci/bench, which "
                             "installs it (ci/setup-profile-tools.sh)")
        found[name] = path
    return found


def part_of(stack):
    """The part a collapsed stack (root;...;leaf) belongs to, judged from the leaf up."""
    frames = stack.split(";")
    for frame in reversed(frames):
        if WRAPPERS.search(frame):
            continue
        for name, pattern in COMPILED:
            if pattern.search(frame):
                return name
    return "other (user space)"


def parts(collapsed):
    """Samples by part, from inferno's collapsed stacks ("frames count" lines)."""
    counts = collections.Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            counts[part_of(stack)] += int(count)
    return counts


def record(found, pids, seconds, out):
    """Starts `perf record` of `pids` for `seconds`; returns the process to wait for."""
    return subprocess.Popen(
        [found["perf"], "record", "-F", "199", "--call-graph", "dwarf,16384", "-o", out,
         "-p", ",".join(str(p) for p in pids), "--", "sleep", str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def flame(found, data, svg, title):
    """Draws `data` (perf.data) as a flame graph; returns the collapsed stacks."""
    script = subprocess.run([found["perf"], "script", "-i", data], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, check=True)
    collapsed = subprocess.run([found["inferno-collapse-perf"]], input=script.stdout,
                               stdout=subprocess.PIPE, check=True).stdout
    with open(svg, "wb") as f:
        # Frames under 1.5 pixels (0.13% of the samples) are left out: they are unreadable,
        # and the files stay a few hundred kilobytes.
        subprocess.run([found["inferno-flamegraph"], "--title", title, "--minwidth", "1.5"],
                       input=collapsed, stdout=f, check=True)
    return collapsed.decode()


def bench_profile(system, settings, work, out, url, requests, cpu):
    """Profiles the gateway and orders under each load of LOADS at concurrency 1 and 4;
    returns, per load and concurrency, each process's CPU per request and its parts in
    microseconds per request. `requests[load]` is (method, path, body, header, paths);
    `cpu` is the run's CpuMeter."""
    found = tools()
    os.makedirs(out, exist_ok=True)
    processes = {"gateway": [system.pids["gateway"]],
                 "orders": [pid for name, pid in system.pids.items() if name.startswith("orders")]}
    results = {}
    for load in LOADS:
        method, path, body, header, paths = requests[load]
        for c in (1, 4):
            recorders = {name: record(found, pids, settings.load_seconds,
                                      os.path.join(work, f"perf-{name}.data"))
                         for name, pids in processes.items()}
            before = cpu.snapshot()
            figures = wrk(settings, url, system.token, method, path, c, work,
                          body=body, header=header, paths=paths)
            after = cpu.snapshot()
            entry = {"rps": figures["rps"], "p50_ms": figures["p50_ms"], "processes": {}}
            for name, recorder in recorders.items():
                said, _ = recorder.communicate(timeout=settings.load_seconds + 60)
                if recorder.returncode != 0:
                    raise BenchError(f"perf record of {name} failed ({recorder.returncode}): {said[-500:]}")
                svg = os.path.join(out, f"{load}-c{c}-{name}.svg")
                collapsed = flame(found, os.path.join(work, f"perf-{name}.data"), svg,
                                  f"{name}, {load} at concurrency {c}")
                with open(os.path.join(work, f"{load}-c{c}-{name}.folded"), "w") as f:
                    f.write(collapsed)
                counts = parts(collapsed)
                total = sum(counts.values()) or 1
                cpu_us = (after[name] - before[name]) * 1e6 / figures["requests"]
                entry["processes"][name] = {
                    "cpu_us": cpu_us, "samples": total,
                    "parts_us": {part: cpu_us * n / total for part, n in counts.most_common()}}
                log(f"profile {load} c={c} {name}: {cpu_us:.0f} us of CPU a request; "
                    + ", ".join(f"{part} {cpu_us * n / total:.0f}" for part, n in counts.most_common(6)))
            results[f"{load}-c{c}"] = entry
            time.sleep(1)
    return results
