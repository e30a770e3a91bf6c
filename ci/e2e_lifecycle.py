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
  2. ordering (--ordering): 50 changes to one order from 4 concurrent clients, two
     through the gateway (orders #1) and two over gRPC to a second orders process on the
     same database, so two relays compete for that order's events; then orders #1 is
     stopped and 10 more changes go to the second process, whose relay must publish them.
     A consumer in this harness sees the order's versions strictly increasing, none
     missing, none twice. On Kafka it reads the aggregate's topic; on SQS, billing is
     stopped meanwhile and the harness reads billing's FIFO queue (the order's events go
     there). Everything stopped is started again with deploy/local/up.sh.
"""

import argparse
import concurrent.futures
import os
import re
import signal
import subprocess
import time
import uuid

from e2e_common import (SQS, link_key, logged, queue_empty, service_credential, sqs_client,
                        stop_process, up_again, wait_until, run_checks)
from e2e_gateway import Gateway, call, expect

KAFKA = "127.0.0.1:9092"
BILLING_QUEUE = "shop-billing.fifo"
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

    # The creation event evicts the order from the gateway's cache once it arrives; wait for
    # that (else it may evict what the next lines cache), then fill the cache and
    # revalidate: 304 without a body, from the cache.
    try:
        logged(args.workspace, "gateway",
               lambda e: e.get("message") == "cache entry invalidated" and e.get("id") == order["id"],
               "the creation event's eviction at the gateway", seconds=10)
    except AssertionError:
        # Say where it is: still in the outbox (the relay), or published (the consumer).
        row = db_rows(args.orders_db, "SELECT published_at, attempts, last_error FROM outbox "
                      f"WHERE aggregate_id = '{order['id']}'")
        raise AssertionError(f"the creation event at the gateway: not within 10 s; its outbox row "
                             f"(published_at, attempts, last_error): {row}") from None
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
    gone_status = fetch(token, path)[0]
    expect(gone_status == 404, f"a deleted order is not found, cached or not: {gone_status}")
    again = change("DELETE", path, token)[0]
    expect(again == 204, f"a second DELETE is a no-op: {again}")

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
    env = {**os.environ, "ORDERS__DATABASE__URL": args.orders_db, "ORDERS__GRPC__ADDR": SECOND_ORDERS,
           "ORDERS__METRICS__ADDR": SECOND_METRICS,
           "ORDERS__CALLERS__GATEWAY__KEY": link_key(args.workspace, "gateway", "orders"),
           "ORDERS__CALLERS__CONSOLE__KEY": link_key(args.workspace, "console", "orders"),
           "ORDERS__KAFKA__BROKERS": KAFKA, "ORDERS__SQS__ENDPOINT": SQS, "RUST_LOG": "info"}
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


def read_until(receive, wanted, seconds=60):
    """Calls `receive()` (a list of versions) until `wanted` arrived, then a little longer
    (anything published twice would follow)."""
    versions = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(versions) < wanted:
        versions += receive()
    end = time.monotonic() + 2
    while time.monotonic() < end:
        versions += receive()
    return versions


def kafka_versions(order_id, wanted):
    """The order's versions in the order its topic holds them."""
    from confluent_kafka import Consumer
    consumer = Consumer({"bootstrap.servers": KAFKA, "group.id": f"e2e-order-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([ORDER_TOPIC])

    def receive():
        message = consumer.poll(0.2)
        if message is None or message.error():
            return []
        headers = {k: v.decode() for k, v in (message.headers() or [])}
        return [int(headers["aggregate_version"])] if headers.get("aggregate_id") == order_id else []

    try:
        return read_until(receive, wanted)
    finally:
        consumer.close()


def sqs_versions(order_id, wanted):
    """The order's versions in the order billing's FIFO queue delivers them (billing is
    stopped meanwhile); every message read is deleted, as a consumer would."""
    client = sqs_client()
    url = client.get_queue_url(QueueName=BILLING_QUEUE)["QueueUrl"]

    def receive():
        got = []
        response = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                          MessageAttributeNames=["All"])
        for m in response.get("Messages", []):
            attrs = {k: v["StringValue"] for k, v in m.get("MessageAttributes", {}).items()}
            if attrs.get("aggregate_id") == order_id:
                got.append(int(attrs["aggregate_version"]))
            client.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return got

    return read_until(receive, wanted)


def stop_service(args, name):
    """SIGTERM (the service finishes what it holds) and wait until it is gone."""
    stop_process(args.workspace, name, signal.SIGTERM, 20)


def replicas_of(workspace, service):
    """The processes up.sh started for `service`: `orders`, `orders-2`, ..."""
    names = [f[:-len(".pid")] for f in os.listdir(os.path.join(workspace, ".run")) if f.endswith(".pid")]
    return sorted(n for n in names if re.fullmatch(rf"{service}(-\d+)?", n))


def restart_stopped(args):
    up_again(args.workspace)


def check_ordering(args, token):
    import grpc
    from e2e import compile_protos

    orders_pb, orders_grpc, _, _ = compile_protos(args.workspace)
    if args.bus == "sqs":
        wait_until(lambda: queue_empty(BILLING_QUEUE), 30, "billing's queue drained")
        stop_service(args, "billing")
    second = start_second_orders(args)
    try:
        channel = grpc.insecure_channel(SECOND_ORDERS)
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = orders_grpc.OrdersServiceStub(channel)
        auth = service_credential(args.workspace, "orders")

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
        # Every replica up.sh started goes away, with its relay: what the second process
        # writes now only its relay can publish, after whatever the others left unsent.
        # Counted from here: its relay also published during the concurrent phase.
        replicas = replicas_of(args.workspace, "orders")
        for replica in replicas:
            stop_service(args, replica)
        before_second = published_total(int(SECOND_METRICS.rsplit(":", 1)[1]))
        handover = 10
        for _ in range(handover):
            stub.UpdateOrder(orders_pb.UpdateOrderRequest(id=order["id"], idempotency_key=str(uuid.uuid4())),
                             timeout=10, metadata=[auth])
        changes += handover
        last = 1 + changes
        final = db_rows(args.orders_db, f"SELECT version FROM orders WHERE id = '{order['id']}'")
        expect(final == [[str(last)]], f"the order is at version {last}: {final}")

        versions = (kafka_versions if args.bus == "kafka" else sqs_versions)(order["id"], last)
        expect(versions == list(range(1, last + 1)),
               f"the order's events in version order, none missing or twice: {versions}")
        second_published = published_total(int(SECOND_METRICS.rsplit(":", 1)[1])) - before_second
        expect(second_published >= handover, f"the second relay published {second_published} events, "
                                             f"at least the {handover} written after {replicas} stopped")
        print(f"check 2 passed: {changes - handover} concurrent changes from 4 clients with "
              f"{len(replicas) + 1} relays, {handover} more after {', '.join(replicas)} stopped (the second "
              f"process's relay published {int(second_published)} since), "
              f"versions 1..{last} in order "
              f"on {ORDER_TOPIC if args.bus == 'kafka' else BILLING_QUEUE}")
    finally:
        stop_second_orders(args, second)
        restart_stopped(args)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--gateway", required=True, help="the built gateway binary")
    parser.add_argument("--orders-bin", required=True, help="the built orders binary")
    parser.add_argument("--orders-db", required=True)
    parser.add_argument("--bus", required=True, choices=["kafka", "sqs"])
    parser.add_argument("--ordering", action="store_true", help="also the ordering check")
    args = parser.parse_args()
    gw = Gateway(args)
    token = gw.token("lifecycle", ["orders:read", "orders:write"])
    wait_until(lambda: call("GET", "/readyz")[0] == 200, 30, "gateway ready")
    check_lifecycle(args, token)
    if args.ordering:
        check_ordering(args, token)


if __name__ == "__main__":
    run_checks(main)
