"""Issue 5, acceptance 1: one POST through the gateway yields spans from the gateway,
orders and the billing consumer under one trace id, received over OTLP by
ci/otlp_receiver.py. The client starts the trace (its own `traceparent`), so the trace id
is known; parentage is checked too: orders' server span is a child of the gateway's client
span for the call, itself a child of the gateway's request span,
and billing's consumer span a child of orders' span (through the outbox row and the
message headers). Then the logs: each process wrote a JSON line for its part of that
trace with traceId, spanId, duration and status, and userId where the user is known.
"""

import argparse
import json
import os
import sys
import time
import urllib.request

from e2e_common import dev_token, logged

GATEWAY = "http://127.0.0.1:8080"


def spans(path, trace_id):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [s for s in map(json.loads, f) if s["traceId"] == trace_id]


def log_line(workspace, process, trace_id, message):
    """The JSON log line `process` (any of its replicas) wrote with `message` in the
    trace, or None once it has had time to reach the file."""
    try:
        return logged(workspace, process,
                      lambda e: e.get("traceId") == trace_id and e.get("message") == message,
                      f"`{message}` in trace {trace_id}", replicas=True)[0]
    except AssertionError:
        return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--spans", required=True, help="the receiver's output file")
    args = parser.parse_args()
    token = dev_token(args.gateway, args.workspace, "trace-check")
    trace_id = os.urandom(16).hex()
    client_span = os.urandom(8).hex()
    request = urllib.request.Request(GATEWAY + "/v1/orders", method="POST", data=b"{}")
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    request.add_header("traceparent", f"00-{trace_id}-{client_span}-01")
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 201:
            raise AssertionError(f"create answered {response.status}")

    def found():
        got = spans(args.spans, trace_id)
        gateway = [s for s in got if s["service"] == "gateway" and s["kind"] == "SPAN_KIND_SERVER"]
        orders = [s for s in got if s["service"] == "orders" and s["kind"] == "SPAN_KIND_SERVER"]
        billing = [s for s in got if s["service"] == "billing" and s["kind"] == "SPAN_KIND_CONSUMER"]
        return gateway, orders, billing

    deadline = time.monotonic() + 20
    gateway, orders, billing = found()
    while not (gateway and orders and billing) and time.monotonic() < deadline:
        time.sleep(0.25)
        gateway, orders, billing = found()
    if not (gateway and orders and billing):
        print(f"FAIL trace {trace_id}: gateway {len(gateway)}, orders {len(orders)}, "
              f"billing consumer {len(billing)} spans within 20 s")
        return 1
    problems = []
    if gateway[0]["parentSpanId"] != client_span:
        problems.append("the gateway's span is not a child of the client's")
    # The gateway's call is a client span of its own, child of the request's span; the
    # service's server span continues it.
    clients = [s for s in spans(args.spans, trace_id)
               if s["service"] == "gateway" and s["kind"] == "SPAN_KIND_CLIENT"
               and s["parentSpanId"] in {g["spanId"] for g in gateway}]
    if not clients:
        problems.append("the gateway's call to orders is no client span under its request span")
    if not any(o["parentSpanId"] in {c["spanId"] for c in clients} for o in orders):
        problems.append("no orders span is a child of the gateway's client span")
    if not any(b["parentSpanId"] in {o["spanId"] for o in orders} for b in billing):
        problems.append("no billing consumer span is a child of an orders span")
    expected_logs = [
        ("gateway", "request", {"status": 201, "userId": "trace-check"}),
        ("orders", "rpc", {"status": "OK", "userId": "token:trace-check"}),
        ("billing", "message consumed", {"status": "applied"}),
    ]
    for process, message, fields in expected_logs:
        entry = log_line(args.workspace, process, trace_id, message)
        if entry is None:
            problems.append(f"{process} logged no `{message}` line with traceId {trace_id}")
            continue
        for key, value in fields.items():
            if entry.get(key) != value:
                problems.append(f"{process} `{message}`: {key} is {entry.get(key)!r}, expected {value!r}")
        if not entry.get("spanId") or not isinstance(entry.get("duration_ms"), (int, float)):
            problems.append(f"{process} `{message}` lacks spanId or duration_ms: {entry}")
    for p in problems:
        print(f"FAIL trace {trace_id}: {p}")
    if problems:
        return 1
    print(f"check traces passed: trace {trace_id}: {gateway[0]['name']} (gateway) -> "
          f"{orders[0]['name']} (orders) -> {billing[0]['name']} (billing), "
          f"parent links intact, received over OTLP/HTTP; each process logged its part with "
          f"traceId, spanId, duration and status (userId at the gateway and orders)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
