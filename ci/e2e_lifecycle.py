#!/usr/bin/env python3
"""End-to-end checks of aggregates that change, over REST only (plus a broker consumer),
against the running `shop` whose orders have states (pending -> confirmed | cancelled) and
the commands `confirm` and `cancel`, started by deploy/local/up.sh with real PostgreSQL,
Redis and a real broker. Only loopback is contacted; every wait and loop is bounded.

  1. lifecycle: create, PATCH, confirm, an illegal confirm (409 naming the state and the
     allowed commands), a stale If-Match (412, nothing changed in the database), an
     If-None-Match read (304, also from the cache), cancel, DELETE then GET (404) and
     DELETE again (204). A GET right after each change shows it, though the previous
     version was cached; the outbox holds one event per change, versions 1 to 5.
  2. ordering (--ordering, Kafka): 50 changes to one order from 4 concurrent clients, two
     through the gateway (orders #1) and two over gRPC to a second orders process on the
     same database, so two relays publish that order's events; a consumer reading the
     aggregate's topic sees its versions strictly increasing, none missing, none twice.
"""

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time
import uuid

from e2e_common import wait_until
from e2e_gateway import Gateway, call, expect

KAFKA = "127.0.0.1:9092"
ORDER_TOPIC = "shop.orders.order.v1"
SECOND_ORDERS = "127.0.0.1:50151"
SECOND_METRICS = "127.0.0.1:9575"


def db_rows(orders_db, sql):
    out = subprocess.run(["psql", orders_db, "-At", "-F", "|", "-c", sql],
                         check=True, capture_output=True, text=True).stdout
    return [line.split("|") for line in out.strip().splitlines() if line]


def fetch(token, path, **headers):
    return call("GET", path, token, headers=headers)


def change(method, path, token, body=None, if_match=None):
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    if if_match is not None:
        headers["If-Match"] = if_match
    status, head, parsed, _ = call(method, path, token, body, headers)
    return status, head, parsed


def check_lifecycle(args, token):
    status, head, order, _ = call("POST", "/v1/orders", token, {}, {"Idempotency-Key": str(uuid.uuid4())})
    expect(status == 201 and head.get("etag") == '"1"', f"create: {status} {head.get('etag')} {order}")
    expect(order["state"] == "pending" and order["version"] == 1, f"a new order is pending at 1: {order}")
    path = f"/v1/orders/{order['id']}"

    # Fill the cache (the creation event may evict it once), then revalidate: 304 without
    # a body, from the cache.
    wait_until(lambda: fetch(token, path)[1].get("x-cache") == "hit", 10, "the order cached")
    status, head, body, _ = fetch(token, path, **{"If-None-Match": '"1"'})
    expect(status == 304 and not body and head.get("etag") == '"1"', f"If-None-Match: {status} {head} {body!r}")
    expect(head.get("x-cache") == "hit", f"the 304 came from the cache: {head}")

    def shows(version, state):
        status, head, now, _ = fetch(token, path)
        expect(status == 200 and now["version"] == version and now["state"] == state
               and head.get("etag") == f'"{version}"',
               f"a GET right after the change shows version {version} ({state}): {status} {head} {now}")

    status, head, patched = change("PATCH", path, token, {}, if_match='"1"')
    expect(status == 200 and patched["version"] == 2 and head.get("etag") == '"2"', f"PATCH: {status} {patched}")
    shows(2, "pending")

    status, _, problem = change("PATCH", path, token, {}, if_match='"1"')
    expect(status == 412, f"a stale If-Match answers 412: {status} {problem}")
    expect(db_rows(args.orders_db, f"SELECT version, state FROM orders WHERE id = '{order['id']}'")
           == [["2", "pending"]], "a refused change leaves the row as it was")

    status, _, confirmed = change("POST", path + "/confirm", token, if_match='"2"')
    expect(status == 200 and confirmed["state"] == "confirmed" and confirmed["version"] == 3,
           f"confirm: {status} {confirmed}")
    shows(3, "confirmed")

    status, head, problem = change("POST", path + "/confirm", token)
    expect(status == 409 and head.get("content-type") == "application/problem+json", f"confirm twice: {status} {problem}")
    expect(problem.get("current_state") == "confirmed" and problem.get("allowed_commands") == ["cancel"],
           f"the 409 names the state and what it allows: {problem}")

    status, _, cancelled = change("POST", path + "/cancel", token, {"reason": "changed my mind"}, if_match='"3"')
    expect(status == 200 and cancelled["state"] == "cancelled" and cancelled["version"] == 4,
           f"cancel: {status} {cancelled}")
    shows(4, "cancelled")
    status, _, problem = change("POST", path + "/cancel", token, {"reason": "again"})
    expect(status == 409 and problem.get("allowed_commands") == [], f"nothing is allowed once cancelled: {problem}")

    status, _, _ = change("DELETE", path, token, if_match='"3"')
    expect(status == 412, f"a stale delete answers 412: {status}")
    status, _, body = change("DELETE", path, token, if_match='"4"')
    expect(status == 204 and not body, f"DELETE: {status} {body!r}")
    expect(fetch(token, path)[0] == 404, "a deleted order is not found, cached or not")
    expect(change("DELETE", path, token)[0] == 204, "a second DELETE is a no-op")

    events = db_rows(args.orders_db,
                     "SELECT aggregate_version, event_type, headers->>'aggregate_version' FROM outbox "
                     f"WHERE aggregate_id = '{order['id']}' ORDER BY aggregate_version")
    expect(events == [["1", "shop.orders.v1.OrderCreated", "1"], ["2", "shop.orders.v1.OrderUpdated", "2"],
                      ["3", "shop.orders.v1.OrderConfirmed", "3"], ["4", "shop.orders.v1.OrderCancelled", "4"],
                      ["5", "shop.orders.v1.OrderDeleted", "5"]],
           f"one event per change, in version order: {events}")
    print("check 1 passed: create, PATCH, confirm, 409, 412, 304, cancel, DELETE, 404; each change seen at once")


def start_second_orders(args):
    """A second orders process on the same database: its own relay competes for the outbox."""
    with open(os.path.join(args.workspace, ".run", "service-auth.secret")) as f:
        secret = f.read().strip()
    env = {**os.environ, "ORDERS__DATABASE__URL": args.orders_db, "ORDERS__GRPC__ADDR": SECOND_ORDERS,
           "ORDERS__METRICS__ADDR": SECOND_METRICS, "ORDERS__SERVICE_AUTH__SECRET": secret,
           "ORDERS__KAFKA__BROKERS": KAFKA, "RUST_LOG": "info"}
    log = open(os.path.join(args.workspace, ".run", "orders-second.log"), "ab")
    process = subprocess.Popen([args.orders_bin], env=env, stdout=log, stderr=log)
    # down.sh stops it too if this script dies before it does.
    with open(os.path.join(args.workspace, ".run", "orders-second.pid"), "w") as f:
        f.write(str(process.pid))
    return process


def stop_second_orders(args, process):
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
    os.remove(os.path.join(args.workspace, ".run", "orders-second.pid"))


def published_total(port):
    from e2e_common import scrape, total
    return total(scrape(port), "outbox_published_total")


def check_ordering(args, token):
    import grpc
    from confluent_kafka import Consumer
    from e2e import compile_protos, service_credential

    orders_pb, orders_grpc, _, _ = compile_protos(args.workspace)
    second = start_second_orders(args)
    try:
        channel = grpc.insecure_channel(SECOND_ORDERS)
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = orders_grpc.OrdersServiceStub(channel)
        auth = service_credential(args.workspace, "orders")
        before_second = published_total(int(SECOND_METRICS.rsplit(":", 1)[1]))

        status, _, order, _ = call("POST", "/v1/orders", token, {}, {"Idempotency-Key": str(uuid.uuid4())})
        expect(status == 201, f"create: {status} {order}")
        path, wanted = f"/v1/orders/{order['id']}", 50

        def client(n):
            """Changes the order until the shared total is reached (bounded attempts)."""
            done = 0
            for _ in range(200):
                if succeeded.count(True) >= wanted:
                    break
                if n % 2 == 0:
                    ok = change("PATCH", path, token, {})[0] == 200
                else:
                    try:
                        stub.UpdateOrder(orders_pb.UpdateOrderRequest(id=order["id"], idempotency_key=str(uuid.uuid4())),
                                         timeout=10, metadata=[auth])
                        ok = True
                    except grpc.RpcError as e:
                        # A change that lost to concurrent ones three times; it changed nothing.
                        expect(e.code() == grpc.StatusCode.ABORTED, f"gRPC update: {e}")
                        ok = False
                succeeded.append(ok)
                done += ok
            return done

        succeeded = []
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            per_client = list(pool.map(client, range(4)))
        changes = sum(per_client)
        expect(changes >= wanted and per_client[0] + per_client[2] > 0 and per_client[1] + per_client[3] > 0,
               f"changes through the gateway and over gRPC to the second process: {per_client}")
        last = 1 + changes
        final = db_rows(args.orders_db, f"SELECT version FROM orders WHERE id = '{order['id']}'")
        expect(final == [[str(last)]], f"the order is at version {last}: {final}")

        consumer = Consumer({"bootstrap.servers": KAFKA, "group.id": f"e2e-order-{uuid.uuid4()}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumer.subscribe([ORDER_TOPIC])
        versions = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(versions) < last:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            headers = {k: v.decode() for k, v in (message.headers() or [])}
            if headers.get("aggregate_id") == order["id"]:
                versions.append(int(headers["aggregate_version"]))
        # Anything published twice would follow: read a little longer.
        end = time.monotonic() + 2
        while time.monotonic() < end:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                headers = {k: v.decode() for k, v in (message.headers() or [])}
                if headers.get("aggregate_id") == order["id"]:
                    versions.append(int(headers["aggregate_version"]))
        consumer.close()
        expect(versions == list(range(1, last + 1)),
               f"the order's events in version order, none missing or twice: {versions}")
        second_published = published_total(int(SECOND_METRICS.rsplit(":", 1)[1])) - before_second
        expect(second_published > 0, "the second relay published some of the events")
        print(f"check 2 passed: {changes} concurrent changes from 4 clients, two relays "
              f"(the second published {int(second_published)}), versions 1..{last} in order on {ORDER_TOPIC}")
    finally:
        stop_second_orders(args, second)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--gateway", required=True, help="the built gateway binary")
    parser.add_argument("--orders-bin", required=True, help="the built orders binary")
    parser.add_argument("--orders-db", required=True)
    parser.add_argument("--ordering", action="store_true", help="also the ordering check (Kafka)")
    args = parser.parse_args()
    gw = Gateway(args)
    token = gw.token("lifecycle", ["orders:read", "orders:write"])
    wait_until(lambda: call("GET", "/readyz")[0] == 200, 30, "gateway ready")
    check_lifecycle(args, token)
    if args.ordering:
        check_ordering(args, token)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
