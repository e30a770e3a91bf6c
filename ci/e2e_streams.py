#!/usr/bin/env python3
"""End-to-end checks of the gateway's event streams (server-sent events), against the running
`shop` (orders with the commands confirm and cancel) started by deploy/local/up.sh with real
PostgreSQL, Redis and a real broker. Only loopback is contacted; every wait is bounded.

  1. follow: a stream of every order's events is open while an order is created, patched,
     confirmed, cancelled and deleted over REST. Each change reaches the stream within 1 s
     of its REST answer, in order of version, as `id: <order id>:<version>`, `event:` its
     type and `data:` the event with the order as it was right after the change.
  2. resume: the order's own stream with `Last-Event-ID: <id>:2` replays versions 3 to 5
     and nothing before; an id the gateway does not hold starts with a `resync` event.
  3. refusals: a stream without `orders:read` is 403, without a credential 401; one caller
     may hold GATEWAY__STREAMS__PER_PRINCIPAL streams (16) and the next is 429.
  4. replicas: a second gateway with the first one's settings shares its consumer group (or
     queue), so each consumes some of the events; a stream on each still gets all of 8 new
     orders' creations (the consuming replica passes them on through Redis). The second
     gateway is then stopped with SIGTERM: its stream ends cleanly.
  5. Redis stopped: an open stream still gets a new order's creation (the gateway that
     consumed it cannot pass it on, so its own streams get it); Redis started again: the
     stream gets `resync` (what Redis could not deliver is gone), then the next creation.
"""

import argparse
import http.client
import json
import os
import queue
import signal
import subprocess
import threading
import time
import uuid

from e2e_common import environment_of, http_ok, run_checks, wait_until
from e2e_gateway import Gateway, call, expect

HOST, PORT = "127.0.0.1", 8080
PER_PRINCIPAL = 16
REPLICA_PORT, REPLICA_METRICS = 8083, "127.0.0.1:9583"


class EventStream:
    """An open `text/event-stream` response, read by a thread into a queue of
    (seconds since the epoch, {"id", "event", "data"}) as each event completes."""

    def __init__(self, path, token=None, headers=None, port=PORT):
        self.connection = http.client.HTTPConnection(HOST, port, timeout=30)
        sent = {"Accept": "text/event-stream", **(headers or {})}
        if token:
            sent["Authorization"] = f"Bearer {token}"
        self.connection.request("GET", path, headers=sent)
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.content_type = self.response.getheader("content-type", "")
        self.events = queue.Queue()
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()
        else:
            self.body = self.response.read()

    def _read(self):
        event = {}
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if not line:
                    if event:
                        self.events.put((time.time(), event))
                    event = {}
                elif line.startswith(":"):
                    continue  # a keep-alive comment
                else:
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    event[field] = event.get(field, "") + ("\n" if field in event else "") + value
        except (OSError, ValueError, AttributeError):
            pass  # closed by close() (http.client then reads from None), or by the gateway
        self.events.put((time.time(), None))

    def next(self, seconds):
        """The next event, or None when none came within `seconds` or the stream ended."""
        try:
            return self.events.get(timeout=seconds)
        except queue.Empty:
            return None

    def close(self):
        self.connection.close()


def check_follow(gw, token):
    every = EventStream("/v1/orders/events", token)
    expect(every.status == 200 and every.content_type.startswith("text/event-stream"),
           f"GET /v1/orders/events: {every.status} {every.content_type}")
    answered_at = {}

    def change(version, method, path, body=None):
        status, _, parsed, _ = call(method, path, token, body, {"Idempotency-Key": str(uuid.uuid4())})
        answered_at[version] = time.time()
        expect(status in (200, 201, 204), f"{method} {path}: {status} {parsed}")
        return parsed

    order = change(1, "POST", "/v1/orders", {})
    path = f"/v1/orders/{order['id']}"
    change(2, "PATCH", path, {})
    change(3, "POST", path + "/confirm")
    change(4, "POST", path + "/cancel", {"reason": "changed my mind"})
    change(5, "DELETE", path)
    expected = [(1, "OrderCreated", "pending"), (2, "OrderUpdated", "pending"),
                (3, "OrderConfirmed", "confirmed"), (4, "OrderCancelled", "cancelled"),
                (5, "OrderDeleted", "cancelled")]
    seen = []
    deadline = time.monotonic() + 15
    while len(seen) < len(expected) and time.monotonic() < deadline:
        got = every.next(max(0.0, deadline - time.monotonic()))
        expect(got is not None and got[1] is not None, f"the stream ended or fell silent after {seen}")
        at, event = got
        if not event.get("id", "").startswith(order["id"] + ":"):
            continue  # another order's (another harness may have made one)
        seen.append((at, event))
    every.close()
    expect(len(seen) == len(expected), f"all 5 events of the order within 15 s: {[e for _, e in seen]}")
    lags = []
    for (at, event), (version, kind, state) in zip(seen, expected):
        data = json.loads(event["data"])
        expect(event["id"] == f"{order['id']}:{version}" and event["event"] == f"shop.orders.v1.{kind}",
               f"event {version} is {kind} with id <order>:{version}: {event}")
        expect(data["type"] == event["event"] and data["order_id"] == order["id"] and data["version"] == version
               and data["order"]["version"] == version and data["order"]["state"] == state,
               f"event {version}'s data holds the order right after the change ({state}): {data}")
        lag = at - answered_at[version]
        lags.append(lag)
        expect(lag <= 1.0, f"event {version} reached the stream {lag * 1000:.0f} ms after its REST answer")
    expect(json.loads(seen[3][1]["data"]).get("reason") == "changed my mind",
           f"the cancel event carries its own field: {seen[3][1]['data']}")
    print(f"check 1 passed: 5 changes over REST reached an open stream in order of version, "
          f"the slowest {max(lags) * 1000:.0f} ms after its answer")
    return order["id"]


def check_resume(token, order_id):
    path = f"/v1/orders/{order_id}/events"
    resumed = EventStream(path, token, {"Last-Event-ID": f"{order_id}:2"})
    expect(resumed.status == 200, f"resume: {resumed.status}")
    ids = []
    for _ in range(3):
        got = resumed.next(5)
        expect(got is not None and got[1] is not None, f"the replay after version 2: {ids}")
        ids.append(got[1].get("id"))
    expect(ids == [f"{order_id}:{v}" for v in (3, 4, 5)], f"Last-Event-ID <id>:2 replays 3 to 5: {ids}")
    extra = resumed.next(1)
    expect(extra is None, f"nothing more after the replay: {extra}")
    resumed.close()

    unknown = EventStream(path, token, {"Last-Event-ID": f"{uuid.uuid4()}:7"})
    got = unknown.next(5)
    expect(got is not None and got[1] is not None and got[1].get("event") == "resync"
           and "reason" in json.loads(got[1]["data"]), f"an unknown Last-Event-ID starts with resync: {got}")
    unknown.close()
    print("check 2 passed: Last-Event-ID replays what came after it; one the gateway does not hold gets resync")


def check_refusals(gw):
    billing_only = gw.token("streams-no-scope", ["billing:read"])
    refused = EventStream("/v1/orders/events", billing_only)
    expect(refused.status == 403, f"a stream without orders:read: {refused.status} {refused.body[:200]!r}")
    anonymous = EventStream("/v1/orders/events")
    expect(anonymous.status == 401, f"a stream without a credential: {anonymous.status}")
    greedy = gw.token(f"streams-greedy-{uuid.uuid4()}", ["orders:read"])
    held = [EventStream("/v1/orders/events", greedy) for _ in range(PER_PRINCIPAL)]
    expect(all(s.status == 200 for s in held), f"{PER_PRINCIPAL} streams: {[s.status for s in held]}")
    over = EventStream("/v1/orders/events", greedy)
    expect(over.status == 429, f"stream {PER_PRINCIPAL + 1} of one caller: {over.status} {over.body[:200]!r}")
    for s in held:
        s.close()
    print(f"check 3 passed: 403 without the scope, 401 without a credential, 429 beyond {PER_PRINCIPAL} streams")


def ids_within(stream, wanted, seconds):
    """The ids of `wanted` the stream delivered within `seconds`, and whether it ended."""
    seen, deadline = set(), time.monotonic() + seconds
    while seen != wanted and time.monotonic() < deadline:
        got = stream.next(max(0.0, deadline - time.monotonic()))
        if got is None:
            break
        if got[1] is None:
            return seen, True
        if got[1].get("id") in wanted:
            seen.add(got[1]["id"])
    return seen, False


def create(token):
    status, _, order, _ = call("POST", "/v1/orders", token, {}, {"Idempotency-Key": str(uuid.uuid4())})
    expect(status == 201, f"create: {status} {order}")
    return order["id"]


def check_replicas(args, token):
    env = environment_of(args.workspace, "gateway")
    env.update({"GATEWAY__HTTP__ADDR": f"{HOST}:{REPLICA_PORT}", "GATEWAY__METRICS__ADDR": REPLICA_METRICS,
                "GATEWAY__SHUTDOWN__DELAY_MS": "0"})
    run = os.path.join(args.workspace, ".run")
    with open(os.path.join(run, "gateway-replica.log"), "ab") as log:
        replica = subprocess.Popen([args.gateway], env=env, stdout=log, stderr=log)
    try:
        wait_until(lambda: http_ok(f"http://{HOST}:{REPLICA_PORT}/readyz"), 30, "the second gateway ready")
        first = EventStream("/v1/orders/events", token)
        second = EventStream("/v1/orders/events", token, port=REPLICA_PORT)
        expect(first.status == 200 and second.status == 200, f"streams: {first.status} {second.status}")
        wanted = {f"{create(token)}:1" for _ in range(8)}
        # Not 1 s: on Kafka the group is still settling after the second member joined.
        for name, stream in (("the first", first), ("the second", second)):
            seen, ended = ids_within(stream, wanted, 20)
            expect(seen == wanted and not ended,
                   f"{name} gateway's stream got {len(seen)} of the 8 creations (ended: {ended})")
        first.close()
        replica.send_signal(signal.SIGTERM)
        got = second.next(10)
        expect(got is not None and got[1] is None, f"the second gateway's stream ends when it stops: {got}")
        expect(replica.wait(timeout=20) == 0, f"the second gateway exits 0 on SIGTERM: {replica.returncode}")
        print("check 4 passed: a stream on each of two gateway replicas got all 8 creations; "
              "a stopping replica ends its streams")
    finally:
        if replica.poll() is None:
            replica.kill()
            replica.wait()


def check_redis_lost(token):
    brokers = os.path.join(os.path.dirname(os.path.abspath(__file__)), "brokers.sh")
    stream = EventStream("/v1/orders/events", token)
    expect(stream.status == 200, f"stream: {stream.status}")
    subprocess.run(["bash", brokers, "stop", "redis"], check=True, capture_output=True)
    try:
        during = f"{create(token)}:1"
        seen, ended = ids_within(stream, {during}, 15)
        expect(seen == {during} and not ended, f"a creation while Redis is down reaches the stream (ended: {ended})")
    finally:
        subprocess.run(["bash", brokers, "start", "redis"], check=True, capture_output=True)
    deadline, resynced = time.monotonic() + 20, None
    while resynced is None and time.monotonic() < deadline:
        got = stream.next(max(0.0, deadline - time.monotonic()))
        if got is None:
            break
        expect(got[1] is not None, "the stream stays open while Redis comes back")
        if got[1].get("event") == "resync":
            resynced = json.loads(got[1]["data"])["reason"]
    expect(resynced is not None, "resync within 20 s of Redis coming back")
    after = f"{create(token)}:1"
    seen, _ = ids_within(stream, {after}, 10)
    expect(seen == {after}, "a creation after Redis is back reaches the stream")
    stream.close()
    print(f"check 5 passed: with Redis down a stream still got a creation; back, it got resync ({resynced!r}), "
          "then the next creation")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--gateway", required=True, help="the built gateway binary")
    args = parser.parse_args()
    gw = Gateway(args)
    token = gw.token("streams", ["orders:read", "orders:write"])
    order_id = check_follow(gw, token)
    check_resume(token, order_id)
    check_refusals(gw)
    check_replicas(args, token)
    check_redis_lost(token)


if __name__ == "__main__":
    run_checks(main)
