#!/usr/bin/env python3
"""Schema evolution on a real database, one orders binary at a time on the same database:
  old       a binary from before the update migrates a fresh database and stores an order;
  new       after `archscaffold update` added a field, the new binary migrates the database
            forward, reads that order (at version 1), and stores and reads the new field;
  rollback  the binary from before the field (built by this archscaffold) starts again on
            the database the new one migrated (as a rollback or an old replica restarting
            mid-rollout would), reads both orders and stores one without the field.
Every wait is bounded; only loopback.

usage: upgrade_migrations.py --phase old|new|rollback --workspace WS --binary BIN
           --database URL --state FILE --expect-versions 1,2,... [--field NAME]
"""

import argparse
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import grpc
import jwt
from grpc_tools import protoc

from e2e_common import wait_until

SECRET = "upgrade-check-secret-0123456789abcdef"


def orders_modules(workspace):
    out = tempfile.mkdtemp(prefix="upgrade-proto-")
    root = os.path.join(workspace, "proto")
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    proto = os.path.join(root, "shop", "orders", "v1", "orders.proto")
    if protoc.main(["protoc", f"-I{root}", f"-I{well_known}", f"--python_out={out}",
                    f"--grpc_python_out={out}", proto]) != 0:
        sys.exit(f"protoc failed on {proto}")
    sys.path.insert(0, out)
    return (importlib.import_module("shop.orders.v1.orders_pb2"),
            importlib.import_module("shop.orders.v1.orders_pb2_grpc"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def applied_versions(database):
    out = subprocess.run(["psql", database, "-Atc",
                          "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version"],
                         check=True, capture_output=True, text=True).stdout
    return [int(v) for v in out.split()]


def credential():
    # The gateway's credential as every version checks it: before 0.4.0 one secret shared by
    # all (any `sub`), since then the gateway's own link key with `kid` = `sub` = gateway.
    now = int(time.time())
    token = jwt.encode({"iss": "shop.gateway", "aud": "shop.orders", "sub": "gateway",
                        "iat": now, "exp": now + 600}, SECRET, algorithm="HS256",
                       headers={"kid": "gateway"})
    return [("authorization", f"Bearer {token}")]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--phase", choices=["old", "new", "rollback"], required=True)
    p.add_argument("--workspace", required=True)
    p.add_argument("--binary", required=True)
    p.add_argument("--database", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--expect-versions", required=True)
    p.add_argument("--field", default="note")
    args = p.parse_args()
    expected = [int(v) for v in args.expect_versions.split(",")]

    pb, pb_grpc = orders_modules(args.workspace)
    port, metrics_port = free_port(), free_port()
    log = open(os.path.join(os.path.dirname(args.state), f"orders-{args.phase}.log"), "w")
    env = {**os.environ,
           "ORDERS__DATABASE__URL": args.database,
           "ORDERS__GRPC__ADDR": f"127.0.0.1:{port}",
           "ORDERS__METRICS__ADDR": f"127.0.0.1:{metrics_port}",
           "ORDERS__KAFKA__BROKERS": "127.0.0.1:1",
           # What a binary from before 0.4.0 reads, and what one since reads; since 0.14.0
           # every service admits the console's link too.
           "ORDERS__SERVICE_AUTH__SECRET": SECRET,
           "ORDERS__CALLERS__GATEWAY__KEY": SECRET,
           "ORDERS__CALLERS__CONSOLE__KEY": SECRET}
    process = subprocess.Popen([args.binary], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: process.poll() is not None or listening(port), 60,
                   f"{args.phase} orders binary listening on {port}")
        if process.poll() is not None:
            raise AssertionError(f"{args.phase} orders binary exited with {process.returncode}; "
                                 f"see {log.name}")
        versions = applied_versions(args.database)
        print(f"[{args.phase}] migrations applied: {versions}")
        if versions != expected:
            raise AssertionError(f"[{args.phase}] applied migrations {versions}, expected {expected}")
        stub = pb_grpc.OrdersServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        def get(order_id):
            return stub.GetOrder(pb.GetOrderRequest(id=order_id), timeout=10,
                                 metadata=credential()).order

        def create(key, **fields):
            return stub.CreateOrder(pb.CreateOrderRequest(idempotency_key=key, **fields),
                                    timeout=10, metadata=credential()).order

        state = {}
        if args.phase != "old":
            with open(args.state) as f:
                state = json.load(f)
        if args.phase == "old":
            state["before"] = create("before-upgrade").id
            print(f"[old] created order {state['before']}")
        elif args.phase == "new":
            old = get(state["before"])
            if old.id != state["before"] or getattr(old, args.field) != "" or old.version != 1:
                raise AssertionError(f"[new] the order stored before the upgrade reads back as {old} "
                                     "(expected the field's zero value and version 1)")
            created = create("after-upgrade", **{args.field: "added by the update"})
            if getattr(get(created.id), args.field) != "added by the update":
                raise AssertionError(f"[new] the new field did not round-trip: {get(created.id)}")
            state["after"] = created.id
            print(f"[new] read the old order; stored and read {args.field} on {created.id}")
        else:
            for key in ("before", "after"):
                if get(state[key]).id != state[key]:
                    raise AssertionError(f"[rollback] cannot read the {key} order")
            created = create("after-rollback")
            column = subprocess.run(
                ["psql", args.database, "-Atc",
                 f"SELECT \"{args.field}\" FROM orders WHERE id = '{created.id}'"],
                check=True, capture_output=True, text=True).stdout.strip()
            if column != "":
                raise AssertionError(f"[rollback] {args.field} of a row the old binary wrote is {column!r}")
            print(f"[rollback] read both orders; stored {created.id} without {args.field}")
        with open(args.state, "w") as f:
            json.dump(state, f)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        log.close()
    if process.returncode != 0:
        raise AssertionError(f"[{args.phase}] orders exited with {process.returncode} on SIGTERM; "
                             f"see {log.name}")


if __name__ == "__main__":
    main()
