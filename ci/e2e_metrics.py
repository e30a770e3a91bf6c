"""Issue 5, acceptance 2: every process's /metrics parses as Prometheus text (with the
official client's parser), and its counters move when traffic is sent.

Traffic: creates and reads through the gateway with a dev token. Expected movement:
gateway http_requests_total per route and status; orders grpc_server_handled_total per
method (code OK) and outbox_published_total, summed over its two replicas; billing bus_messages_consumed_total
(applied), since every order created reaches billing over the bus. Gauges: orders'
outbox_backlog exists, billing's consumer_lag_messages (read from the broker) comes to 0.
"""

import argparse
import json
import sys
import time
import urllib.request

from e2e_common import ORDERS_REPLICA_METRICS, dev_token, scrape, total

GATEWAY = "http://127.0.0.1:8080"
CREATES = 5


def request(method, path, token, body=None):
    req = urllib.request.Request(GATEWAY + path, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, data=data, timeout=10) as response:
        return response.status, json.loads(response.read())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--gateway", required=True, help="the gateway binary, for dev-token")
    args = parser.parse_args()
    ports = {"gateway": 9464, "orders": 9465, "billing": 9466}
    # orders runs two replicas: the gateway's calls and the outbox rows are spread over
    # both, so their counters are summed.
    replicas = {"orders": ORDERS_REPLICA_METRICS}

    def scrape_all(process):
        return [scrape(port) for port in replicas.get(process, [ports[process]])]

    def summed(samples, metric, **labels):
        return sum(total(s, metric, **labels) for s in samples)

    before = {name: scrape_all(name) for name in ports}
    token = dev_token(args.gateway, args.workspace, "metrics-check")
    ids = []
    for _ in range(CREATES):
        status, order = request("POST", "/v1/orders", token, {})
        if status != 201:
            raise AssertionError(f"create answered {status}")
        ids.append(order["id"])
    for order_id in ids:
        request("GET", f"/v1/orders/{order_id}", token)

    def moved(process, metric, at_least, **labels):
        after = scrape_all(process)
        delta = summed(after, metric, **labels) - summed(before[process], metric, **labels)
        return delta >= at_least, delta

    checks = [
        ("gateway", "http_requests_total", CREATES, {"route": "/v1/orders", "method": "POST", "status": "201"}),
        ("gateway", "http_requests_total", CREATES, {"route": "/v1/orders/{id}", "method": "GET", "status": "200"}),
        ("gateway", "http_request_duration_seconds_count", 2 * CREATES, {}),
        ("orders", "grpc_server_handled_total", CREATES, {"grpc_method": "CreateOrder", "grpc_code": "OK"}),
        # The caller's side of the same calls (platform::resilience), per caller and callee.
        ("gateway", "grpc_client_handled_total", CREATES,
         {"caller": "gateway", "callee": "orders", "grpc_method": "CreateOrder", "grpc_code": "OK"}),
        ("gateway", "grpc_client_handling_seconds_count", CREATES,
         {"caller": "gateway", "callee": "orders", "grpc_method": "GetOrder"}),
        ("orders", "grpc_server_handling_seconds_count", CREATES, {"grpc_method": "CreateOrder"}),
        ("orders", "outbox_published_total", CREATES, {}),
        ("billing", "bus_messages_consumed_total", CREATES, {"outcome": "applied"}),
    ]
    deadline = time.monotonic() + 15
    pending = list(checks)
    while pending and time.monotonic() < deadline:
        still = []
        for process, metric, at_least, labels in pending:
            ok, _ = moved(process, metric, at_least, **labels)
            if not ok:
                still.append((process, metric, at_least, labels))
        pending = still
        if pending:
            time.sleep(0.5)
    for process, metric, at_least, labels in pending:
        _, delta = moved(process, metric, at_least, **labels)
        print(f"FAIL {process} {metric}{labels}: moved by {delta}, expected at least {at_least}")
    if pending:
        return 1
    gauges = scrape(ports["orders"])
    if ("outbox_backlog", frozenset()) not in gauges:
        print("FAIL orders has no outbox_backlog gauge")
        return 1
    # Billing has consumed everything (checked above), so its lag, measured against the
    # broker at scrape time, must come down to 0.
    lag = None
    while time.monotonic() < deadline + 15:
        lag = scrape(ports["billing"]).get(("consumer_lag_messages", frozenset()))
        if lag == 0:
            break
        time.sleep(0.5)
    if lag != 0:
        print(f"FAIL billing consumer_lag_messages is {lag}, expected 0 once caught up")
        return 1
    breaker = scrape(ports["gateway"])
    if total(breaker, "dependency_breaker_open", caller="gateway", callee="billing") != 0:
        print("FAIL the billing breaker reads open on a healthy system")
        return 1
    print(f"check metrics passed: /metrics of gateway, orders and billing parse; "
          f"{len(checks)} counters moved with {CREATES} creates and reads; "
          f"outbox backlog {gauges[('outbox_backlog', frozenset())]:.0f}, billing consumer lag 0, "
          f"breakers closed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
