"""What the end-to-end checks share: bounded waiting, dev tokens from the generated
gateway binary, reading a process's /metrics with the Prometheus client's parser, and the
SQS endpoint (moto) with its queues."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


# Where orders' replicas serve /metrics: up.sh starts the second on the first's ports plus
# 1000 (the harness's shop runs orders with replicas = 2).
ORDERS_REPLICA_METRICS = (9465, 10465)


def free_port():
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_checks(main):
    """Runs a check script's `main`: a failed check prints FAILED and why, and exits 1."""
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)


def wait_until(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {seconds} s")


SQS = "http://127.0.0.1:5000"


def sqs_client():
    import boto3
    return boto3.client("sqs", endpoint_url=SQS, region_name="us-east-1",
                        aws_access_key_id="local", aws_secret_access_key="local")


def queue_empty(name):
    """Whether an SQS queue holds no message, visible or in flight."""
    client = sqs_client()
    url = client.get_queue_url(QueueName=name)["QueueUrl"]
    attrs = client.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return all(v == "0" for v in attrs.values())


def pid_of(workspace, process):
    """The pid deploy/local/up.sh recorded for `process`."""
    with open(os.path.join(workspace, ".run", f"{process}.pid")) as f:
        return int(f.read().strip())


def gone(pid):
    """Whether `pid` no longer runs (a zombie its parent has not reaped yet counts)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


def stop_process(workspace, process, sig, seconds):
    """Sends `sig` to a process up.sh started and waits (bounded) until it is gone."""
    pid = pid_of(workspace, process)
    os.kill(pid, sig)
    wait_until(lambda: gone(pid), seconds, f"{process} to stop")


def environment_of(workspace, process):
    """The environment of a process up.sh started, to start another with its settings."""
    with open(f"/proc/{pid_of(workspace, process)}/environ", "rb") as f:
        pairs = [item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item]
    return {k.decode(): v.decode() for k, v in pairs}


def http_ok(url):
    """Whether a GET of `url` answers 200 (within 2 s)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def up_again(workspace, env=None):
    """deploy/local/up.sh again, with `env` on top of ours: starts what is not running."""
    restarted = subprocess.run(["bash", os.path.join(workspace, "deploy", "local", "up.sh")],
                               env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if restarted.returncode != 0:
        raise AssertionError(f"up.sh could not restart what was stopped:\n{restarted.stdout}{restarted.stderr}")


def log_entries(workspace, process):
    """The JSON lines of a process's log in .run/, in order."""
    with open(os.path.join(workspace, ".run", f"{process}.log")) as f:
        for line in f:
            try:
                yield json.loads(line)
            except ValueError:
                continue


# How long a check waits for a log line: the generated services write their lines in
# batches (platform::log_writer, ADR 0015), 20 ms after a batch's first line, so the line
# about a request reaches the file shortly after its answer, not with it.
LOG_LINE_SECS = 5


def logged(workspace, process, matches, what, enough=bool, replicas=False, seconds=LOG_LINE_SECS):
    """The entries of `process`'s log (every replica's with `replicas`) that `matches`,
    read again until `enough` of them are there (at least one by default). Raises with the
    ones found if they are not within `seconds`."""
    read = replicas_log_entries if replicas else log_entries
    deadline = time.monotonic() + seconds
    while True:
        found = [e for e in read(workspace, process) if matches(e)]
        if enough(found):
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not in {process}'s log within {seconds} s; "
                                 f"the matching lines: {found[-5:]}")
        time.sleep(0.05)


def replicas_log_entries(workspace, process):
    """The JSON lines of every replica of `process` up.sh started (`orders`, then
    `orders-2`, ...): a call may have gone to any of them."""
    run = os.path.join(workspace, ".run")
    others = sorted(name[:-len(".log")] for name in os.listdir(run)
                    if re.fullmatch(rf"{re.escape(process)}-\d+\.log", name))
    for name in [process, *others]:
        yield from log_entries(workspace, name)


def link_key(workspace, caller, callee):
    """The key of the link from `caller` to `callee`, as deploy/local/up.sh made it."""
    with open(os.path.join(workspace, ".run", f"link-{caller}-{callee}.key")) as f:
        return f.read().strip()


def link_token(key, caller, callee, act=None, ttl=600):
    """A service credential as `caller` mints it for `callee` (see the generated
    crates/platform/src/service_auth.rs): HS256 under the link's key, `kid` and `sub` the
    caller, `iss`/`aud` the two processes, `act` the end user."""
    import jwt
    now = int(time.time())
    claims = {"iss": f"shop.{caller}", "aud": f"shop.{callee}", "sub": caller,
              "iat": now, "exp": now + ttl}
    if act:
        claims["act"] = act
    return jwt.encode(claims, key, algorithm="HS256", headers={"kid": caller})


def service_credential(workspace, callee, caller="gateway"):
    """The metadata `caller` (the gateway by default) sends to `callee`."""
    token = link_token(link_key(workspace, caller, callee), caller, callee)
    return ("authorization", f"Bearer {token}")


def dev_token(gateway, workspace, sub, scopes=()):
    """A token from `gateway dev-token`, as a user of the generated system gets one: with
    `scopes`, or every scope when there are none."""
    granted = [arg for scope in scopes for arg in ("--scope", scope)]
    return subprocess.run(
        [gateway, "dev-token", "--sub", sub, *granted, "--secret-file", f"{workspace}/.run/dev-issuer.secret"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


def scrape(port):
    """{(sample name, frozenset(labels)): value} of the /metrics on a loopback port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        content_type = response.headers.get("Content-Type", "")
        text = response.read().decode()
    if not content_type.startswith("text/plain"):
        raise AssertionError(f":{port}/metrics has Content-Type {content_type!r}")
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    if not samples:
        raise AssertionError(f":{port}/metrics has no samples")
    return samples


def total(samples, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)
