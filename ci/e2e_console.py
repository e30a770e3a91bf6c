#!/usr/bin/env python3
"""The console in a real browser: Debian's chromium driven by Playwright, against the
checkout example that deploy/local/up.sh started (ci/e2e.sh's demo). Only loopback is
contacted; every wait is bounded.

  1. Signing in with the URL up.sh wrote works once; every response carries the strict
     Content-Security-Policy, and no request of the page leaves the console's origin.
  2. The map has one node per context of the spec and the spec's edges: each `calls` entry,
     each context's topic, each saga step's context.
  3. A REST create and a command of an item appear on the events page as rows with versions
     1 and 2, newest first, without a reload; the gateway's event stream delivered the same
     events.
  4. A trace opened from an order's creation event shows the spans of the gateway, orders
     and inventory (its ref check), each service's under a span of its caller's.
  4b. The sagas page, open before two orders are placed: without a reload, the order for a
     new item shows a `completed` saga whose steps are all `done`, and the order for the
     item retired in check 3 a `compensated` one: inventory's reservation `refused`, the
     payment undone after it (a compensation step), the reason naming the refusal.
  4c. Retry, with --oidc-dir: a saga whose compensation the card network keeps refusing
     (ci/saga-rules.sh) waits for an operator. The viewer's page (the one-time link) shows
     it waiting without a Retry button, and its POST is refused (403). An operator signs in
     to a second console with the identity provider (oidc-provider: authorization code with
     PKCE, the provider's sign-in and consent pages), which has a gateway in OIDC mode:
     their page offers Retry; once the cause is fixed, Retry sends their own token through
     the gateway (its log names them) and the saga moves on to `compensated` on both pages
     without a reload.
  4d. Replay, with --oidc-dir: a shipping event too large for the broker is parked after its
     refusals and shows on the outbox page (backlog and parked count per service). The
     viewer gets no Replay button and a 403 for the POST; once the row is fixed, the
     operator's Replay sends it over the console's link, naming them (shipping's log), and
     the row leaves both pages without a reload, published.
  5. A service killed turns `not_serving` within 10 s without a reload; started again by
     up.sh, `serving`.
  6. The console restarted, the events page open: the indicator shows `reconnecting`, then
     `live`, on the same page (the session outlives the process); an event made meanwhile
     arrives, no row is there twice, and an event the bus delivered twice is two rows, the
     later marked `repeat`.
  7. Without a session: redirected to the login page; a POST without the CSRF token: 403.
  8. axe finds no critical or serious violation on the map, the events, the sagas, the
     outbox, a trace and the login page.
Screenshots of the pages are written to --screenshots. Run by pytest (the options are
ci/conftest.py's), in the demo (SQS, nothing configured) and in the Kafka saga scenario
(--keep-env; --no-traces, as its spans go to the harness's receiver there):

  python -m pytest ci/e2e_console.py -x -v -s --workspace W --gateway G --screenshots S

The checks run in order on one signed-in page (pytest runs a module's tests in the order
they are written), each a test of its own; -x stops at the first that fails, as the later
ones build on it.
"""

import os
import signal
import subprocess
import time
import tomllib
import types
import uuid
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import sync_playwright

from e2e_common import dev_token, environment_of, http_ok, logged, stop_process, wait_until
from e2e_gateway import call, expect
from e2e_oidc import ISSUER, Provider, start_oidc_gateway
from e2e_oidc import GATEWAY as OIDC_GATEWAY
from e2e_streams import EventStream

# The flags Chromium needs on this kind of machine (see the tool library's env notes): no
# sandbox as root, and none of its background connections to Google.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HEALTH_WITHIN_S = 10


def spec_of(workspace):
    with open(os.path.join(workspace, "archscaffold.toml"), "rb") as f:
        return tomllib.load(f)


def expected_edges(spec):
    """The map's edges as the spec states them, worked out here rather than read from the
    generator: (from, to, kind)."""
    edges = set()
    system = spec["name"]
    for name, context in spec["contexts"].items():
        edges.add(("gateway", name, "call"))
        for callee in context.get("calls", []):
            edges.add((name, callee, "call"))
        aggregate = context["aggregate"].lower()
        edges.add((name, f"{system}.{name}.{aggregate}.v1", "event"))
    for saga in spec.get("sagas", {}).values() if isinstance(spec.get("sagas"), dict) else spec.get("sagas", []):
        owner = saga["owner"]
        for step in saga["steps"]:
            target = (step.get("create") or step.get("command", "")).split(".")[0]
            if target and target != owner:
                edges.add((owner, target, "saga"))
    return edges


# How up.sh is run again to restart what a check stopped: as the demo ran it (nothing
# configured), or with the harness's environment (--keep-env).
KEEP_ENV = False


def up(workspace, extra=None):
    """deploy/local/up.sh as the system was started, with `extra` settings on top: starts
    what is not running."""
    env = dict(os.environ) if KEEP_ENV else {
        k: v for k, v in os.environ.items()
        if k not in ("DATABASE_ADMIN_URL", "KAFKA_BROKERS", "SQS_ENDPOINT", "REDIS_URL", "DATABASE_URL",
                     "OTEL_EXPORTER_OTLP_ENDPOINT")}
    env.update(extra or {})
    done = subprocess.run(["bash", os.path.join(workspace, "deploy", "local", "up.sh")], env=env,
                          capture_output=True, text=True, timeout=600)
    expect(done.returncode == 0, f"up.sh could not start what was stopped:\n{done.stdout}{done.stderr}")


def health_of(page, name):
    return page.locator(f'[data-testid="context"][data-name="{name}"]').get_attribute("data-health")


def check_login_and_origin(page, context, url, shots):
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
    elsewhere = []
    page.on("request", lambda r: None if r.url.startswith(origin + "/") else elsewhere.append(r.url))
    csp = []
    page.on("response", lambda r: csp.append((r.url, r.headers.get("content-security-policy"))))
    response = page.goto(url)
    expect(response.ok and urlsplit(page.url).path == "/", f"the login URL lands on the map: {page.url}")
    cookie = [c for c in context.cookies() if c["name"] == "console_session"]
    expect(cookie and cookie[0]["httpOnly"] and cookie[0]["sameSite"] == "Strict",
           f"the session cookie is HttpOnly and SameSite=Strict: {cookie}")
    page.locator('[data-testid="connection"][data-state="live"]').wait_for(timeout=10_000)
    page.screenshot(path=os.path.join(shots, "map.png"), full_page=True)
    missing = [u for u, policy in csp if not policy or "default-src 'none'" not in policy]
    expect(not missing, f"responses without the strict CSP: {missing}")
    expect(not elsewhere, f"requests that left {origin}: {elsewhere}")
    # The URL signs in once.
    again = context.request.get(url, max_redirects=0)
    expect(again.status == 401, f"the used login URL signs in again: {again.status}")
    print(f"check 1 passed: signed in once at {origin}; {len(csp)} responses, all with the CSP, none elsewhere")
    return origin


def check_map(page, spec):
    names = sorted(page.locator('[data-testid="context"]').evaluate_all("ns => ns.map(n => n.dataset.name)"))
    expect(names == sorted(spec["contexts"]), f"one node per context: {names}")
    drawn = page.locator('[data-testid="edge"]').evaluate_all(
        "es => es.map(e => [e.dataset.from, e.dataset.to, e.dataset.kind])")
    drawn_set = {tuple(e) for e in drawn}
    expect(len(drawn) == len(drawn_set), f"an edge drawn twice: {drawn}")
    want = expected_edges(spec)
    expect(drawn_set == want, f"the spec's edges: missing {want - drawn_set}, extra {drawn_set - want}")
    wait_until(lambda: all(health_of(page, n) == "serving" for n in names), HEALTH_WITHIN_S,
               "every context serving on the map")
    print(f"check 2 passed: {len(names)} contexts, {len(drawn)} edges as the spec says, all serving")


def create_item(token):
    status, _, item, _ = call("POST", "/v1/inventory", token, {"title": "console", "stock": 3},
                              {"Idempotency-Key": str(uuid.uuid4())})
    expect(status == 201, f"create an item: {status} {item}")
    return item["id"]


def rows_of(page, aggregate_id):
    return page.locator(f'[data-testid="event"][data-aggregate-id="{aggregate_id}"]').evaluate_all(
        "rs => rs.map(r => [r.dataset.type, r.dataset.version, r.dataset.topic, r.dataset.eventId])")


def check_events(page, origin, token, shots):
    page.goto(origin + "/events")
    page.locator('[data-testid="connection"][data-state="live"]').wait_for()
    page.evaluate("window.__notReloaded = true")
    stream = EventStream("/v1/inventory/events", token)
    expect(stream.status == 200, f"the gateway's inventory stream: {stream.status}")
    item = create_item(token)
    status, _, retired, _ = call("POST", f"/v1/inventory/{item}/retire", token, {},
                                 {"Idempotency-Key": str(uuid.uuid4())})
    expect(status == 200, f"retire the item: {status} {retired}")
    wait_until(lambda: len(rows_of(page, item)) >= 2, 15, "the create and the command on the events page")
    rows = rows_of(page, item)
    expect([r[1] for r in rows] == ["2", "1"], f"versions 2 then 1, newest first: {rows}")
    expect(all(r[2] == "shop.inventory.item.v1" for r in rows), f"the item's topic: {rows}")
    expect(page.evaluate("window.__notReloaded === true"), "the events page was reloaded")
    streamed, deadline = [], time.monotonic() + 10
    while len(streamed) < 2 and time.monotonic() < deadline:
        got = stream.next(max(0.0, deadline - time.monotonic()))
        if got is None or got[1] is None:
            break
        if got[1].get("id", "").startswith(item + ":"):
            streamed.append((got[1]["event"], got[1]["id"].rsplit(":", 1)[1]))
    stream.close()
    shown = sorted((r[0], r[1]) for r in rows)
    expect(sorted(streamed) == shown, f"the gateway streamed {streamed}, the console shows {shown}")
    page.screenshot(path=os.path.join(shots, "events.png"), full_page=True)
    print(f"check 3 passed: {shown} on the events page without a reload, the same as the gateway streamed")
    return item


def check_trace(page, origin, token, shots):
    item = create_item(token)
    status, _, order, _ = call("POST", "/v1/orders", token,
                               {"customer_id": "console", "item_id": item, "quantity": 1, "amount_cents": 500},
                               {"Idempotency-Key": str(uuid.uuid4())})
    expect(status == 201, f"create an order: {status} {order}")
    page.goto(origin + "/events")
    link = page.locator(f'[data-testid="event"][data-aggregate-id="{order["id"]}"][data-version="1"] '
                        '[data-testid="event-trace"]')
    link.wait_for(timeout=15_000)
    link.click()
    page.wait_for_url("**/traces/*")
    # Processes export their spans in batches, every few seconds each.
    wanted = {"gateway", "orders", "inventory"}
    spans = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        spans = page.locator('[data-testid="span"]').evaluate_all(
            "ss => ss.map(s => [s.dataset.service, s.dataset.spanId, s.dataset.parentId, s.dataset.depth])")
        if wanted <= {s[0] for s in spans}:
            break
        time.sleep(1)
        page.reload()
    services = {s[0] for s in spans}
    expect(wanted <= services, f"the trace of the order's creation has {services}, not all of {wanted}: {spans}")
    service_of = {s[1]: s[0] for s in spans}
    crossings = {(service_of[s[2]], s[0]) for s in spans if s[2] in service_of and service_of[s[2]] != s[0]}
    expect(("gateway", "orders") in crossings and ("orders", "inventory") in crossings,
           f"orders' spans under the gateway's and inventory's under orders': {crossings}")
    page.screenshot(path=os.path.join(shots, "trace.png"), full_page=True)
    print(f"check 4 passed: the order's trace from its event: {len(spans)} spans of {sorted(services)}, "
          f"nested {sorted(crossings)}")
    return page.url


def place_order(token, item, amount_cents=500):
    status, _, order, _ = call("POST", "/v1/orders", token,
                               {"customer_id": "console", "item_id": item, "quantity": 1,
                                "amount_cents": amount_cents},
                               {"Idempotency-Key": str(uuid.uuid4())})
    expect(status == 201, f"create an order: {status} {order}")
    return order["id"]


def saga_of(page, order):
    return page.locator(f'[data-testid="saga"][data-subject="{order}"]')


def steps_of(saga):
    return saga.locator('[data-testid="saga-step"]').evaluate_all(
        "ss => ss.map(s => [s.dataset.direction, s.dataset.status, s.querySelector('.step-name').textContent])")


def check_sagas(page, origin, token, retired_item, shots):
    page.goto(origin + "/sagas")
    page.locator('[data-testid="connection"][data-state="live"]').wait_for()
    page.evaluate("window.__notReloaded = true")
    happy = place_order(token, create_item(token))
    refused = place_order(token, retired_item)
    # The owner is asked every probe interval (2 s); the saga itself takes well under 1 s.
    for order, state in ((happy, "completed"), (refused, "compensated")):
        page.locator(f'[data-testid="saga"][data-subject="{order}"][data-state="{state}"]').wait_for(timeout=20_000)
    expect(page.evaluate("window.__notReloaded === true"), "the sagas page was reloaded")
    done = steps_of(saga_of(page, happy))
    expect(done and all(d == "forward" and st == "done" for d, st, _ in done),
           f"the completed saga's steps are all done, none undone: {done}")
    undone = steps_of(saga_of(page, refused))
    forward = [(st, name) for d, st, name in undone if d == "forward"]
    compensations = [name for d, _, name in undone if d == "compensation"]
    expect(("refused", "inventory.reserve") in forward, f"inventory's reservation refused: {forward}")
    expect(("compensated", "create payments") in forward, f"the payment undone: {forward}")
    expect(compensations == ["undo create payments"], f"one compensation, the payment's: {compensations}")
    reason = saga_of(page, refused).locator(".reason").text_content()
    expect("refused" in reason, f"the reason names the refusal: {reason}")
    page.screenshot(path=os.path.join(shots, "sagas.png"), full_page=True)
    print(f"check 4b passed: without a reload, order {happy}'s saga completed ({len(done)} steps done) and "
          f"order {refused}'s compensated: {forward}, then {compensations}; reason: {reason}")


OPERATOR_CONSOLE = "http://127.0.0.1:8091"


@contextmanager
def operator_console(opts):
    """oidc-provider, a gateway in OIDC mode against it, and a second console with the first
    one's settings whose operators sign in there and act through that gateway; all stopped
    on the way out."""
    ws = opts["workspace"]
    args = types.SimpleNamespace(workspace=ws, gateway=opts["gateway"], oidc_dir=opts["oidc_dir"])
    provider = Provider(args)
    gateway = console = None
    try:
        provider.start([provider.new_key()])
        gateway = start_oidc_gateway(args)
        env = environment_of(ws, "console")
        env.update({
            "CONSOLE__HTTP__ADDR": OPERATOR_CONSOLE.removeprefix("http://"),
            "CONSOLE__PUBLIC_URL": OPERATOR_CONSOLE,
            "CONSOLE__LOGIN_URL_FILE": os.path.join(ws, ".run", "console-oidc-url"),
            # The first console has the bus and the OTLP port; this one needs neither.
            "CONSOLE__BUS__ENABLED": "false", "CONSOLE__OTLP__ADDR": "off",
            "CONSOLE__GATEWAY__URL": OIDC_GATEWAY,
            "CONSOLE__OIDC__ISSUER": ISSUER, "CONSOLE__OIDC__CLIENT_ID": "e2e-console",
            # The scopes are the console's default: openid and every context's admin scope.
            "CONSOLE__OIDC__CLIENT_SECRET": "e2e-console-secret", "CONSOLE__OIDC__RESOURCE": "urn:shop-api"})
        log = open(os.path.join(ws, ".run", "console-oidc.log"), "ab")
        console = subprocess.Popen([os.path.join(os.path.dirname(opts["gateway"]), "console")],
                                   env=env, stdout=log, stderr=log)
        with open(os.path.join(ws, ".run", "console-oidc.pid"), "w") as f:
            f.write(str(console.pid))
        wait_until(lambda: http_ok(f"{OPERATOR_CONSOLE}/readyz"), 30, "the operators' console ready")
        yield OPERATOR_CONSOLE
    finally:
        for process in (console, gateway):
            if process and process.poll() is None:
                process.terminate()
                process.wait(timeout=15)
        provider.stop()


def sign_in_at_the_provider(page, origin, login):
    """The operator's way in: the console's link to the provider, its sign-in and consent
    pages (oidc-provider's development ones), and back to the console's map."""
    page.goto(origin + "/login")
    page.locator('[data-testid="oidc-login"]').click()
    page.locator('input[name="prompt"][value="login"]').wait_for(state="attached")
    page.locator('input[name="login"]').fill(login)
    page.locator('input[name="password"]').fill("any")
    page.locator('button[type="submit"]').first.click()
    consent = page.locator('input[name="prompt"][value="consent"]')
    consent.or_(page.locator('[data-testid="who"]')).first.wait_for(state="attached")
    if consent.count():
        page.locator('button[type="submit"]').first.click()
    page.wait_for_url(origin + "/")


def check_retry(page, origin, opts, operator, token, retired_item, shots):
    ws = opts["workspace"]
    # While this is set, the card network refuses to void payments of 13 cents
    # (ci/saga-rules.sh): the order for the retired item compensates, and its void fails.
    stop_process(ws, "payments", signal.SIGTERM, 20)
    up(ws, {"PAYMENTS_E2E_VOID_BROKEN": "1"})
    page.goto(origin + "/sagas")
    page.locator('[data-testid="connection"][data-state="live"]').wait_for()
    order = place_order(token, retired_item, amount_cents=13)
    stuck = page.locator(f'[data-testid="saga"][data-subject="{order}"][data-state="compensation_failed"]')
    stuck.wait_for(timeout=60_000)
    expect(stuck.locator('[data-testid="saga-waiting"]').count() == 1, "the saga says it waits for an operator")
    expect(stuck.locator('[data-testid="saga-retry"]').count() == 0, "a viewer is offered Retry")
    saga_id = stuck.get_attribute("data-id")
    refused = viewer_post(page, origin, "/sagas/retry", {"owner": "orders", "subject": order, "id": saga_id})
    expect(refused.status == 403 and "orders:admin" in refused.text(),
           f"a viewer's retry: {refused.status} {refused.text()}")
    # The cause fixed: payments without the fault.
    stop_process(ws, "payments", signal.SIGTERM, 20)
    up(ws)
    op, login = operator["page"], operator["login"]
    op.goto(operator["origin"] + "/sagas")
    op.locator('[data-testid="connection"][data-state="live"]').wait_for()
    retry = op.locator(f'[data-testid="saga"][data-subject="{order}"] [data-testid="saga-retry"]')
    retry.wait_for()
    op.screenshot(path=os.path.join(shots, "sagas-retry.png"), full_page=True)
    op.evaluate("window.__notReloaded = true")
    retry.click()
    moved = f'[data-testid="saga"][data-subject="{order}"][data-state="compensated"]'
    op.locator(moved).wait_for(timeout=30_000)
    expect(op.evaluate("window.__notReloaded === true"), "the operator's page was reloaded")
    page.locator(moved).wait_for(timeout=15_000)
    # Made with the operator's own token, through the gateway.
    logged(ws, "gateway-oidc", lambda e: e.get("userId") == login and e.get("status") == 200
           and str(e.get("http.route", "")).endswith("/retry"),
           f"the gateway's line for the retry as {login}")
    print(f"check 4c passed: order {order}'s saga waited for an operator (no Retry for the viewer, "
          f"whose POST was 403); {login}, signed in with oidc-provider, retried it through the "
          "OIDC gateway, and both pages showed it compensated without a reload")


def viewer_post(page, origin, path, form):
    """A POST of the viewer's page (the one-time link's session), with its CSRF token."""
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    return page.request.post(origin + path, form=form, headers={"X-CSRF-Token": csrf})


def database_of(workspace, service):
    env = environment_of(workspace, service)
    return next(v for k, v in env.items() if k.endswith("__DATABASE__URL"))


def psql(database, sql):
    out = subprocess.run(["psql", database, "-Atc", sql], check=True, capture_output=True, text=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


def check_replay(page, origin, opts, operator, shots):
    ws = opts["workspace"]
    db = database_of(ws, "shipping")
    # A copy of shipping's newest published event, 1.1 MB large: more than the broker takes.
    source = psql(db, "SELECT id FROM outbox WHERE published_at IS NOT NULL ORDER BY created_at DESC LIMIT 1")
    expect(source, "shipping has published an event (the saga checks ship orders)")
    source = source[0][0]
    poison = str(uuid.uuid4())
    psql(db, "INSERT INTO outbox (id, topic, event_type, aggregate_type, aggregate_id, aggregate_version, "
             "payload, headers) SELECT "
             f"'{poison}', topic, event_type, aggregate_type, aggregate_id, aggregate_version, "
             f"decode(repeat('00', 1100000), 'hex'), headers FROM outbox WHERE id = '{source}'")
    page.goto(origin + "/outbox")
    page.locator('[data-testid="connection"][data-state="live"]').wait_for()
    row = f'[data-testid="outbox-service"][data-name="shipping"] [data-testid="outbox-parked"][data-id="{poison}"]'
    # Parked after the broker's refusals (5, with backoff), then shown at the next ask.
    page.locator(row).wait_for(timeout=60_000)
    service = page.locator('[data-testid="outbox-service"][data-name="shipping"]')
    expect(service.get_attribute("data-parked") == "1", f"shipping says 1 parked: {service.get_attribute('data-parked')}")
    expect(page.locator(row + ' [data-testid="outbox-replay"]').count() == 0, "a viewer is offered Replay")
    refused = viewer_post(page, origin, "/outbox/replay", {"service": "shipping", "id": poison})
    expect(refused.status == 403 and "shipping:admin" in refused.text(),
           f"a viewer's replay: {refused.status} {refused.text()}")
    # The cause fixed: the row holds the event it copied, of a size the broker takes.
    psql(db, f"UPDATE outbox SET payload = (SELECT payload FROM outbox WHERE id = '{source}') WHERE id = '{poison}'")
    op, login = operator["page"], operator["login"]
    op.goto(operator["origin"] + "/outbox")
    op.locator('[data-testid="connection"][data-state="live"]').wait_for()
    replay = op.locator(row + ' [data-testid="outbox-replay"]')
    replay.wait_for()
    op.screenshot(path=os.path.join(shots, "outbox.png"), full_page=True)
    op.evaluate("window.__notReloaded = true")
    replay.click()
    op.locator(row).wait_for(state="detached", timeout=20_000)
    expect(op.evaluate("window.__notReloaded === true"), "the operator's page was reloaded")
    page.locator(row).wait_for(state="detached", timeout=15_000)
    wait_until(lambda: psql(db, f"SELECT published_at IS NOT NULL FROM outbox WHERE id = '{poison}'") == [["t"]],
               20, "the replayed row published")
    logged(ws, "shipping", lambda e: e.get("message") == "parked outbox rows replayed"
           and e.get("operator") == f"token:{login}" and e.get("replayed") == 1,
           f"shipping's line for the replay by {login}")
    print(f"check 4d passed: a 1.1 MB shipping event was parked and shown (viewer: no Replay, POST 403); "
          f"fixed, {login} replayed it over the console's link and it was published, gone from both pages "
          "without a reload")


def check_health(page, origin, workspace):
    page.goto(origin + "/")
    page.locator('[data-testid="connection"][data-state="live"]').wait_for()
    victim = "shipping"
    stop_process(workspace, victim, signal.SIGKILL, 20)
    started = time.monotonic()
    page.locator(f'[data-testid="context"][data-name="{victim}"][data-health="not_serving"]').wait_for(
        timeout=HEALTH_WITHIN_S * 1000)
    took = time.monotonic() - started
    up(workspace)
    page.locator(f'[data-testid="context"][data-name="{victim}"][data-health="serving"]').wait_for(
        timeout=HEALTH_WITHIN_S * 1000)
    print(f"check 5 passed: {victim} killed showed not_serving after {took:.1f} s, serving again once restarted")


def check_reconnect(page, origin, workspace, token):
    page.goto(origin + "/events")
    page.locator('[data-testid="connection"][data-state="live"]').wait_for()
    before = page.locator('[data-testid="event"]').count()
    stop_process(workspace, "console", signal.SIGTERM, 20)
    page.locator('[data-testid="connection"][data-state="reconnecting"]').wait_for(timeout=10_000)
    item = create_item(token)
    up(workspace)
    page.locator('[data-testid="connection"][data-state="live"]').wait_for(timeout=15_000)
    wait_until(lambda: len(rows_of(page, item)) == 1, 15, "the event made while the console was down")
    rows = page.locator('[data-testid="event"]').evaluate_all(
        "rs => rs.map(r => [r.dataset.liveId, r.dataset.eventId, r.dataset.anomaly])")
    live_ids = [r[0] for r in rows]
    expect(len(live_ids) == len(set(live_ids)),
           f"a row twice after reconnecting: {len(live_ids)} rows, {len(set(live_ids))} distinct")
    expect(len(rows) > before, f"rows before {before}, after {len(rows)}")
    # An event the bus delivered again (the saga checks redeliver some) is a row of its
    # own, marked as a repeat.
    by_event = {}
    for _, event_id, anomaly in rows:
        by_event.setdefault(event_id, []).append(anomaly)
    unmarked = [e for e, marks in by_event.items() if len(marks) > 1 and "repeat" not in marks]
    expect(not unmarked, f"events shown twice without a repeat mark: {unmarked}")
    redelivered = sum(1 for marks in by_event.values() if len(marks) > 1)
    print(f"check 6 passed: console restarted: reconnecting, then live on the same page; "
          f"the event made meanwhile arrived; {len(rows)} rows, none twice "
          f"({redelivered} redelivered events marked as repeats)")


def check_guards(browser, page, origin):
    stranger = browser.new_context()
    try:
        other = stranger.new_page()
        other.goto(origin + "/")
        expect(urlsplit(other.url).path == "/login", f"without a session: {other.url}")
    finally:
        stranger.close()
    # The signed-in page's own cookie, but no CSRF token.
    refused = page.request.post(origin + "/logout", form={"csrf": ""}, max_redirects=0)
    expect(refused.status == 403, f"a POST without the CSRF token: {refused.status}")
    forged = page.request.post(origin + "/logout", form={"csrf": "forged"}, max_redirects=0)
    expect(forged.status == 403, f"a POST with a forged CSRF token: {forged.status}")
    print("check 7 passed: redirected to /login without a session; POSTs without the CSRF token are 403")


def check_accessibility(browser, page, origin, trace_url):
    axe = Axe()

    def serious_violations(p):
        return [(p.url, v["id"], v["impact"]) for v in axe.run(p).response["violations"]
                if v["impact"] in ("critical", "serious")]

    serious = []
    pages = ["/", "/events", "/sagas", "/outbox"]
    for url in [origin + p for p in pages] + ([trace_url] if trace_url else []):
        page.goto(url)
        page.locator('[data-testid="connection"][data-state="live"]').wait_for()
        serious += serious_violations(page)
    login = browser.new_context()
    try:
        p = login.new_page()
        p.goto(origin + "/login")
        serious += serious_violations(p)
    finally:
        login.close()
    expect(not serious, f"axe: {serious}")
    pages = "the map, the events, the sagas, the outbox" + (", a trace" if trace_url else "") + " and the login page"
    print(f"check 8 passed: axe finds no critical or serious violation on {pages}")


# One browser, one signed-in page and what the checks hand on to the later ones, for the
# whole module.

@pytest.fixture(scope="module")
def opts(request):
    global KEEP_ENV
    get = request.config.getoption
    missing = [f"--{o}" for o in ("workspace", "screenshots", "gateway") if not get(o)]
    if missing:
        pytest.fail(f"the console's checks need {', '.join(missing)} (see ci/conftest.py)")
    KEEP_ENV = get("keep_env")
    os.makedirs(get("screenshots"), exist_ok=True)
    return {"workspace": get("workspace"), "screenshots": get("screenshots"), "gateway": get("gateway"),
            "chromium": get("chromium"), "traces": not get("no_traces"), "oidc_dir": get("oidc_dir")}


@pytest.fixture(scope="module")
def browser(opts):
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=opts["chromium"], headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def context(browser):
    context = browser.new_context()
    context.set_default_timeout(15_000)
    yield context
    context.close()


@pytest.fixture(scope="module")
def page(context):
    return context.new_page()


@pytest.fixture(scope="module")
def state():
    """What a check found that a later one needs: the console's origin, a trace's URL."""
    return {}


@pytest.fixture(scope="module")
def operator(opts, browser):
    """An operator signed in with the identity provider to a second console (see
    operator_console), for the admin actions' checks: its origin, page and login name."""
    if not opts["oidc_dir"]:
        pytest.skip("no --oidc-dir: no identity provider to sign operators in")
    login = f"operator-{uuid.uuid4().hex[:8]}"
    with operator_console(opts) as origin:
        session = browser.new_context()
        session.set_default_timeout(15_000)
        try:
            page = session.new_page()
            sign_in_at_the_provider(page, origin, login)
            who = page.locator('[data-testid="who"]').text_content()
            expect(login in who, f"the header names the operator: {who}")
            yield {"origin": origin, "page": page, "login": login}
        finally:
            session.close()


@pytest.fixture(scope="module")
def token(opts):
    return dev_token(opts["gateway"], opts["workspace"], "console-e2e")


def test_login_and_origin(opts, page, context, state):
    with open(os.path.join(opts["workspace"], ".run", "console-url")) as f:
        url = f.read().strip()
    state["origin"] = check_login_and_origin(page, context, url, opts["screenshots"])


def test_map(opts, page):
    check_map(page, spec_of(opts["workspace"]))


def test_events(opts, page, state, token):
    state["retired_item"] = check_events(page, state["origin"], token, opts["screenshots"])


def test_trace(opts, page, state, token):
    if not opts["traces"]:
        pytest.skip("--no-traces: the system's spans go to another receiver")
    state["trace_url"] = check_trace(page, state["origin"], token, opts["screenshots"])


def test_sagas(opts, page, state, token):
    check_sagas(page, state["origin"], token, state["retired_item"], opts["screenshots"])


def test_retry_by_an_operator(opts, page, state, operator, token):
    check_retry(page, state["origin"], opts, operator, token, state["retired_item"], opts["screenshots"])


def test_replay_by_an_operator(opts, page, state, operator):
    check_replay(page, state["origin"], opts, operator, opts["screenshots"])


def test_health(opts, page, state):
    check_health(page, state["origin"], opts["workspace"])


def test_reconnect(opts, page, state, token):
    check_reconnect(page, state["origin"], opts["workspace"], token)


def test_guards(browser, page, state):
    check_guards(browser, page, state["origin"])


def test_accessibility(browser, page, state):
    check_accessibility(browser, page, state["origin"], state.get("trace_url"))
