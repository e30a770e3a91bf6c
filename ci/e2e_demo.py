#!/usr/bin/env python3
"""The checkout example run the way a newcomer runs it: deploy/local/up.sh with nothing
configured, which started a private PostgreSQL cluster, moto and Redis itself
(deploy/local/infra.sh). Only loopback is contacted; every wait is bounded.

  1. up.sh said what it started; the private cluster listens on a port of its own, with a
     password, and holds the services' databases.
  2. The system works: an item, then an order for it; the checkout saga confirms the order;
     a second read of the item comes from the cache (Redis).
"""

import argparse
import os
import re
import subprocess
import sys
import time
import uuid

from e2e_common import dev_token, wait_until
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
    print(f"check 2 passed: an item, an order confirmed by the saga, the item read from the cache ({seen})")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--up-output", required=True, help="what up.sh printed")
    parser.add_argument("--gateway", required=True, help="the built gateway binary")
    args = parser.parse_args()
    check_started(args)
    check_system(args)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
