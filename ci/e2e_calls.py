#!/usr/bin/env python3
"""Issue 14 end to end: synchronous calls between generated services, on the running
`shop` (catalog <- checkout <- shipping: checkout's carts hold a `ref:catalog` item id,
shipping's parcels a `ref:checkout` cart id) started by deploy/local/up.sh, with real
PostgreSQL and the bus. Talks to 127.0.0.1 only; every wait is bounded.

  1. a cart with an existing item is created (201), one with an unknown item is 422 naming
     `item_id`, a parcel referring to the cart is created through the chain; one trace
     holds gateway -> checkout -> catalog with client and server spans correctly parented
  2. catalog killed: cart creation is 503 within the configured timeout, then under 50 ms
     once checkout's breaker is open; reads of carts keep working (the gateway's breaker
     for checkout stays closed); catalog restarted: creation works again, checkout untouched
  3. catalog slowed (FAULTS__DELAY_MS): a CreateCart with a 300 ms deadline fails with
     DEADLINE_EXCEEDED in about 300 ms, and catalog saw the shortened deadline
  4. a call to catalog with shipping's credential is PERMISSION_DENIED and counted; the
     gateway's and checkout's are admitted
"""

import argparse
import os
import re
import signal
import statistics
import sys
import time
import uuid

import grpc

from e2e import compile_protos_of
from e2e_common import (dev_token, link_key, link_token, log_entries, logged, pid_of, scrape, stop_process,
                        total, up_again, wait_until)
from e2e_gateway import call, expect
from e2e_traces import spans

# Matches the e2e.sh environment of this scenario.
CATALOG_TIMEOUT_S = 0.5
BREAKER_OPEN_S = 2.0


def metrics_port(workspace, service):
    with open(os.path.join(workspace, "services", service, "src", "config.rs")) as f:
        return int(re.search(r"DEFAULT_METRICS_PORT: u16 = (\d+);", f.read()).group(1))


def kill(workspace, process):
    stop_process(workspace, process, signal.SIGKILL, 10)


class Calls:
    def __init__(self, args):
        self.args = args
        self.token = dev_token(args.gateway, args.workspace, "calls-check")

    def create(self, context, body, headers=None):
        return call("POST", f"/v1/{context}", self.token, body,
                    {"Idempotency-Key": str(uuid.uuid4()), **(headers or {})})


def check_references_and_trace(c):
    status, _, item, _ = c.create("catalog", {"title": "lamp", "price_cents": 1200})
    expect(status == 201, f"create item: {status} {item}")
    trace_id, client_span = os.urandom(16).hex(), os.urandom(8).hex()
    status, _, cart, _ = c.create("checkout", {"item_id": item["id"], "quantity": 2},
                                  {"traceparent": f"00-{trace_id}-{client_span}-01"})
    expect(status == 201 and cart["item_id"] == item["id"], f"create cart: {status} {cart}")
    status, _, problem, _ = c.create("checkout", {"item_id": str(uuid.uuid4()), "quantity": 1})
    expect(status == 422 and problem.get("field") == "item_id" and "item_id" in problem["detail"],
           f"a cart with an unknown item: {status} {problem}")
    status, _, parcel, _ = c.create("shipping", {"cart_id": cart["id"], "address": "1 Main St"})
    expect(status == 201, f"a parcel for the cart, through shipping -> checkout: {status} {parcel}")
    status, _, problem, _ = c.create("shipping", {"cart_id": item["id"], "address": "x"})
    expect(status == 422 and problem.get("field") == "cart_id", f"a parcel for an item id: {status} {problem}")

    def chain():
        got = spans(c.args.spans, trace_id)
        by = lambda service, kind: [s for s in got if s["service"] == service and s["kind"] == kind]
        return (by("gateway", "SPAN_KIND_SERVER"), by("gateway", "SPAN_KIND_CLIENT"),
                by("checkout", "SPAN_KIND_SERVER"), by("checkout", "SPAN_KIND_CLIENT"),
                by("catalog", "SPAN_KIND_SERVER"))

    wait_until(lambda: all(chain()), 20, f"gateway, checkout and catalog spans of trace {trace_id}")
    g_server, g_client, co_server, co_client, ca_server = chain()
    ids = lambda spans_: {s["spanId"] for s in spans_}
    shown = lambda spans_: [(s["name"], s["spanId"], s["parentSpanId"]) for s in spans_]
    expect(g_server[0]["parentSpanId"] == client_span,
           f"the gateway's span continues the client's {client_span}: {shown(g_server)}")
    expect(any(s["parentSpanId"] in ids(g_server) for s in g_client),
           f"gateway client span under its request: {shown(g_client)} under {shown(g_server)}")
    expect(any(s["parentSpanId"] in ids(g_client) for s in co_server),
           f"checkout's span under the gateway's call: {shown(co_server)} under {shown(g_client)}")
    expect(any(s["parentSpanId"] in ids(co_server) and s["name"] == "catalog/GetItem" for s in co_client),
           f"checkout's call to catalog under its own span: {shown(co_client)} under {shown(co_server)}")
    expect(any(s["parentSpanId"] in ids(co_client) for s in ca_server),
           f"catalog's span under checkout's call: {shown(ca_server)} under {shown(co_client)}")
    print(f"check 1 passed: cart with a real item 201, unknown item 422 (field item_id), parcel through "
          f"the chain 201; trace {trace_id}: gateway -> checkout -> catalog/GetItem -> catalog, parents intact")
    return cart


def check_catalog_down(c, cart):
    checkout_pid = pid_of(c.args.workspace, "checkout")
    kill(c.args.workspace, "catalog")
    body = {"item_id": cart["item_id"], "quantity": 1}
    budget = CATALOG_TIMEOUT_S * 3 + 1  # attempts with backoff, and slack for a busy machine
    for _ in range(10):
        status, head, problem, elapsed = c.create("checkout", body)
        expect(status == 503, f"with catalog down a cart is 503: {status} {problem}")
        expect(elapsed < budget, f"503 took {elapsed:.3f} s, over the configured budget")
        if "circuit breaker" in problem["detail"]:
            break
    else:
        raise AssertionError("checkout's breaker for catalog never opened")
    fast = []
    for _ in range(5):
        status, _, problem, elapsed = c.create("checkout", body)
        expect(status == 503 and "circuit breaker" in problem["detail"], f"{status} {problem}")
        fast.append(elapsed)
    expect(statistics.median(fast) < 0.05, f"with the breaker open: {fast}")
    status, _, read, _ = call("GET", f"/v1/checkout/{cart['id']}", c.token, headers={"Cache-Control": "no-cache"})
    expect(status == 200 and read["id"] == cart["id"], f"reads of carts go on: {status} {read}")
    gateway = scrape(9464)
    gauge = total(gateway, "dependency_breaker_open", caller="gateway", callee="checkout")
    expect(gauge == 0, f"the gateway's breaker for checkout stayed closed (checkout answered, catalog "
                       f"failed): dependency_breaker_open {gauge}")
    checkout = scrape(metrics_port(c.args.workspace, "checkout"))
    gauge = total(checkout, "dependency_breaker_open", caller="checkout", callee="catalog")
    expect(gauge == 1, f"checkout reports its open breaker: dependency_breaker_open {gauge}")

    up_again(c.args.workspace)
    def created():
        status, _, _, _ = c.create("checkout", body)
        return status == 201
    wait_until(created, BREAKER_OPEN_S + 15, "cart creation after catalog restarted")
    expect(pid_of(c.args.workspace, "checkout") == checkout_pid,
           f"checkout was not restarted: pid {checkout_pid}, now {pid_of(c.args.workspace, 'checkout')}")
    print(f"check 2 passed: catalog killed: 503 within {budget:.1f} s, then {statistics.median(fast) * 1000:.1f} ms "
          f"(median) with checkout's breaker open; cart reads 200, gateway breaker closed; catalog "
          f"restarted: carts created again by the same checkout")


def check_deadline(c, cart, checkout_pb, checkout_grpc):
    kill(c.args.workspace, "catalog")
    up_again(c.args.workspace, {"CATALOG__FAULTS__DELAY_MS": "1000"})

    def slowed_get_item(l):
        return (l.get("message") == "rpc" and l.get("rpc.method") == "GetItem"
                and l.get("caller") == "checkout" and l.get("deadline_ms") is not None)
    earlier = len([l for l in log_entries(c.args.workspace, "catalog") if slowed_get_item(l)])
    stub = checkout_grpc.CheckoutServiceStub(grpc.insecure_channel("127.0.0.1:50052"))
    token = link_token(link_key(c.args.workspace, "gateway", "checkout"), "gateway", "checkout")
    request = checkout_pb.CreateCartRequest(idempotency_key=str(uuid.uuid4()),
                                            item_id=cart["item_id"], quantity=1)
    started = time.monotonic()
    try:
        stub.CreateCart(request, timeout=0.3, metadata=[("authorization", f"Bearer {token}")])
        raise AssertionError("a create against a slowed catalog succeeded within 300 ms")
    except grpc.RpcError as e:
        elapsed = time.monotonic() - started
        expect(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f"{e.code()} {e.details()}")
    expect(elapsed < 0.45, f"DEADLINE_EXCEEDED after {elapsed:.3f} s, not about 300 ms")

    deadline_ms = logged(c.args.workspace, "catalog", slowed_get_item, "catalog's line for the slowed GetItem",
                         enough=lambda found: len(found) > earlier)[-1]["deadline_ms"]
    expect(0 < deadline_ms < 290, f"catalog saw a deadline of {deadline_ms} ms, not the shortened one")
    checkout = logged(c.args.workspace, "checkout",
                      lambda l: l.get("message") == "rpc" and l.get("rpc.method") == "CreateCart"
                      and l.get("deadline_ms") is not None and l["deadline_ms"] <= 300,
                      "checkout's line for the CreateCart with a 300 ms deadline")
    expect(checkout[-1]["status"] == "DeadlineExceeded", f"checkout's line: {checkout[-1:]}")
    kill(c.args.workspace, "catalog")
    up_again(c.args.workspace)
    print(f"check 3 passed: CreateCart with a 300 ms deadline, catalog slowed by 1 s: DEADLINE_EXCEEDED "
          f"after {elapsed * 1000:.0f} ms; checkout got {checkout[-1]['deadline_ms']:.0f} ms, catalog "
          f"{deadline_ms:.0f} ms")


def check_admission(c, catalog_pb, catalog_grpc, item_id):
    channel = grpc.insecure_channel("127.0.0.1:50051")
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = catalog_grpc.CatalogServiceStub(channel)
    get = lambda token: stub.GetItem(catalog_pb.GetItemRequest(id=item_id), timeout=5,
                                     metadata=[("authorization", f"Bearer {token}")])
    port = metrics_port(c.args.workspace, "catalog")
    denied = lambda: total(scrape(port), "service_calls_denied_total", service="catalog", caller="shipping")
    before = denied()
    # Shipping's own, valid credential (its key is that of its link to checkout).
    shipping = link_token(link_key(c.args.workspace, "shipping", "checkout"), "shipping", "catalog")
    try:
        get(shipping)
        raise AssertionError("catalog served shipping, which the spec does not let call it")
    except grpc.RpcError as e:
        expect(e.code() == grpc.StatusCode.PERMISSION_DENIED, f"{e.code()} {e.details()}")
    expect(denied() == before + 1, f"the refusal is counted by caller: {before} before, {denied()} after")
    for caller in ["gateway", "checkout"]:
        token = link_token(link_key(c.args.workspace, caller, "catalog"), caller, "catalog")
        expect(get(token).item.id == item_id, f"{caller} is admitted")
    print("check 4 passed: shipping's credential at catalog is PERMISSION_DENIED and counted; "
          "the gateway's and checkout's are served")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--spans", required=True)
    args = parser.parse_args()
    modules = compile_protos_of(args.workspace, ["catalog", "checkout"])
    c = Calls(args)
    cart = check_references_and_trace(c)
    check_catalog_down(c, cart)
    check_deadline(c, cart, *modules["checkout"])
    check_admission(c, *modules["catalog"], cart["item_id"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
