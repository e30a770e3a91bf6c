#!/usr/bin/env python3
"""The checkout example run the way a newcomer runs it: deploy/local/up.sh with nothing
configured, which started a private PostgreSQL cluster, moto and Redis itself
(deploy/local/infra.sh). Only loopback is contacted; every wait is bounded.

  1. up.sh said what it started; the private cluster listens on a port of its own, with a
     password, and holds the services' databases.
  2. The system works: an item, then an order for it; the checkout saga confirms the order;
     a second read of the item comes from the cache (Redis).
  3. The generated README's "Run it" block, pasted into bash as it is (stopping at the
     first failing command), prints what the README says each command prints, in order
     (`…` standing for what differs from run to run).
"""

import argparse
import os
import re
import subprocess
import time
import uuid

from e2e_common import dev_token, run_checks, wait_until
from e2e_gateway import call, expect


def check_started(args):
    with open(args.up_output) as f:
        said = f.read()
    for what in ("PostgreSQL", "moto", "Redis"):
        expect(re.search(rf"^started {what} on 127\.0\.0\.1:\d+", said, re.M),
               f"up.sh says it started {what}: {said[-2000:]}")
    run = os.path.join(args.workspace, ".run")
    port = open(os.path.join(run, "postgres", "port")).read().strip()
    password = open(os.path.join(run, "postgres", "password")).read().strip()
    expect(port != "5432", f"the private cluster has a port of its own: {port}")
    url = f"postgres://postgres:{password}@127.0.0.1:{port}/postgres"
    names = subprocess.run(["psql", url, "-Atc", "SELECT datname FROM pg_database WHERE datname LIKE 'shop_%' "
                            "ORDER BY 1"], check=True, capture_output=True, text=True).stdout.split()
    expect(names == ["shop_inventory", "shop_orders", "shop_payments", "shop_shipping"],
           f"the services' databases in the private cluster: {names}")
    wrong = subprocess.run(["psql", f"postgres://postgres:wrong@127.0.0.1:{port}/postgres", "-Atc", "SELECT 1"],
                           capture_output=True, text=True)
    expect(wrong.returncode != 0, "the private cluster refuses a wrong password")
    print(f"check 1 passed: up.sh started PostgreSQL (127.0.0.1:{port}, password required), moto and Redis")


def check_system(args):
    token = dev_token(args.gateway, args.workspace, "newcomer")
    wait_until(lambda: call("GET", "/readyz")[0] == 200, 30, "gateway ready")
    status, _, item, _ = call("POST", "/v1/inventory", token, {"title": "demo", "stock": 5},
                              {"Idempotency-Key": str(uuid.uuid4())})
    expect(status == 201, f"create an item: {status} {item}")
    status, _, order, _ = call("POST", "/v1/orders", token,
                               {"customer_id": "c-1", "item_id": item["id"], "quantity": 1, "amount_cents": 1200},
                               {"Idempotency-Key": str(uuid.uuid4())})
    expect(status == 201, f"create an order: {status} {order}")
    wait_until(lambda: call("GET", f"/v1/orders/{order['id']}", token)[2].get("state") == "confirmed", 30,
               "the checkout saga confirms the order")
    path = f"/v1/inventory/{item['id']}"
    seen = []

    def cached():
        seen.append(call("GET", path, token)[1].get("x-cache"))
        return seen[-1] == "hit"
    wait_until(cached, 10, "a read of the item from the cache")
    print(f"check 2 passed: an item, an order confirmed by the saga, the item read from the cache "
          f"(after {len(seen) - 1} misses: the saga's reservation blocks re-caching for a moment)")


def run_it(readme):
    """The "Run it" section's shell block, and the lines it says the commands print."""
    section = readme.split("\n## Run it\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("\n```", 1)[0]
    expected = []
    for line in block.splitlines():
        said = re.match(r"^#   (?:prints: |        )(.*)$", line)
        if said:
            expected.append(said.group(1))
    return block, expected


def check_run_it(args):
    with open(os.path.join(args.workspace, "README.md")) as f:
        block, expected = run_it(f.read())
    expect(len(expected) >= 5, f"the Run it block says what it prints: {expected}")
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_ADMIN_URL", "SQS_ENDPOINT", "KAFKA_BROKERS", "REDIS_URL")}
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=args.workspace, env=env,
                          capture_output=True, text=True, timeout=180)
    expect(done.returncode == 0, f"the Run it block failed ({done.returncode}): {done.stderr[-2000:]}\n"
                                 f"it printed: {done.stdout[-2000:]}")
    printed = done.stdout.splitlines()
    at = 0
    for line in expected:
        pattern = re.compile(".*?".join(re.escape(part) for part in line.split("…")))
        while at < len(printed) and not pattern.fullmatch(printed[at]):
            at += 1
        expect(at < len(printed), f"the Run it block printed no line like {line!r} (in order) in:\n{done.stdout}")
        at += 1
    print(f"check 3 passed: the README's Run it block ran as pasted and printed the {len(expected)} lines it promises")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--up-output", required=True, help="what up.sh printed")
    parser.add_argument("--gateway", required=True, help="the built gateway binary")
    args = parser.parse_args()
    check_started(args)
    check_system(args)
    check_run_it(args)


if __name__ == "__main__":
    run_checks(main)
