"""The peer in the benchmark (phase "peer" of ci/bench.py): the app a user would most likely
generate instead, Loco (loco.rs), made as its documentation says (`loco new`, then `cargo
loco generate scaffold` for the same order), built release and run against the same
PostgreSQL, and loaded with the same wrk script on its create and get-by-id routes.

What a Loco request does is much less than ours: it checks the JWT's signature and runs
one INSERT (or one SELECT by primary key). Ours goes through the gateway (JWT, rate limits,
cache) and a gRPC hop, and writes the idempotency key and the outbox event with the row;
its event then goes through the relay, the broker and billing's consumer. The figures
are side by side so that the price of those guarantees is plain, not to say the two do
the same work.
"""

import base64
import http.client
import json
import os
import secrets
import shutil
import subprocess
import time

from bench_common import (
    BenchError, RssSampler, StatementProfile, cargo_build, database_url, log, median_run, port_in_use, psql,
    rss_mb, run, wrk,
)

# What ci/setup-peer-tools.sh installs: the versions measured.
LOCO_VERSION = "1.2.0"
PORT = 5150
URL = f"http://127.0.0.1:{PORT}"
DATABASE = "bench_peer"
# The order ours stores (examples/shop.toml): the same fields, as Loco's generator types them.
SCAFFOLD = ["order", "customer_id:string", "total_cents:big_int", "note:string"]
ORDER_BODY = json.dumps({"customer_id": "customer-1", "total_cents": 1250, "note": "bench"})
USER = {"name": "bench", "email": "bench@example.com", "password": "bench-password-1"}


def timed(cmd, **kwargs):
    """Seconds `cmd` took."""
    started = time.perf_counter()
    run(cmd, **kwargs)
    return time.perf_counter() - started


def request(method, path, body=None, token=None):
    connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = connection.getresponse()
    raw = response.read()
    connection.close()
    return response.status, raw


class Loco:
    """The generated Loco app: made and built by `make`, run by `start`, stopped by
    `stop`."""

    def __init__(self, work, admin_url, tools, release_target):
        self.work = os.path.join(work, "peer")
        self.app = os.path.join(self.work, "peer")
        self.db_url = database_url(admin_url, DATABASE)
        self.admin_url = admin_url
        self.release_target = release_target
        self.env = dict(os.environ, PATH=f"{tools}{os.pathsep}{os.environ['PATH']}", DATABASE_URL=self.db_url)
        self.env.pop("RUST_LOG", None)
        self.process = None

    def make(self):
        """Generates the app and its scaffold, with a cold debug build between the two (the
        scaffold generator runs only from a debug build of the app), then builds it
        release. Returns the generation and build figures."""
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        psql(self.admin_url, f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        psql(self.admin_url, f'CREATE DATABASE "{DATABASE}"')
        # --allow-in-git-repo: the work directory is inside this repository (ignored by it).
        new_s = timed(["loco", "new", "--name", "peer", "--db", "postgres", "--bg", "async", "--assets", "none",
                       "--allow-in-git-repo",
                       "--path", self.work], env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        cold_target = os.path.join(self.work, "target")
        log("peer: cold cargo build of the Loco app (debug)")
        cold_s, cold_crates = cargo_build(self.app, cold_target)
        log(f"peer: cargo loco generate scaffold {' '.join(SCAFFOLD)} --api")
        # It compiles the app again with its new files, migrates the live database and
        # generates the entities from it (sea-orm-cli).
        scaffold_s = timed(["cargo", "loco", "generate", "scaffold", *SCAFFOLD, "--api"], cwd=self.app,
                           env=dict(self.env, CARGO_TARGET_DIR=cold_target), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        shutil.rmtree(cold_target, ignore_errors=True)
        log("peer: cargo build --release")
        release_s, _ = cargo_build(self.app, self.release_target, release=True)
        return ({"new_s": new_s, "scaffold_s": scaffold_s},
                {"profile": "debug", "cold_s": cold_s, "cold_crates": cold_crates, "release_s": release_s})

    def start(self):
        if port_in_use(PORT):
            raise BenchError(f"port {PORT} is in use on 127.0.0.1: stop what listens there and run again")
        # The production environment, as a user would deploy it: it wants a mailer and a
        # JWT secret; the mailer is never reached (registration's welcome mail fails on a
        # closed loopback port, which Loco logs and goes on).
        env = dict(self.env, LOCO_ENV="production", BINDING="127.0.0.1", PORT=str(PORT), HOST=URL,
                   JWT_SECRET=base64.b64encode(secrets.token_bytes(32)).decode(),
                   MAILER_HOST="127.0.0.1", MAILER_PORT="9", MAILER_USER="bench", MAILER_PASSWORD="bench")
        self.log_path = os.path.join(self.work, "peer.log")
        binary = os.path.join(self.release_target, "release", "peer-cli")
        with open(self.log_path, "w") as out:
            self.process = subprocess.Popen([binary, "start"], cwd=self.app, env=env, stdout=out,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not port_in_use(PORT):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the Loco app did not start listening on {PORT}; see {self.log_path}")
            time.sleep(0.2)
        status, raw = request("POST", "/api/auth/register", USER)
        if status != 200:
            raise BenchError(f"Loco's /api/auth/register answered {status}: {raw[:300]!r}")
        status, raw = request("POST", "/api/auth/login", {"email": USER["email"], "password": USER["password"]})
        if status != 200:
            raise BenchError(f"Loco's /api/auth/login answered {status}: {raw[:300]!r}")
        self.token = json.loads(raw)["token"]

    def create_order(self):
        status, raw = request("POST", "/api/orders", json.loads(ORDER_BODY), self.token)
        if status != 201:
            raise BenchError(f"Loco's POST /api/orders answered {status}: {raw[:300]!r}")
        return json.loads(raw)["id"]

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


def bench_peer(settings, work, admin_url, tools, release_target):
    """Loco beside ours: its generation and cold build, then its create and get by id under
    the same loads, with its memory and what it sent PostgreSQL per create."""
    loco = Loco(work, admin_url, tools, release_target)
    generation, build = loco.make()
    log(f"peer: loco new {generation['new_s']:.1f} s, scaffold {generation['scaffold_s']:.0f} s, "
        f"cold debug build {build['cold_s']:.0f} s ({build['cold_crates']} crates)")
    try:
        loco.start()
        time.sleep(2)
        idle = rss_mb(loco.process.pid)
        item = f"/api/orders/{loco.create_order()}"
        status, raw = request("GET", item, token=loco.token)
        if status != 200:
            raise BenchError(f"Loco's GET {item} answered {status}: {raw[:300]!r}")
        profile = StatementProfile(admin_url, [DATABASE])
        load = {"post": [], "get": []}
        with RssSampler({"loco": loco.process.pid}) as sampler:
            for c in settings.concurrencies:
                log(f"peer: load at concurrency {c}")
                runs = settings.load_runs
                load["get"].append(median_run(runs, lambda: wrk(settings, URL, loco.token, "GET", item, c, work)))

                def post():
                    profile.reset()
                    figures = wrk(settings, URL, loco.token, "POST", "/api/orders", c, work, body=ORDER_BODY)
                    figures["sent"] = profile.per_request(figures["requests"])
                    return figures

                load["post"].append(median_run(runs, post))
                log(f"peer: POST at c={c}: {load['post'][-1]['rps']:.0f}/s, p50 {load['post'][-1]['p50_ms']:.2f} ms; "
                    f"GET {load['get'][-1]['rps']:.0f}/s")
        return {"name": "Loco", "version": LOCO_VERSION, "generation": generation, "build": build,
                "idle_rss_mb": idle, "load_peak_rss_mb": sampler.peak["loco"], "load": load}
    finally:
        loco.stop()
        psql(admin_url, f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
