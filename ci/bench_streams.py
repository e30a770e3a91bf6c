"""The cost of the gateway's event streams (part of ci/bench.py's system phase): how much
gateway memory 1,000 idle `text/event-stream` clients hold, each a different caller (the
streams are bounded per caller), and how long one order's creation takes to reach all of
them. Loopback only; every wait is bounded."""

import json
import os
import selectors
import socket
import statistics
import time

import jwt

from bench_common import BenchError, log, rss_mb

STREAMS = 1000
PATH = "/v1/orders/events"


def tokens(workspace, system, count, scope="orders:read"):
    """`count` dev tokens of distinct callers, signed with the running system's dev secret."""
    with open(os.path.join(workspace, ".run", "dev-issuer.secret")) as f:
        secret = f.read().strip()
    now = int(time.time())
    return [jwt.encode({"iss": f"{system}-dev", "aud": f"{system}-api", "sub": f"stream-{i}", "iat": now,
                        "exp": now + 600, "scope": scope}, secret, algorithm="HS256",
                       headers={"kid": "dev"}) for i in range(count)]


def open_stream(address, token):
    """A socket whose response head (200, text/event-stream) has been read."""
    sock = socket.create_connection(address, timeout=10)
    sock.sendall((f"GET {PATH} HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\n"
                  f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 8192:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 200 " not in status_line + " " or b"text/event-stream" not in head.lower():
        sock.close()
        raise BenchError(f"GET {PATH} answered {status_line!r}")
    rest = head.split(b"\r\n\r\n", 1)[1]
    return sock, rest


def bench_streams(system, address, create_order):
    """Figures for `system` (with .workspace and .pids), whose gateway listens at `address`;
    `create_order()` makes one order over REST and returns its id."""
    pid = system.pids["gateway"]
    before = rss_mb(pid)
    sockets = []
    try:
        buffers = {}
        for token in tokens(system.workspace, "shop", STREAMS):
            sock, rest = open_stream(address, token)
            sockets.append(sock)
            buffers[sock] = rest
        time.sleep(2)
        held = rss_mb(pid)
        # One event to all of them: from the create's answer to each stream's `id:` line.
        order = create_order()
        answered = time.monotonic()
        needle = f"id: {order}:1".encode()
        arrived = []
        selector = selectors.DefaultSelector()
        for sock in sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        waiting = set(sockets)
        deadline = answered + 30
        while waiting and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                sock = key.fileobj
                chunk = sock.recv(65536)
                buffers[sock] += chunk
                if sock in waiting and needle in buffers[sock]:
                    arrived.append(time.monotonic() - answered)
                    waiting.discard(sock)
                    selector.unregister(sock)
                elif not chunk:
                    raise BenchError("the gateway closed an event stream")
        selector.close()
        if waiting:
            raise BenchError(f"order {order}'s event reached {len(arrived)} of {STREAMS} streams in 30 s")
    finally:
        for sock in sockets:
            sock.close()
    figures = {
        "streams": STREAMS,
        "rss_before_mb": before,
        "rss_held_mb": held,
        "per_stream_kb": (held - before) * 1024 / STREAMS,
        "fan_out_p50_ms": statistics.median(arrived) * 1000,
        "fan_out_max_ms": max(arrived) * 1000,
    }
    log(f"{STREAMS} idle event streams: gateway RSS {before:.1f} -> {held:.1f} MB "
        f"({figures['per_stream_kb']:.1f} KB a stream); one event reached them all in "
        f"{figures['fan_out_max_ms']:.0f} ms (p50 {figures['fan_out_p50_ms']:.0f} ms)")
    return figures


if __name__ == "__main__":
    # Against a system already running: python3 ci/bench_streams.py <workspace>
    import http.client
    import sys
    import uuid

    class Running:
        def __init__(self, workspace):
            self.workspace = workspace
            self.pids = {"gateway": int(open(os.path.join(workspace, ".run", "gateway.pid")).read())}

    running = Running(sys.argv[1])
    writer = tokens(running.workspace, "shop", 1, "orders:read orders:write")[0]

    def create():
        connection = http.client.HTTPConnection("127.0.0.1", 8080, timeout=10)
        connection.request("POST", "/v1/orders", body="{}", headers={
            "Authorization": f"Bearer {writer}", "Content-Type": "application/json",
            "Idempotency-Key": str(uuid.uuid4())})
        response = connection.getresponse()
        body = response.read()
        if response.status != 201:
            raise BenchError(f"POST /v1/orders answered {response.status}: {body[:200]!r}")
        return json.loads(body)["id"]

    bench_streams(running, ("127.0.0.1", 8080), create)
