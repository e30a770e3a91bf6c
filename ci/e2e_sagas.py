#!/usr/bin/env python3
"""Issue 16 end to end: the `place_order` saga of examples/checkout.toml (orders owns it;
payments, inventory and shipping take part) on the running system started by
deploy/local/up.sh, with real PostgreSQL and a real broker. Talks to 127.0.0.1 only; every
wait is bounded. Effects are counted in the participants' own databases.

The harness edited the user-owned rules before building, as a user would: inventory refuses
a reservation above 10 units, shipping refuses a shipment of exactly 7, and payments
refuses to void a payment of 13 cents while PAYMENTS_E2E_VOID_BROKEN is set.

  1. happy path: every step runs once, the order is confirmed
  2. refusals: (a) a retired item, (b) inventory's rule; both void the payment once and
     cancel the order; (c) shipping refuses the last step: the reservation is released,
     then the payment voided (reverse order), each once
  3. outage: payments stopped for 15 s while 20 sagas start; all 20 complete once it is
     back, one payment each
  4. a compensation that keeps failing: the saga ends in compensation_failed, the metric
     says so, other sagas complete meanwhile; a token without orders:admin cannot retry
     it; once the cause is fixed, the admin retry compensates it
  5. duplicates: the starting events of four completed sagas are delivered again, and every
     step's call of one is made again (the instance rewound): no second effect anywhere
  6. two replicas: a second orders process runs the sagas beside the first while
     inventory answers after 600 ms; each saga's reservation is called once in all
     (counted by both replicas' saga_step_duration_seconds), never by both runners
  7. crash: orders dies (a test-only fault hook aborts it) right after the reservation
     succeeded, before the saga recorded it (the step was recorded as trying before its
     call); restarted by up.sh, the saga completes and the item holds one reservation
  8. deadline (run last): orders dies the same way, and is restarted only once the saga's
     real deadline has passed: the reservation in doubt is settled and released, the
     payment voided, the order cancelled
"""

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid

from e2e_common import (dev_token, environment_of, free_port, gone, http_ok, pid_of, scrape, stop_process, total, up_again,
                        wait_until)
from e2e_gateway import call, expect
from e2e_traces import spans

ORDERS_METRICS = 9465
SAGA_TIMEOUT_S = 30


class Checkout:
    def __init__(self, args):
        self.args = args
        self.token = dev_token(args.gateway, args.workspace, "saga-check")
        base = args.database.split("?")[0].rsplit("/", 1)[0]
        self.db = {c: f"{base}/shop_{c}" for c in ("orders", "payments", "inventory", "shipping")}

    def sql(self, context, query):
        out = subprocess.run(["psql", self.db[context], "-At", "-F", "|", "-c", query],
                             check=True, capture_output=True, text=True).stdout
        return [line.split("|") for line in out.strip().splitlines() if line]

    def post(self, path, body=None):
        return call("POST", path, self.token, body, {"Idempotency-Key": str(uuid.uuid4())})

    def item(self, stock=100):
        status, _, item, _ = self.post("/v1/inventory", {"title": "lamp", "stock": stock})
        expect(status == 201, f"create an item: {status} {item}")
        return item["id"]

    def place(self, item_id, quantity=1, amount_cents=500, headers=None):
        status, _, order, _ = call("POST", "/v1/orders", self.token,
                                   {"customer_id": "c-1", "item_id": item_id, "quantity": quantity,
                                    "amount_cents": amount_cents},
                                   {"Idempotency-Key": str(uuid.uuid4()), **(headers or {})})
        expect(status == 201 and order["state"] == "pending", f"place an order: {status} {order}")
        return order["id"]

    def sagas(self, order_id):
        status, _, body, _ = call("GET", f"/v1/orders/{order_id}/sagas", self.token)
        expect(status == 200, f"GET sagas: {status} {body}")
        return body["items"]

    def settled(self, order_id, states=("completed", "compensated"), seconds=SAGA_TIMEOUT_S + 15):
        """The order's one saga once it reached one of `states`."""
        found = {}

        def done():
            sagas = self.sagas(order_id)
            if len(sagas) == 1 and sagas[0]["state"] in states:
                found["saga"] = sagas[0]
                return True
            return False
        wait_until(done, seconds, f"the saga of order {order_id} to reach {states}")
        return found["saga"]

    def order(self, order_id):
        status, _, order, _ = call("GET", f"/v1/orders/{order_id}", self.token, headers={"Cache-Control": "no-cache"})
        expect(status == 200, f"GET order: {status} {order}")
        return order

    # Effects, counted where they live.
    def payments(self, order_id):
        return self.sql("payments", f"SELECT state, version FROM payments WHERE order_id = '{order_id}'")

    def shipments(self, order_id):
        return self.sql("shipping", f"SELECT count(*) FROM shipments WHERE order_id = '{order_id}'")[0][0]

    def item_events(self, item_id):
        """The item's events in the order they were written: its every effect."""
        return [r[0].rsplit(".", 1)[1] for r in self.sql(
            "inventory", f"SELECT event_type FROM outbox WHERE aggregate_id = '{item_id}' ORDER BY aggregate_version")]

    def retire(self, item_id):
        status, _, item, _ = self.post(f"/v1/inventory/{item_id}/retire")
        expect(status == 200 and item["state"] == "retired", f"retire: {status} {item}")


def statuses(saga):
    return [s["status"] for s in saga["steps"]]


def saga_metrics():
    samples = scrape(ORDERS_METRICS)
    return (total(samples, "saga_started_total", saga="place_order"),
            total(samples, "saga_completed_total", saga="place_order", outcome="completed"),
            total(samples, "saga_step_duration_seconds_count", saga="place_order", direction="forward",
                  outcome="ok"))


def check_happy(c):
    item = c.item()
    started, completed, steps = saga_metrics()
    trace_id = os.urandom(16).hex()
    order = c.place(item, quantity=2, headers={"traceparent": f"00-{trace_id}-{os.urandom(8).hex()}-01"})
    saga = c.settled(order)
    expect(saga["state"] == "completed" and statuses(saga) == ["done", "done", "done"], f"completed: {saga}")
    expect(c.order(order)["state"] == "confirmed", "the order is confirmed")
    expect(c.payments(order) == [["captured", "1"]], f"one payment: {c.payments(order)}")
    expect(c.item_events(item) == ["ItemCreated", "ItemReserved"], f"one reservation: {c.item_events(item)}")
    expect(c.shipments(order) == "1", "one shipment")
    expect(saga["steps"][0]["result"] == c.sql("payments", f"SELECT id FROM payments WHERE order_id = '{order}'")[0][0],
           "the create step recorded the payment's id")
    # Counted, and a span per step in the trace of the request that placed the order.
    wait_until(lambda: saga_metrics() == (started + 1, completed + 1, steps + 3), 10,
               f"saga metrics to count it (before {started, completed, steps}, now {saga_metrics()})")
    wanted = {f"saga place_order {label} {direction}" for label, direction in
              [("create payments", "forward"), ("inventory.reserve", "forward"),
               ("create shipping", "forward"), ("on_success", "on_success")]}
    names = set()

    def traced():
        names.update(span["name"] for span in spans(c.args.spans, trace_id) if span["service"] == "orders")
        return wanted <= names
    wait_until(traced, 15, f"the steps' spans in the order's trace (have {sorted(names)})")
    print("check 1 passed: payment, reservation, shipment once each; the order confirmed; counted, and "
          "each step a span in the order's trace")
    return order, item


def expect_compensated(c, order, item, refused_step, item_events, what):
    saga = c.settled(order)
    expect(saga["state"] == "compensated", f"{what}: {saga}")
    expect(saga["steps"][refused_step]["status"] == "refused", f"{what}: step {refused_step + 1} refused: {saga}")
    expect(f"step {refused_step + 1}" in saga["reason"], f"{what}: the reason names the step: {saga['reason']}")
    expect(c.payments(order) == [["voided", "2"]], f"{what}: the payment voided once: {c.payments(order)}")
    order_now = c.order(order)
    expect(order_now["state"] == "cancelled", f"{what}: the order is cancelled: {order_now}")
    expect(c.item_events(item) == item_events, f"{what}: the item's effects: {c.item_events(item)}")
    return saga


def check_refusals(c):
    # (a) The item was retired (a command of the domain): reserve is not allowed from there.
    item = c.item()
    c.retire(item)
    order = c.place(item)
    saga = expect_compensated(c, order, item, 1, ["ItemCreated", "ItemRetired"], "a retired item")
    expect(statuses(saga) == ["compensated", "refused", "pending"], f"a retired item: {statuses(saga)}")
    expect(c.shipments(order) == "0", "no shipment")
    reason = c.sql("orders", f"SELECT reason FROM saga WHERE aggregate_id = '{order}'")[0][0]
    expect("inventory.reserve" in reason, f"the cancel carries the saga's reason: {reason}")
    # (b) inventory's own rule (the harness edited rules.rs): at most 10 units.
    item = c.item()
    order = c.place(item, quantity=11)
    saga = expect_compensated(c, order, item, 1, ["ItemCreated"], "11 units")
    expect("at most 10" in saga["steps"][1]["error"], f"the rule's words: {saga['steps'][1]}")
    # (c) shipping refuses the last step: both earlier steps are undone, in reverse.
    item = c.item()
    order = c.place(item, quantity=7)
    saga = expect_compensated(c, order, item, 2, ["ItemCreated", "ItemReserved", "ItemReleased"], "7 units")
    expect(statuses(saga) == ["compensated", "compensated", "refused"], f"7 units: {statuses(saga)}")
    released = c.sql("inventory", f"SELECT created_at FROM outbox WHERE aggregate_id = '{item}' "
                     "AND event_type LIKE '%ItemReleased'")[0][0]
    voided = c.sql("payments", "SELECT o.created_at FROM outbox o JOIN payments p ON p.id = o.aggregate_id "
                   f"WHERE p.order_id = '{order}' AND o.event_type LIKE '%PaymentVoided'")[0][0]
    expect(released < voided, f"released ({released}) before voided ({voided})")
    print("check 2 passed: a retired item, inventory's rule and shipping's refusal each void the payment "
          "and cancel the order, compensations in reverse order, each once")


# How long a restarted orders may take to consume its first event on Kafka: when the group
# member that led it is gone, tansu stalls the group until the adapter rejoins, after two
# session timeouts (20 s; the README's broker notes).
REJOIN_S = 25


def die_after_the_reservation(c, seconds=20 + REJOIN_S):
    """orders restarted with the fault hook; an order placed: orders dies right after the
    reservation succeeded, before the saga recorded its outcome. Returns (order, item)."""
    item = c.item()
    stop_process(c.args.workspace, "orders", signal.SIGTERM, 20)
    up_again(c.args.workspace, {"ORDERS__FAULTS__SAGA_DIE_AFTER_STEP": "1"})
    pid = pid_of(c.args.workspace, "orders")
    order = c.place(item)
    wait_until(lambda: gone(pid), seconds, "orders to die right after the reservation")
    expect(c.item_events(item) == ["ItemCreated", "ItemReserved"], f"reserved before the crash: {c.item_events(item)}")
    # Recorded as in flight before the call was made: whoever takes the saga over settles it.
    recorded = c.sql("orders", f"SELECT steps->1->>'status' FROM saga WHERE aggregate_id = '{order}'")[0][0]
    expect(recorded == "trying", f"the reservation was marked in flight, its outcome unrecorded: {recorded}")
    return order, item


def check_crash(c):
    order, item = die_after_the_reservation(c)
    started = time.monotonic()
    up_again(c.args.workspace)
    saga = c.settled(order)
    expect(saga["state"] == "completed", f"completed after the restart: {saga}")
    expect(c.item_events(item) == ["ItemCreated", "ItemReserved"], f"still one reservation: {c.item_events(item)}")
    expect(c.payments(order) == [["captured", "1"]] and c.shipments(order) == "1", "one payment, one shipment")
    print(f"check 7 passed: orders died between the reservation and its record; restarted, the saga "
          f"completed {time.monotonic() - started:.1f} s later with one reservation")


def check_deadline(c):
    # On SQS the last long poll of an orders that died in an earlier check may hide this
    # order's start for the queue's visibility timeout (60 s): orders may die that late.
    order, item = die_after_the_reservation(c, seconds=20 + (60 if c.args.bus == "sqs" else REJOIN_S))
    # The saga's own deadline passes while no runner is up (no test sets it by hand).
    wait_until(lambda: c.sql("orders", f"SELECT deadline < now() FROM saga WHERE aggregate_id = '{order}'")[0][0] == "t",
               SAGA_TIMEOUT_S + 5, "the saga's deadline to pass")
    up_again(c.args.workspace)
    saga = c.settled(order)
    expect(saga["state"] == "compensated" and saga["reason"].startswith("timed out"), f"compensated after the deadline: {saga}")
    expect(statuses(saga) == ["compensated", "compensated", "pending"], f"the reservation in doubt undone: {statuses(saga)}")
    expect(c.item_events(item) == ["ItemCreated", "ItemReserved", "ItemReleased"],
           f"the reservation made before the crash was released once: {c.item_events(item)}")
    expect(c.payments(order) == [["voided", "2"]], f"the payment voided once: {c.payments(order)}")
    expect(c.shipments(order) == "0", "no shipment")
    expect(c.order(order)["state"] == "cancelled", "the order is cancelled")
    print("check 8 passed: orders died between the reservation and its record and came back after the saga's "
          "deadline: the reservation was settled and released, the payment voided, the order cancelled")


def reserve_calls(metrics_ports):
    """Reservation calls the sagas made, whatever their outcome, summed over replicas."""
    return sum(total(scrape(port), "saga_step_duration_seconds_count", saga="place_order", step="inventory.reserve",
                     direction="forward") for port in metrics_ports)


def check_replicas(c):
    ws = c.args.workspace
    # inventory answers every call after 600 ms: a runner that let go of its lease after
    # the payment would leave the reservation to the other runner as well.
    stop_process(ws, "inventory", signal.SIGTERM, 20)
    up_again(ws, {"INVENTORY__FAULTS__DELAY_MS": "600"})
    env = environment_of(ws, "orders")
    binary = os.readlink(f"/proc/{pid_of(ws, 'orders')}/exe")
    metrics = free_port()
    env.update({"ORDERS__GRPC__ADDR": f"127.0.0.1:{free_port()}", "ORDERS__METRICS__ADDR": f"127.0.0.1:{metrics}"})
    run = os.path.join(ws, ".run")
    with open(os.path.join(run, "orders-extra.log"), "ab") as log:
        second = subprocess.Popen([binary], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    # Recorded where the harness looks, so it checks this process was stopped too.
    with open(os.path.join(run, "orders-extra.pid"), "w") as f:
        f.write(f"{second.pid}\n")
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{metrics}/metrics"), 30, "a second orders replica to serve")
        ports = (ORDERS_METRICS, metrics)
        before = reserve_calls(ports)
        items = [c.item() for _ in range(3)]
        orders = [c.place(item) for item in items]
        for order, item in zip(orders, items):
            saga = c.settled(order)
            expect(saga["state"] == "completed", f"completed with two runners: {saga}")
            expect(c.item_events(item) == ["ItemCreated", "ItemReserved"], f"one reservation: {c.item_events(item)}")
            expect(c.payments(order) == [["captured", "1"]] and c.shipments(order) == "1", "one payment, one shipment")
        wait_until(lambda: reserve_calls(ports) >= before + 3, 10, "both replicas to count the reservations")
        time.sleep(1)
        calls = reserve_calls(ports) - before
        expect(calls == 3, f"3 sagas made {calls} reservation calls between them (one each, not one per runner)")
        print(f"check 6 passed: two orders replicas ran 3 sagas against a 600 ms inventory: {calls:.0f} reservation "
              "calls, one per saga")
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(20)
        except subprocess.TimeoutExpired:
            second.kill()
            second.wait(5)
        stop_process(ws, "inventory", signal.SIGTERM, 20)
        up_again(ws)


def check_outage(c):
    item = c.item(stock=1000)
    # Its consumer runs (a restarted orders may take a rejoin first, see the README's
    # broker notes): one saga through.
    expect(c.settled(c.place(item))["state"] == "completed", "a saga completes before the outage")
    stop_process(c.args.workspace, "payments", signal.SIGTERM, 20)
    stopped = time.monotonic()
    orders = [c.place(item) for _ in range(20)]
    wait_until(lambda: all(c.sagas(o) for o in orders), 20, "the 20 sagas to start")
    time.sleep(max(0.0, 15 - (time.monotonic() - stopped)))
    running = [s for o in orders for s in c.sagas(o) if s["state"] == "running"]
    expect(len(running) == 20, f"all 20 wait for payments: {len(running)} running")
    expect(all(s["steps"][0]["status"] == "trying" for s in running), "each retries its payment")
    up_again(c.args.workspace)
    back = time.monotonic()
    for order in orders:
        saga = c.settled(order)
        expect(saga["state"] == "completed", f"completed after the outage: {saga}")
        expect(c.payments(order) == [["captured", "1"]] and c.shipments(order) == "1", f"one payment, one shipment: {order}")
    expect(c.item_events(item) == ["ItemCreated"] + ["ItemReserved"] * 21, "one reservation per order")
    print(f"check 3 passed: payments down 15 s during 20 sagas; all completed {time.monotonic() - back:.1f} s "
          "after it returned, one payment and one shipment each")


def failed_gauge():
    return total(scrape(ORDERS_METRICS), "saga_compensation_failed", saga="place_order")


def check_failing_compensation(c):
    stop_process(c.args.workspace, "payments", signal.SIGTERM, 20)
    up_again(c.args.workspace, {"PAYMENTS_E2E_VOID_BROKEN": "1"})
    item = c.item()
    c.retire(item)
    stuck = c.place(item, amount_cents=13)
    saga = c.settled(stuck, states=("compensation_failed",))
    expect(saga["steps"][0]["status"] == "done" and "void" in saga["last_error"].lower(), f"stuck on the void: {saga}")
    wait_until(lambda: failed_gauge() == 1, 10, "saga_compensation_failed to say 1")
    # Others go on meanwhile.
    other = c.place(c.item())
    expect(c.settled(other)["state"] == "completed", "another saga completes meanwhile")
    status, _, problem, _ = c.post(f"/v1/orders/{other}/sagas/{c.sagas(other)[0]['id']}/retry")
    expect(status == 409, f"a completed saga is not retried: {status} {problem}")
    # A saga is retried through its own order only.
    status, _, problem, _ = c.post(f"/v1/orders/{other}/sagas/{saga['id']}/retry")
    expect(status == 404, f"retried through another order: {status} {problem}")
    # Retrying is an operator's: a token without orders:admin is refused.
    plain = dev_token(c.args.gateway, c.args.workspace, "not-an-operator", ["orders:read", "orders:write"])
    status, _, problem, _ = call("POST", f"/v1/orders/{stuck}/sagas/{saga['id']}/retry", plain)
    expect(status == 403 and "orders:admin" in problem["detail"], f"retry without the scope: {status} {problem}")
    # The cause fixed (payments restarted without the fault), the operator retries.
    stop_process(c.args.workspace, "payments", signal.SIGTERM, 20)
    up_again(c.args.workspace)
    status, _, body, _ = c.post(f"/v1/orders/{stuck}/sagas/{saga['id']}/retry")
    expect(status == 200 and body["id"] == saga["id"] and body["state"] in ("compensating", "compensated"),
           f"retry: {status} {body}")
    # Sent again, as after a lost answer: the saga as it is, not an error.
    status, _, body, _ = c.post(f"/v1/orders/{stuck}/sagas/{saga['id']}/retry")
    expect(status == 200 and body["state"] in ("compensating", "failing", "compensated"), f"retry again: {status} {body}")
    saga = c.settled(stuck)
    expect(saga["state"] == "compensated", f"compensated after the retry: {saga}")
    expect(c.payments(stuck) == [["voided", "2"]], f"voided once: {c.payments(stuck)}")
    expect(c.order(stuck)["state"] == "cancelled", "cancelled")
    wait_until(lambda: failed_gauge() == 0, 10, "saga_compensation_failed back to 0")
    print("check 4 passed: a void that kept failing left the saga in compensation_failed (gauge 1) while "
          "others completed; fixed and retried, it was voided once and the order cancelled")


def redeliver_starts(c, order_ids):
    """Every OrderCreated of these orders delivered again, as the broker may."""
    wanted = set(order_ids)
    if c.args.bus == "kafka":
        from confluent_kafka import Consumer, Producer
        # The broker deploy/local/infra.sh started (ci/e2e.sh exports its address).
        brokers = os.environ["KAFKA_BROKERS"]
        consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"e2e-dup-{uuid.uuid4()}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumer.subscribe(["shop.orders.order.v1"])
        # One record a batch, as up.sh's services produce on tansu (README, broker notes).
        producer = Producer({"bootstrap.servers": brokers, "batch.num.messages": 1})
        copied, deadline = set(), time.monotonic() + 30
        while copied != wanted and time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is None or m.error():
                continue
            headers = {k: v.decode() for k, v in (m.headers() or [])}
            if headers.get("aggregate_id") in wanted and headers.get("event_type", "").endswith("OrderCreated"):
                producer.produce(m.topic(), m.value(), m.key(), headers=m.headers())
                copied.add(headers["aggregate_id"])
        producer.flush(10)
        consumer.close()
        expect(copied == wanted, f"copied the starting events of {len(copied)} of {len(wanted)} orders")
    else:
        # Sent to orders' own queue again, with a new deduplication id (SQS would drop an
        # exact copy): the consumer must recognise the event by its id.
        from e2e_common import sqs_client
        client = sqs_client()
        url = client.get_queue_url(QueueName="shop-orders.fifo")["QueueUrl"]
        for order_id in order_ids:
            event_id, event_type, topic, payload = c.sql(
                "orders", "SELECT id, event_type, topic, translate(encode(payload, 'base64'), E'\\n', '') FROM outbox "
                f"WHERE aggregate_id = '{order_id}' AND aggregate_version = 1")[0]
            headers = c.sql("orders", f"SELECT key, value FROM outbox, jsonb_each_text(headers) WHERE id = '{event_id}'")
            # As the adapter sends it: the headers, the event's id, type and aggregate, and
            # the logical topic, as attributes.
            headers += [["event_id", event_id], ["event_type", event_type], ["aggregate_id", order_id],
                        ["topic", topic]]
            attributes = {k: {"DataType": "String", "StringValue": v} for k, v in headers}
            client.send_message(QueueUrl=url, MessageBody=payload, MessageGroupId=order_id,
                                MessageDeduplicationId=str(uuid.uuid4()), MessageAttributes=attributes)


def check_duplicates(c, happy_order, happy_item):
    # The happy path's order and three more, each saga completed: every start delivered again.
    more = [(c.place(item), item) for item in (c.item() for _ in range(3))]
    for order, _ in more:
        expect(c.settled(order)["state"] == "completed", f"completed before the copies: {order}")
    orders = [happy_order] + [order for order, _ in more]

    def duplicates():
        return total(scrape(ORDERS_METRICS), "bus_messages_consumed_total", outcome="duplicate")
    before = duplicates()
    redeliver_starts(c, orders)
    # Each copy is consumed and recognised by its event id (the inbox); no second saga starts.
    wait_until(lambda: duplicates() >= before + len(orders), 30, "orders to consume the copies as duplicates")
    for order in orders:
        expect(c.sql("orders", f"SELECT count(*) FROM saga WHERE aggregate_id = '{order}'")[0][0] == "1",
               f"one saga per order, whatever the redeliveries: {order}")
    for order, item in more:
        expect(c.payments(order) == [["captured", "1"]] and c.shipments(order) == "1", f"one payment, one shipment: {order}")
        expect(c.item_events(item) == ["ItemCreated", "ItemReserved"], f"one reservation: {c.item_events(item)}")
    # Every call made again: the instance rewound to its first step.
    version = c.order(happy_order)["version"]
    c.sql("orders", "UPDATE saga SET state = 'running', step = 0, next_attempt_at = now(), version = version + 1, "
          f"deadline = now() + interval '{SAGA_TIMEOUT_S} seconds', "
          "steps = '[{\"status\":\"pending\"},{\"status\":\"pending\"},{\"status\":\"pending\"}]' "
          f"WHERE aggregate_id = '{happy_order}' RETURNING id")
    saga = c.settled(happy_order, states=("completed",))
    expect(statuses(saga) == ["done", "done", "done"], f"ran again: {saga}")
    expect(c.payments(happy_order) == [["captured", "1"]], f"still one payment: {c.payments(happy_order)}")
    expect(c.item_events(happy_item) == ["ItemCreated", "ItemReserved"], f"still one reservation: {c.item_events(happy_item)}")
    expect(c.shipments(happy_order) == "1", "still one shipment")
    expect(c.order(happy_order)["version"] == version, "the confirm was not applied twice")
    print(f"check 5 passed: the starting events of {len(orders)} sagas delivered again and every step of one called "
          "again with its key: no second saga, payment, reservation, shipment or confirm")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--database", required=True, help="the admin URL; the services' databases are beside it")
    parser.add_argument("--bus", required=True, choices=["kafka", "sqs"])
    parser.add_argument("--spans", required=True, help="the OTLP receiver's output file")
    parser.add_argument("--only", help="comma-separated check names")
    args = parser.parse_args()
    c = Checkout(args)
    # The two deaths last: after a process dies outright, the messages its last long poll
    # was handed stay hidden for the queue's visibility timeout on SQS (60 s), which would
    # only slow the checks after it (the deadline check allows for it after the crash).
    checks = ["happy", "refusals", "outage", "compensation", "duplicates", "replicas", "crash", "deadline"]
    only = args.only.split(",") if args.only else checks
    happy = None
    failed = 0
    for name in checks:
        if name not in only:
            continue
        started = time.monotonic()
        try:
            if name == "happy":
                happy = check_happy(c)
            elif name == "refusals":
                check_refusals(c)
            elif name == "crash":
                check_crash(c)
            elif name == "deadline":
                check_deadline(c)
            elif name == "replicas":
                check_replicas(c)
            elif name == "outage":
                check_outage(c)
            elif name == "compensation":
                check_failing_compensation(c)
            elif name == "duplicates":
                check_duplicates(c, *(happy or check_happy(c)))
        except AssertionError as e:
            failed += 1
            print(f"FAILED [{args.bus}] {name}: {e}", file=sys.stderr)
            # What failed may have left a service stopped; the next checks need it.
            up_again(args.workspace)
        print(f"  ({name}: {time.monotonic() - started:.1f} s)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
