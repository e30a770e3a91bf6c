#!/usr/bin/env python3
"""End-to-end assertions against a generated `shop` (orders -> billing) running as local
processes on real PostgreSQL and a real broker. It talks to the services over gRPC from
this separate process, reads the orders outbox with psql, and injects duplicate and poison
messages straight into the broker. Every wait is bounded; only loopback is contacted.

Checks, in order:
  1. after the system sat idle for 12 s, an order created over gRPC yields a billing
     aggregate carrying its id within 10 s
  1b. in a workspace evolved with `archscaffold add context shipping`: that billing
     aggregate reaches shipping once, within 15 s
  3. the same event delivered twice yields one billing aggregate
  4. a poison message lands in the dead-letter destination and later messages still flow
  2. with the broker stopped for 20 s while 100 orders are created, all 100 billing
     aggregates exist afterwards: none lost, none duplicated
"""

import argparse
import base64
import collections
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

import grpc
from grpc_tools import protoc

from e2e_common import queue_empty, service_credential, sqs_client, wait_until

KAFKA = "127.0.0.1:9092"
ORDER_TOPIC = "shop.orders.order.v1"  # every event of the Order aggregate
EVENT_TYPE = "shop.orders.v1.OrderCreated"


def compile_protos_of(workspace, contexts):
    """{context: (its _pb2 module, its _pb2_grpc module)}, compiled from the workspace's
    proto/ with grpcio-tools."""
    out = tempfile.mkdtemp(prefix="e2e-proto-")
    proto_root = os.path.join(workspace, "proto")
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    files = []
    for base, _, names in os.walk(proto_root):
        files += [os.path.join(base, n) for n in names if n.endswith(".proto")]
    code = protoc.main(["protoc", f"-I{proto_root}", f"-I{well_known}",
                        f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if code != 0:
        sys.exit(f"protoc failed on {files}")
    sys.path.insert(0, out)
    return {c: (importlib.import_module(f"shop.{c}.v1.{c}_pb2"),
                importlib.import_module(f"shop.{c}.v1.{c}_pb2_grpc")) for c in contexts}


def compile_protos(workspace):
    modules = compile_protos_of(workspace, ["orders", "billing"])
    return (*modules["orders"], *modules["billing"])


def shipping_modules(workspace):
    """The shipping context `archscaffold add context` put into an evolved workspace, if any."""
    if not os.path.isdir(os.path.join(workspace, "services", "shipping")):
        return None
    return (importlib.import_module("shop.shipping.v1.shipping_pb2"),
            importlib.import_module("shop.shipping.v1.shipping_pb2_grpc"))


def count_pages(list_rpc, request_type, items, key, auth):
    """How many aggregates of a List RPC carry each value of `key`, over every page."""
    counts, token = collections.Counter(), ""
    for _ in range(1000):
        page = list_rpc(request_type(page_size=500, page_token=token), timeout=10,
                        metadata=[auth])
        counts.update(getattr(item, key) for item in getattr(page, items))
        token = page.next_page_token
        if not token:
            return counts
    raise AssertionError(f"the {items} listing does not end")


class System:
    def __init__(self, args):
        self.args = args
        self.orders_pb, orders_grpc, self.billing_pb, billing_grpc = compile_protos(args.workspace)
        self.orders = orders_grpc.OrdersServiceStub(grpc.insecure_channel("127.0.0.1:50051"))
        self.billing = billing_grpc.BillingServiceStub(grpc.insecure_channel("127.0.0.1:50052"))
        self.orders_auth = service_credential(args.workspace, "orders")
        self.billing_auth = service_credential(args.workspace, "billing")
        shipping = shipping_modules(args.workspace)
        if shipping:
            self.shipping_pb, shipping_grpc = shipping
            self.shipping = shipping_grpc.ShippingServiceStub(grpc.insecure_channel("127.0.0.1:50053"))
            self.shipping_auth = service_credential(args.workspace, "shipping")
        else:
            self.shipping = None

    def create_order(self, key):
        request = self.orders_pb.CreateOrderRequest(idempotency_key=key)
        metadata = [("x-correlation-id", key), self.orders_auth]
        return self.orders.CreateOrder(request, timeout=10, metadata=metadata).order

    def billing_by_order(self):
        return count_pages(self.billing.ListBilling, self.billing_pb.ListBillingRequest,
                           "billing", "order_id", self.billing_auth)

    def billing_for(self, order_id):
        """Billing aggregates carrying the order's id (the listing's first pages)."""
        page = self.billing.ListBilling(self.billing_pb.ListBillingRequest(page_size=500),
                                        timeout=10, metadata=[self.billing_auth])
        return [b for b in page.billing if b.order_id == order_id]

    def shipping_by_billing(self):
        return count_pages(self.shipping.ListShipping, self.shipping_pb.ListShippingRequest,
                           "shipping", "billing_id", self.shipping_auth)

    def outbox_row(self, order_id):
        out = subprocess.run(
            ["psql", self.args.orders_db, "-At", "-F", "|", "-c",
             "SELECT id, encode(payload, 'base64'), headers::text FROM outbox "
             f"WHERE aggregate_id = '{order_id}'"],
            check=True, capture_output=True, text=True).stdout
        event_id, payload, headers = out.strip().split("|", 2)
        return event_id, base64.b64decode(payload.replace("\n", "")), json.loads(headers)

    def inject(self, payload, headers, key):
        """Publishes straight to the broker, as a misbehaving or retrying producer would."""
        headers = {**headers, "event_type": EVENT_TYPE}
        if self.args.bus == "kafka":
            from confluent_kafka import Producer
            producer = Producer({"bootstrap.servers": KAFKA})
            producer.produce(ORDER_TOPIC, value=payload, key=key,
                             headers=[(k, v.encode()) for k, v in headers.items()])
            left = producer.flush(10)
            assert left == 0, f"injected message not delivered: {left} still queued"
        else:
            attributes = {k: {"DataType": "String", "StringValue": v}
                          for k, v in {**headers, "topic": ORDER_TOPIC}.items()}
            sqs = self.sqs()
            url = sqs.get_queue_url(QueueName="shop-billing.fifo")["QueueUrl"]
            # A FIFO queue: the aggregate is the message group; a fresh deduplication id, so
            # an injected duplicate event is not dropped by SQS but reaches the inbox.
            sqs.send_message(QueueUrl=url, MessageBody=base64.b64encode(payload).decode(),
                             MessageAttributes=attributes, MessageGroupId=key or "e2e",
                             MessageDeduplicationId=str(uuid.uuid4()))

    def sqs(self):
        return sqs_client()

    def billing_queue_drained(self):
        if self.args.bus == "kafka":
            return True  # one partition: what was produced before a later message is consumed first
        return queue_empty("shop-billing.fifo")

    def dead_letters(self, seconds):
        """Event ids in the billing dead-letter destination, read within `seconds`."""
        found = set()
        deadline = time.monotonic() + seconds
        if self.args.bus == "kafka":
            from confluent_kafka import Consumer
            consumer = Consumer({"bootstrap.servers": KAFKA, "group.id": f"e2e-{uuid.uuid4()}",
                                 "auto.offset.reset": "earliest"})
            consumer.subscribe(["shop.billing.dead-letter.v1"])
            while time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is not None and not message.error():
                    headers = {k: v.decode() for k, v in (message.headers() or [])}
                    if "dead_letter_reason" in headers:
                        found.add(headers.get("event_id"))
                        break
            consumer.close()
        else:
            sqs = self.sqs()
            url = sqs.get_queue_url(QueueName="shop-billing-dead-letter.fifo")["QueueUrl"]
            while time.monotonic() < deadline and not found:
                for m in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1,
                                             MessageAttributeNames=["All"]).get("Messages", []):
                    attrs = {k: v["StringValue"] for k, v in m.get("MessageAttributes", {}).items()}
                    if "dead_letter_reason" in attrs:
                        found.add(attrs.get("event_id"))
        return found


def broker(action, bus):
    subprocess.run(["bash", os.path.join(os.path.dirname(__file__), "brokers.sh"), action, bus], check=True)


def check_flow(s):
    # Idle first, past one SQS long poll (10 s): a consumer must not lose or delay a message
    # that arrives while it is waiting on an empty queue.
    time.sleep(12)
    order = s.create_order(f"e2e-{uuid.uuid4()}")
    wait_until(lambda: s.billing_by_order()[order.id] == 1, 10, "billing for a new order")
    return order


def check_added_context(s, order):
    """orders -> billing -> shipping: the context added by `archscaffold add context`
    consumes billing's event, so the order's billing reaches shipping exactly once."""
    billing = s.billing_for(order.id)
    if len(billing) != 1:
        raise AssertionError(f"expected one billing for order {order.id}, saw {len(billing)}")
    billing_id = billing[0].id
    wait_until(lambda: s.shipping_by_billing()[billing_id] == 1, 15,
               f"shipping for billing {billing_id} (order {order.id})")
    seen = s.shipping_by_billing()[billing_id]
    if seen != 1:
        raise AssertionError(f"billing {billing_id} reached shipping {seen} times")


def check_duplicate_and_poison(s, order):
    event_id, payload, headers = s.outbox_row(order.id)
    s.inject(payload, {**headers, "event_id": event_id, "aggregate_id": order.id}, order.id)
    poison_id = str(uuid.uuid4())
    s.inject(b"\xff\xfe not protobuf", {"event_id": poison_id, "aggregate_id": order.id}, order.id)
    later = s.create_order(f"e2e-{uuid.uuid4()}")
    wait_until(lambda: s.billing_by_order()[later.id] == 1, 15, "billing for an order after the poison")
    wait_until(s.billing_queue_drained, 30, "billing queue drained")
    billed = s.billing_by_order()[order.id]
    assert billed == 1, f"a duplicate event created a second billing: {billed} for the order"
    dead = s.dead_letters(20)
    assert poison_id in dead, f"the poison message {poison_id} is not in the dead-letter destination: {dead}"


def check_outage(s, bus):
    broker("stop", bus)
    stopped = time.monotonic()
    ids = [s.create_order(f"outage-{uuid.uuid4()}").id for _ in range(100)]
    time.sleep(max(0.0, 20 - (time.monotonic() - stopped)))
    broker("start", bus)
    wait_until(lambda: all(s.billing_by_order()[i] >= 1 for i in ids), 120,
               "billing for all 100 orders created while the broker was down")
    counts = s.billing_by_order()
    duplicated = {i: n for i, n in counts.items() if n > 1}
    assert not duplicated, f"duplicated billing: {duplicated}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--bus", choices=["kafka", "sqs"], required=True)
    parser.add_argument("--orders-db", required=True, help="URL of the orders service database")
    args = parser.parse_args()
    s = System(args)
    passed = failed = 0
    order = None
    for name, check in [
        ("after 12 s idle, an order flows to billing within 10 s", lambda: check_flow(s)),
        *([("the added context: the order flows on from billing to shipping within 15 s",
             lambda: check_added_context(s, order))] if s.shipping else []),
        ("duplicate has no second effect; poison is dead-lettered and later messages flow",
         lambda: check_duplicate_and_poison(s, order)),
        ("broker down 20 s during 100 creates: none lost, none duplicated",
         lambda: check_outage(s, args.bus)),
    ]:
        started = time.monotonic()
        try:
            result = check()
            if order is None:
                order = result
            passed += 1
            print(f"ok   [{args.bus}] {name} ({time.monotonic() - started:.1f} s)", flush=True)
        except Exception as e:  # report every check, then fail the run
            failed += 1
            print(f"FAIL [{args.bus}] {name}: {e!r}", flush=True)
            if order is None:
                break
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
