"""The benchmark (run it with ci/bench): how fast the generator is, how long what it
generates takes to build, and what the generated system costs at runtime, side by side
with PostgreSQL itself. Figures go to <out>/results.json; ci/bench_report.py prints the
table and draws the plot from them.

Phases:
  generation  `archscaffold new` for 2..200 contexts, median of several runs, peak RSS
  build       cold and incremental `cargo build` of the 2-context workspace, crates compiled
  system      the example shop (examples/shop.toml: orders with a lifecycle, billing opening
              an invoice per order) on Kafka (tansu), PostgreSQL and Redis, all on loopback:
              idle RSS; the gateway's memory for 1,000 idle event streams and how long one
              event takes to reach them all (ci/bench_streams.py); end-to-end event latency at a steady rate (commit timestamps of the
              order and of billing's invoice); wrk on POST, a command (change_note), cached
              GET and uncached GET at several concurrencies; RSS under load
              and, beside each load, the limit: the same SQL in pgbench, at the same
              concurrency against the same server, built from what the services sent
              PostgreSQL in that load (ci/bench_limit.py, from ci/bench_sql/post.sql and
              command.sql) and checked to send as many statements per request
  peer        Loco, what a user would generate instead (ci/bench_peer.py): its generation,
              cold build, create and get by id under the same loads, memory; not in --quick
              (installing and building it takes longer than the CI budget allows)

Phases only asked for by name (--phases), to measure one change:
  events      the system's event latency alone, on --bus kafka or sqs, with each
              process's CPU while idle
  profile     flame graphs of the gateway and orders under load, with their CPU per request
              by part (ci/bench_profile.py)

Every load run is bounded by time and by a request count, and only loopback is targeted.
"""

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import http.client
from dataclasses import dataclass, asdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_common import dev_token, wait_until  # noqa: E402
from bench_common import (  # noqa: E402
    ROOT, BenchError, RssSampler, StatementProfile, cargo_build, database_url, log, median_run, percentile, port_in_use, psql,
    rss_mb, run, service_of, wrk,
)
import bench_limit  # noqa: E402
from bench_peer import bench_peer  # noqa: E402
from bench_profile import bench_profile  # noqa: E402
from bench_streams import bench_streams  # noqa: E402

GATEWAY = ("127.0.0.1", 8080)
GATEWAY_URL = f"http://{GATEWAY[0]}:{GATEWAY[1]}"
# Every process up.sh starts: each service runs its default two replicas.
PROCESSES = ("gateway", "orders", "orders-2", "billing", "billing-2")
EDITED_FILE = "services/orders/src/domain/rules.rs"
SQL = os.path.join(ROOT, "ci", "bench_sql")
# The orders a command's load runs on, through the gateway and in pgbench alike.
COMMAND_ORDERS = 200
ORDER_BODY = json.dumps({"customer_id": "customer-1", "total_cents": 1250, "note": "bench"})
# The gateway (HTTP, metrics), both replicas of the two services (gRPC, metrics; the second
# on the first's ports plus 1000), tansu and the harness's Redis.
SYSTEM_PORTS = (8080, 9464, 50051, 50052, 9465, 9466, 51051, 51052, 10465, 10466, 6390)


@dataclass(frozen=True)
class Broker:
    """A bus's broker as the benchmark runs it: the one the system's up.sh starts itself
    (deploy/local/infra.sh) when the variable that names one is unset, on its usual port
    when free. Its name in the figures and its process's."""
    port: int
    variable: str
    name: str
    process: str


BROKERS = {"kafka": Broker(9092, "KAFKA_BROKERS", "tansu", "tansu"),
           "sqs": Broker(5000, "SQS_ENDPOINT", "moto", "moto_server")}


@dataclass
class Settings:
    gen_sizes: list
    gen_runs: int
    cold_build: bool
    incremental_runs: int
    profile: str
    concurrencies: list
    load_seconds: int
    # Each load is run this many times; the run with the median throughput is kept.
    load_runs: int
    max_requests: int
    event_rate: int
    event_seconds: int


FULL = Settings(gen_sizes=[2, 10, 50, 200], gen_runs=5, cold_build=True, incremental_runs=3,
                profile="release", concurrencies=[1, 4, 16], load_seconds=10, load_runs=3,
                max_requests=300_000, event_rate=20, event_seconds=15)
# What .ci/run measures, so the benchmark cannot rot: every phase, smaller and on the
# debug build the tests already made.
QUICK = Settings(gen_sizes=[2, 10, 50], gen_runs=3, cold_build=False, incremental_runs=2,
                 profile="debug", concurrencies=[1, 8], load_seconds=3, load_runs=1,
                 max_requests=30_000, event_rate=10, event_seconds=5)


# --- generation -------------------------------------------------------------------------

def count_files(tree):
    """Files written, not counting the git repository's own."""
    total = 0
    for directory, subdirs, files in os.walk(tree):
        subdirs[:] = [d for d in subdirs if d != ".git"]
        total += len(files)
    return total


def generate_once(generator, n, names, out, cache):
    """(seconds, peak RSS in MB) of one `archscaffold new` with its formatting cache in
    `cache`."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, ARCHSCAFFOLD_CACHE_DIR=cache)
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        child = subprocess.Popen([generator, "new", "bench", "--contexts", names, "--out", out],
                                 stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        # wait4 gives this child's own peak RSS (ru_maxrss, KiB on Linux).
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            stderr.seek(0)
            raise BenchError(f"archscaffold new with {n} contexts failed:\n{stderr.read().decode()}")
    return elapsed, usage.ru_maxrss / 1024


def bench_generation(generator, settings, work):
    """Each size cold (an empty formatting cache: rustfmt formats everything, as on a first
    run) and warm (the cache holds what the same spec needed, as for a team generating the
    same services again, or `update` re-rendering a workspace)."""
    rows = []
    for n in settings.gen_sizes:
        names = ",".join(f"ctx{i:03d}" for i in range(n))
        out = os.path.join(work, f"gen-{n}")
        caches = os.path.join(work, f"gen-cache-{n}")
        cold, warm, peaks, files = [], [], [], 0
        for attempt in range(settings.gen_runs):
            shutil.rmtree(caches, ignore_errors=True)
            elapsed, peak = generate_once(generator, n, names, out, os.path.join(caches, "cold"))
            cold.append(elapsed)
            peaks.append(peak)
            if attempt == 0:
                files = count_files(out)
        for attempt in range(settings.gen_runs):
            elapsed, peak = generate_once(generator, n, names, out, os.path.join(caches, "cold"))
            warm.append(elapsed)
            peaks.append(peak)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(caches, ignore_errors=True)
        rows.append({"contexts": n, "median_s": statistics.median(cold), "min_s": min(cold),
                     "max_s": max(cold), "warm_median_s": statistics.median(warm), "runs": len(cold),
                     "peak_rss_mb": max(peaks), "files": files})
        log(f"generation, {n} contexts: median {statistics.median(cold) * 1000:.0f} ms cold, "
            f"{statistics.median(warm) * 1000:.0f} ms warm, over {len(cold)} runs each")
    return rows


# --- build ------------------------------------------------------------------------------

def bench_build(generator, settings, work, shared_target):
    workspace = os.path.join(work, "build", "shop")
    shutil.rmtree(os.path.dirname(workspace), ignore_errors=True)
    run([generator, "new", "shop", "--contexts", "orders,billing", "--bus", "kafka",
         "--out", workspace, "--no-git"], stdout=subprocess.DEVNULL)
    result = {"workspace": "shop: orders, billing (Kafka)", "profile": "debug"}
    if settings.cold_build:
        # A target directory of its own: nothing compiled, only the downloaded sources.
        target = os.path.join(work, "build", "target")
        log("build: cold cargo build of the 2-context workspace")
        result["cold_s"], result["cold_crates"] = cargo_build(workspace, target)
    else:
        target = shared_target
        result["warm_s"], result["warm_crates"] = cargo_build(workspace, target)
    times, crates = [], []
    # The file a user edits first: the orders service's business rules.
    edited = os.path.join(workspace, EDITED_FILE)
    if not os.path.isfile(edited):
        raise BenchError(f"{EDITED_FILE} was not generated")
    for attempt in range(settings.incremental_runs):
        with open(edited, "a") as f:
            f.write(f"\n// benchmark edit {attempt}\n")
        elapsed, compiled = cargo_build(workspace, target)
        if compiled == 0:
            raise BenchError(f"editing {EDITED_FILE} recompiled nothing")
        times.append(elapsed)
        crates.append(compiled)
    result.update(incremental_s=statistics.median(times), incremental_runs=len(times),
                  incremental_crates=max(crates), edited=EDITED_FILE)
    log(f"build: incremental after editing {EDITED_FILE}: median {result['incremental_s']:.1f} s")
    if settings.cold_build:
        shutil.rmtree(target, ignore_errors=True)
    return result


# --- the running system -----------------------------------------------------------------

def proc_stat(pid):
    """Fields 3 and on of /proc/<pid>/stat (proc(5)), or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid, children=False):
    """User + system CPU seconds a process has used (fields 14 and 15), with `children` also
    those of its children it has reaped (16 and 17); 0 once it is gone."""
    fields = proc_stat(pid)
    if fields is None:
        return 0.0
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / os.sysconf("SC_CLK_TCK")


def pids_named(name):
    found = subprocess.run(["pgrep", "-x", name], stdout=subprocess.PIPE, text=True).stdout.split()
    return [int(p) for p in found]


class CpuMeter:
    """CPU time by process while a load runs: the system's services (each with its replicas)
    and gateway, tansu, Redis
    and the PostgreSQL server. PostgreSQL's backends come and go (pgbench opens its own):
    the server's time is that of the live processes plus what the postmaster has reaped."""

    def __init__(self, system_pids, bus="kafka"):
        self.groups = {}
        for name, pid in system_pids.items():
            # A service's replicas count as the service (orders and orders-2 are orders).
            self.groups.setdefault(service_of(name), []).append(pid)
        broker = BROKERS[bus]
        self.groups[broker.name] = pids_named(broker.process)
        self.groups["redis"] = pids_named("redis-server")

    def snapshot(self):
        totals = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.groups.items()}
        postgres = pids_named("postgres")
        postmaster = [pid for pid in postgres if int((proc_stat(pid) or [0, 0])[1]) not in postgres]
        totals["postgres"] = (sum(cpu_seconds(pid) for pid in postgres if pid not in postmaster)
                              + sum(cpu_seconds(pid, children=True) for pid in postmaster))
        return totals

    @staticmethod
    def per_request_ms(before, after, requests):
        return {name: (after[name] - before[name]) * 1000 / requests for name in after}


class System:
    """The example shop (examples/shop.toml), started with its own deploy/local/up.sh on
    Kafka (tansu, which up.sh starts itself), PostgreSQL and Redis; stopped, with the
    broker and Redis, by stop(). up.sh gets OTEL_EXPORTER_OTLP_ENDPOINT set but empty."""

    def __init__(self, generator, settings, work, admin_url, shared_target, bus="kafka"):
        self.settings = settings
        self.workspace = os.path.join(work, "system", "shop")
        self.admin_url = admin_url
        self.target = shared_target
        self.bus = bus
        shutil.rmtree(os.path.dirname(self.workspace), ignore_errors=True)
        run([generator, "new", "shop", "--example", "shop", "--bus", bus,
             "--out", self.workspace, "--no-git"], stdout=subprocess.DEVNULL)
        self.orders_db = database_url(admin_url, "shop_orders")
        self.billing_db = database_url(admin_url, "shop_billing")

    def start(self):
        broker = BROKERS[self.bus]
        busy = [port for port in (*SYSTEM_PORTS, broker.port) if port_in_use(port)]
        if busy:
            raise BenchError(f"ports {busy} are in use on 127.0.0.1: stop what listens there "
                             "(an earlier run of the system?) and run again")
        for db in ("shop_orders", "shop_billing"):
            psql(self.admin_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        log(f"system: cargo build --workspace ({self.settings.profile})")
        cargo_build(self.workspace, self.target, release=self.settings.profile == "release")
        run(["bash", "ci/brokers.sh", "start", "redis"], cwd=ROOT)
        env = dict(os.environ, DATABASE_ADMIN_URL=self.admin_url,
                   REDIS_URL="redis://127.0.0.1:6390", BUILD_PROFILE=self.settings.profile,
                   CARGO_TARGET_DIR=self.target,
                   # The load comes from one identity and one address; the rate limits are
                   # not what is measured.
                   GATEWAY__RATE_LIMIT__PER_SECOND="1000000", GATEWAY__RATE_LIMIT__BURST="1000000",
                   GATEWAY__RATE_LIMIT__PER_ADDRESS_PER_SECOND="1000000",
                   GATEWAY__RATE_LIMIT__PER_ADDRESS_BURST="1000000",
                   # No span export (up.sh would send every span to the console): the
                   # figures stay those of the system alone, comparable with earlier runs.
                   OTEL_EXPORTER_OTLP_ENDPOINT="")
        env.pop("RUST_LOG", None)
        # up.sh starts the broker, as for a user who has none (and down.sh stops it).
        env.pop(broker.variable, None)
        run(["bash", os.path.join(self.workspace, "deploy/local/up.sh")], env=env, stdout=subprocess.DEVNULL)
        run_dir = os.path.join(self.workspace, ".run")
        self.pids = {name: int(open(os.path.join(run_dir, f"{name}.pid")).read()) for name in PROCESSES}
        gone = [name for name, pid in self.pids.items() if rss_mb(pid) is None]
        if gone:
            raise BenchError(f"{', '.join(gone)} exited after start; see {run_dir}/<name>.log")
        self.gateway_bin = os.path.join(self.target, self.settings.profile, "gateway")
        self.token = dev_token(self.gateway_bin, self.workspace, "bench")

    def stop(self):
        down = os.path.join(self.workspace, "deploy/local/down.sh")
        if os.path.exists(down):
            subprocess.run(["bash", down], stdout=subprocess.DEVNULL)
        subprocess.run(["bash", "ci/brokers.sh", "stop", "redis"], cwd=ROOT)

    def request(self, connection, method, path, body=None, headers=None):
        head = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        if body is not None:
            head["Content-Type"] = "application/json"
        connection.request(method, path, body=body, headers=head)
        response = connection.getresponse()
        return response.status, response.read()

    def create_order(self, connection):
        status, raw = self.request(connection, "POST", "/v1/orders", body=ORDER_BODY)
        if status != 201:
            raise BenchError(f"POST /v1/orders answered {status}: {raw[:300]!r}")
        return json.loads(raw)["id"]

    def backlog(self):
        """(unpublished outbox rows, orders billing has not recorded yet)."""
        unpublished = int(psql(self.orders_db, "SELECT count(*) FROM outbox WHERE published_at IS NULL"))
        orders = int(psql(self.orders_db, "SELECT count(*) FROM orders"))
        billed = int(psql(self.billing_db, "SELECT count(DISTINCT order_id) FROM invoices"))
        return unpublished, orders - billed

    def drain(self, seconds):
        """Waits (bounded) until every event has gone out and been consumed; its seconds."""
        started = time.monotonic()
        wait_until(lambda: self.backlog() == (0, 0), seconds, "the outbox and billing to catch up")
        return time.monotonic() - started


def settle(system, connection, seconds=60, calm=5):
    """Returns once orders have reached billing within 0.5 s each for `calm` seconds in a
    row: the consumer group has finished the rebalances its members' start caused (each
    replica that joins causes one, and a replica that started before its topic existed
    joins seconds later), which would otherwise be measured as event latency. Bounded:
    `seconds`."""
    deadline = time.monotonic() + seconds
    calm_since = time.monotonic()
    while time.monotonic() < deadline:
        order = system.create_order(connection)
        sent = time.monotonic()
        while time.monotonic() - sent < 5 and not psql(
                system.billing_db, f"SELECT 1 FROM invoices WHERE order_id = '{order}'").strip():
            time.sleep(0.02)
        if time.monotonic() - sent >= 0.5:
            calm_since = time.monotonic()
        elif time.monotonic() - calm_since >= calm:
            return
        time.sleep(0.1)
    raise BenchError(f"orders did not reach billing within 0.5 s for {calm} s in a row in the {seconds} s "
                     "after the start")


def bench_events(system, settings):
    """Order committed -> billing's aggregate committed, from PostgreSQL's own commit
    timestamps (track_commit_timestamp): both databases live on the one server, so the two
    times come from one clock."""
    count = settings.event_rate * settings.event_seconds
    interval = 1 / settings.event_rate
    connection = http.client.HTTPConnection(*GATEWAY, timeout=10)
    settle(system, connection)
    ids = []
    started = time.monotonic()
    for i in range(count):
        delay = started + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        ids.append(system.create_order(connection))
    sent_for = time.monotonic() - started
    connection.close()
    system.drain(60)
    listed = "'{" + ",".join(ids) + "}'"
    committed = dict(line.split("|") for line in psql(system.orders_db, (
        "SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin)) FROM orders "
        f"WHERE id = ANY({listed}::uuid[])")).splitlines())
    billed = dict(line.split("|") for line in psql(system.billing_db, (
        "SELECT order_id, min(extract(epoch FROM pg_xact_commit_timestamp(xmin))) FROM invoices "
        f"WHERE order_id = ANY({listed}::text[]) GROUP BY order_id")).splitlines())
    missing = [i for i in ids if not committed.get(i) or not billed.get(i)]
    if missing:
        raise BenchError(f"{len(missing)} of {count} orders have no commit timestamp or no billing row "
                         "(is track_commit_timestamp on?)")
    latencies = [(float(billed[i]) - float(committed[i])) * 1000 for i in ids]
    result = {"events": count, "rate_per_s": count / sent_for, "p50_ms": percentile(latencies, 50),
              "p99_ms": percentile(latencies, 99), "max_ms": max(latencies)}
    log(f"events: {count} at {result['rate_per_s']:.1f}/s: p50 {result['p50_ms']:.1f} ms, "
        f"p99 {result['p99_ms']:.1f} ms")
    return result


class Pipeline:
    """One database holding both services' tables, in the schemas `orders` and `billing`
    made by the workspace's own migrations, with the orders a command runs on: what the
    pgbench scripts of ci/bench_sql run against."""

    NAME = "bench_pipeline"

    def __init__(self, admin_url, workspace):
        self.url = database_url(admin_url, self.NAME)
        psql(admin_url, f'DROP DATABASE IF EXISTS "{self.NAME}" WITH (FORCE)')
        psql(admin_url, f'CREATE DATABASE "{self.NAME}"')
        for service in ("orders", "billing"):
            psql(self.url, f"CREATE SCHEMA {service}")
            directory = os.path.join(workspace, "services", service, "migrations")
            env = dict(os.environ, PGOPTIONS=f"-c search_path={service}")
            for name in sorted(os.listdir(directory)):
                run(["psql", self.url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-f", os.path.join(directory, name)],
                    env=env, stdout=subprocess.DEVNULL)
        psql(self.url, "INSERT INTO orders.orders (id, customer_id, total_cents, note, created_at, version, state) "
                       "SELECT md5('seed-' || i)::uuid, 'customer-1', 1250, 'bench', now(), 1, 'pending' "
                       f"FROM generate_series(1, {COMMAND_ORDERS}) AS i")


def pgbench(settings, url, script, concurrency, work, defines=()):
    """pgbench running `script` (one transaction of the pipeline a request causes) on
    `concurrency` clients."""
    logs = os.path.join(work, "pgbench-log")
    shutil.rmtree(logs, ignore_errors=True)
    os.makedirs(logs)
    done = run(["pgbench", "-n", "-M", "prepared", "-c", str(concurrency), "-j", str(min(concurrency, 2)),
                "-T", str(settings.load_seconds), "-f", script, "-l", "--log-prefix", os.path.join(logs, "tx"),
                # The scope of the bench user's idempotency keys ("user:bench"): a pgbench
                # variable, since pgbench would read ":bench" in a literal as one.
                "-Dscope=user:bench", *(f"-D{d}" for d in defines), url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tps = next(float(line.split()[2]) for line in done.stdout.splitlines() if line.startswith("tps ="))
    latencies = []
    for name in os.listdir(logs):
        with open(os.path.join(logs, name)) as f:
            # client_id transaction_no time_us script_no epoch epoch_us
            latencies.extend(int(line.split()[2]) / 1000 for line in f)
    failed = sum(1 for line in done.stdout.splitlines() if line.startswith("number of failed transactions")
                 and not line.split(":")[1].strip().startswith("0"))
    if not latencies or failed:
        raise BenchError(f"pgbench {os.path.basename(script)} at concurrency {concurrency} failed:\n{done.stdout}")
    return {"concurrency": concurrency, "rps": tps, "requests": len(latencies), "errors": 0,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99)}


def bench_events_alone(generator, settings, work, admin_url, shared_target, bus):
    """The system's event latency alone, on `bus`: what a change to the relay, a consumer
    or a broker setting is measured by, in a few minutes."""
    system = System(generator, settings, work, admin_url, shared_target, bus)
    try:
        system.start()
        events = bench_events(system, settings)
        return {"bus": bus, "profile": settings.profile, "events": events, "idle_cpu": idle_cpu(system)}
    finally:
        system.stop()


def idle_cpu(system, seconds=10):
    """CPU by process while nothing happens, in percent of one core: what the consumers'
    and relays' waiting costs (a fetch or a receive that returns empty, a poll)."""
    cpu = CpuMeter(system.pids, system.bus)
    before = cpu.snapshot()
    time.sleep(seconds)
    after = cpu.snapshot()
    used = {name: (after[name] - before[name]) * 100 / seconds for name in after}
    log("idle CPU: " + ", ".join(f"{name} {percent:.1f}%" for name, percent in used.items()))
    return used


def bench_profiled(generator, settings, work, admin_url, shared_target, out):
    """Flame graphs of the gateway and orders under uncached GET, POST and a command (see
    ci/bench_profile.py), into <out>/profiles."""
    system = System(generator, settings, work, admin_url, shared_target)
    try:
        system.start()
        connection = http.client.HTTPConnection(*GATEWAY, timeout=10)
        item = f"/v1/orders/{system.create_order(connection)}"
        commanded = [f"/v1/orders/{system.create_order(connection)}/change_note" for _ in range(COMMAND_ORDERS)]
        connection.close()
        system.drain(60)
        requests = {"get_uncached": ("GET", item, "", "Cache-Control: no-cache", ()),
                    "post": ("POST", "/v1/orders", ORDER_BODY, "", ()),
                    "command": ("POST", commanded[0], json.dumps({"note": "bench"}), "", commanded)}
        return {"profile": settings.profile,
                "loads": bench_profile(system, settings, work, os.path.join(out, "profiles"), GATEWAY_URL,
                                       requests, CpuMeter(system.pids))}
    finally:
        system.stop()


def bench_system(generator, settings, work, admin_url, shared_target):
    system = System(generator, settings, work, admin_url, shared_target)
    try:
        system.start()
        time.sleep(2)
        idle = {name: rss_mb(pid) for name, pid in system.pids.items()}
        log("idle RSS: " + ", ".join(f"{n} {v:.1f} MB" for n, v in idle.items()))
        connection = http.client.HTTPConnection(*GATEWAY, timeout=10)
        streams = bench_streams(system, GATEWAY, lambda: system.create_order(connection))
        connection.close()
        events = bench_events(system, settings)

        pipeline = Pipeline(admin_url, system.workspace)
        services = StatementProfile(admin_url, ["shop_orders", "shop_billing"])
        limit_profile = StatementProfile(admin_url, [Pipeline.NAME])
        meters = {"cpu": CpuMeter(system.pids)}

        def fresh():
            """The system started again, on empty databases and an empty broker, and
            settled: each load starts from the same state. tansu's memory storage lists
            every batch a partition holds on every fetch, so a broker that kept what the
            earlier loads produced serves this one slower (at c=16, after 280,000
            batches, billing drained 50 events a second)."""
            system.stop()
            system.start()
            meters["cpu"] = CpuMeter(system.pids)
            sampler.pids = system.pids
            connection = http.client.HTTPConnection(*GATEWAY, timeout=10)
            settle(system, connection)
            connection.close()

        def cached_item():
            """An order's path, read once so that the gateway caches it."""
            connection = http.client.HTTPConnection(*GATEWAY, timeout=10)
            item = f"/v1/orders/{system.create_order(connection)}"
            system.request(connection, "GET", item)
            status, _ = system.request(connection, "GET", item)
            connection.close()
            if status != 200:
                raise BenchError(f"GET {item} answered {status}")
            system.drain(60)
            return item

        def commanded_orders():
            """The command paths of COMMAND_ORDERS new orders."""
            connection = http.client.HTTPConnection(*GATEWAY, timeout=10)
            paths = [f"/v1/orders/{system.create_order(connection)}/change_note" for _ in range(COMMAND_ORDERS)]
            connection.close()
            system.drain(60)
            return paths

        def loaded(measure, profile=services):
            """`measure`, then the drain of what it queued (outbox rows, billing's
            consumption: its CPU and statements count for the requests), with the CPU and
            statements per request."""
            profile.reset()
            cpu = meters["cpu"]
            before = cpu.snapshot()
            figures = measure()
            figures["drain_s"] = system.drain(300)
            requests = figures["requests"]
            figures["cpu_ms"] = CpuMeter.per_request_ms(before, cpu.snapshot(), requests)
            figures["sent"] = profile.per_request(requests)
            return figures

        def limit(name, c, defines=()):
            """The same SQL as the services sent in the run just kept, in pgbench (see
            ci/bench_limit.py), checked to send as many statements per request."""
            kept = load[name][-1]
            script = os.path.join(work, f"limit-{name}-c{c}.sql")
            gates = bench_limit.build(os.path.join(SQL, f"{name}.sql"), kept["sent"], script)
            figures = median_run(runs, lambda: loaded(lambda: pgbench(
                settings, pipeline.url, script, c, work, defines), profile=limit_profile))
            figures["script"] = gates
            ours, theirs = bench_limit.check(name, c, kept["sent"], figures["sent"], gates, Pipeline.NAME)
            figures["statements"] = theirs
            log(f"{name} at c={c}: {kept['rps']:.0f}/s against the same SQL's {figures['rps']:.0f}/s "
                f"({kept['rps'] / figures['rps']:.0%}); statements per request: {ours:.2f} sent by the "
                f"services, {theirs:.2f} by the script")
            return figures

        load = {name: [] for name in ("get_cached", "get_uncached", "post", "limit_post", "command", "limit_command")}
        note = json.dumps({"note": "bench"})
        with RssSampler(system.pids) as sampler:
            for c in settings.concurrencies:
                log(f"load at concurrency {c}")
                runs = settings.load_runs
                fresh()
                item = cached_item()
                load["get_cached"].append(median_run(runs, lambda: wrk(settings, GATEWAY_URL, system.token, "GET", item, c, work)))
                load["get_uncached"].append(median_run(runs, lambda: wrk(
                    settings, GATEWAY_URL, system.token, "GET", item, c, work, header="Cache-Control: no-cache")))
                # The services first: the limit's script is built from what they sent.
                load["post"].append(median_run(runs, lambda: loaded(lambda: wrk(
                    settings, GATEWAY_URL, system.token, "POST", "/v1/orders", c, work, body=ORDER_BODY))))
                load["limit_post"].append(limit("post", c))
                fresh()
                commanded = commanded_orders()
                load["command"].append(median_run(runs, lambda: loaded(lambda: wrk(
                    settings, GATEWAY_URL, system.token, "POST", commanded[0], c, work, body=note, paths=commanded))))
                load["limit_command"].append(limit("command", c, defines=[f"orders={COMMAND_ORDERS}"]))
        return {"profile": settings.profile, "idle_rss_mb": idle, "load_peak_rss_mb": sampler.peak,
                "streams": streams, "events": events, "load": load}
    finally:
        system.stop()


# --- the machine ------------------------------------------------------------------------

def machine():
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        memory_gib = int(f.readline().split()[1]) / 1024 / 1024
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(memory_gib, 1),
            "kernel": platform.release(), "postgres": psql(os.environ["DATABASE_URL"], "SHOW server_version"),
            "rustc": run(["rustc", "--version"], stdout=subprocess.PIPE, text=True).stdout.strip()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short version .ci/run runs")
    parser.add_argument("--generator", required=True, help="the archscaffold binary to measure")
    parser.add_argument("--out", required=True, help="directory for results.json")
    parser.add_argument("--target-dir", required=True, help="the shared CARGO_TARGET_DIR")
    parser.add_argument("--phases", help="comma-separated phases to run (to measure one change quickly); "
                        "all but peer with --quick, else all")
    parser.add_argument("--peer-tools", help="the directory with loco and sea-orm-cli (ci/setup-peer-tools.sh)")
    parser.add_argument("--profile", choices=["debug", "release"], help="the system's build profile")
    parser.add_argument("--runs", type=int, help="runs per load (the median-throughput one is kept)")
    parser.add_argument("--event-rate", type=int, help="orders a second while event latency is measured")
    parser.add_argument("--bus", choices=sorted(BROKERS), default="kafka",
                        help="the bus of the events phase (the system phase runs on Kafka)")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    if args.profile:
        settings = dataclasses.replace(settings, profile=args.profile)
    if args.runs:
        settings = dataclasses.replace(settings, load_runs=args.runs)
    if args.event_rate:
        settings = dataclasses.replace(settings, event_rate=args.event_rate)
    every = {"generation", "build", "system", "peer"}
    # `events` is the system's event latency alone, on --bus, to measure one change;
    # `profile` draws flame graphs (ci/bench_profile.py). Neither is part of a whole run.
    known = every | {"events", "profile"}
    phases = set(args.phases.split(",")) if args.phases else every - ({"peer"} if args.quick else set())
    if phases - known:
        raise BenchError(f"unknown phases {sorted(phases - known)}: choose among {', '.join(sorted(known))}")
    if "peer" in phases and not args.peer_tools:
        raise BenchError("the peer phase needs --peer-tools (ci/bench passes it)")
    admin_url = os.environ["DATABASE_URL"]
    if psql(admin_url, "SHOW track_commit_timestamp") != "on":
        raise BenchError("track_commit_timestamp is off: ci/setup-bench-tools.sh turns it on")
    os.makedirs(args.out, exist_ok=True)
    work = os.path.join(ROOT, ".work", "bench")
    os.makedirs(work, exist_ok=True)
    started = time.time()
    whole = phases == every and not args.profile and not args.runs and not args.event_rate
    mode = "quick" if args.quick else "full" if whole else "partial"
    results = {"version": 1, "mode": mode,
               "date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": machine(),
               "settings": asdict(settings)}
    if "generation" in phases:
        results["generation"] = bench_generation(args.generator, settings, work)
    if "build" in phases:
        results["build"] = bench_build(args.generator, settings, work, args.target_dir)
    if "system" in phases:
        results["system"] = bench_system(args.generator, settings, work, admin_url, args.target_dir)
    if "profile" in phases:
        results["profile"] = bench_profiled(args.generator, settings, work, admin_url, args.target_dir, args.out)
    if "events" in phases:
        results["events"] = bench_events_alone(args.generator, settings, work, admin_url, args.target_dir, args.bus)
    if "peer" in phases:
        # Its release build keeps a target directory of its own beside the shared one, so
        # only its first run compiles its dependencies.
        results["peer"] = bench_peer(settings, work, admin_url, args.peer_tools,
                                     os.path.join(os.path.dirname(args.target_dir), "target-peer"))
    results["elapsed_s"] = time.time() - started
    path = os.path.join(args.out, "results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    log(f"wrote {path} after {results['elapsed_s']:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except (BenchError, AssertionError, subprocess.CalledProcessError) as e:
        print(f"bench failed: {e}", file=sys.stderr)
        sys.exit(1)
