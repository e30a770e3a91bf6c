#!/usr/bin/env bash
# The end-to-end harness. Scenarios (all by default; pass names to choose): kafka and sqs
# generate `shop` (orders -> billing) for that bus, build it, start a real broker and Redis
# on loopback, an OTLP receiver (ci/otlp_receiver.py) and the system (services and gateway)
# with its own deploy/local/up.sh, and run ci/e2e.py (services and bus), ci/e2e_metrics.py
# (/metrics), ci/e2e_traces.py (one trace across gateway, gRPC and bus),
# ci/e2e_lifecycle.py (updates, commands, ETags over REST; event order with two relays),
# ci/e2e_streams.py (the gateway's server-sent event streams),
# ci/e2e_gateway.py (the REST gateway; schemathesis on the first bus only) and
# ci/e2e_faults.py (a poison outbox row, a killed consumer, a panicking handler, orders
# killed and PostgreSQL restarted under load, a rolling restart of orders' two replicas)
# against it, and on SQS ci/e2e_oidc.py (a
# second gateway in OIDC mode against oidc-provider: scopes, aud forms, key rotation).
# On Kafka the workspace is first evolved as a user would (edits, then `archscaffold add
# context shipping`), e2e.py also follows an order to shipping, and the platform's
# tests/kafka_broker.rs runs against the broker first. calls-kafka and calls
# (SQS) run catalog <- checkout <- shipping, joined by `ref:` fields, and ci/e2e_calls.py
# (references, traces, a dead and a slow dependency, admission). Everything started is
# stopped, pass or fail. Needs DATABASE_URL (ci/test sets it).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
: "${DATABASE_URL:?set DATABASE_URL to a PostgreSQL admin URL (ci/setup-postgres.sh prints one)}"
# Scenarios: kafka and sqs (the shop above on each bus); calls-kafka and calls (synchronous
# calls between services, ci/e2e_calls.py, on Kafka and on SQS). The calls never touch the
# bus, but the services they run in do, and a second run costs under a minute once built.
# sagas-kafka and sagas (SQS): the checkout saga of examples/checkout.toml, ci/e2e_sagas.py
# (on Kafka against the tansu that up.sh's deploy/local/infra.sh starts itself);
# after it on SQS, the same workspace run with nothing configured (ci/e2e_demo.py);
# on both buses, since the saga starts from its owner's own event, which each bus routes
# differently (a topic the owner consumes; the owner's own queue).
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(kafka sqs calls-kafka calls sagas-kafka sagas)
buses=()
calls_buses=()
saga_buses=()
for s in "${scenarios[@]}"; do
    case "$s" in
        kafka|sqs) buses+=("$s") ;;
        calls) calls_buses+=(sqs) ;;
        calls-kafka) calls_buses+=(kafka) ;;
        sagas) saga_buses+=(sqs) ;;
        sagas-kafka) saga_buses+=(kafka) ;;
        *) echo "e2e.sh: unknown scenario '$s' (kafka, sqs, calls, calls-kafka, sagas, sagas-kafka)" >&2; exit 2 ;;
    esac
done

bash "$root/ci/setup-build-deps.sh"
cache=$(bash ci/setup-e2e-tools.sh)
export E2E_STATE="$root/.work/e2e"
rm -rf "$E2E_STATE"
mkdir -p "$E2E_STATE"

(env -u CARGO_TARGET_DIR cargo build --quiet)
bin="$root/target/debug/archscaffold"
export CARGO_TARGET_DIR="${ARCHSCAFFOLD_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/archscaffold/target}"
# No incremental state there: every generated crate differs from run to run, so it would
# only pile up (41 GB in the shared directory once) and no build here reuses it.
export CARGO_INCREMENTAL=0

# E2E_CPU_HOG=1: a busy loop on one of the two cores for the whole run (at most an hour),
# to show the checks hold on a loaded machine; each check says which answers it accepts
# under overload.
if [ "${E2E_CPU_HOG:-0}" = 1 ]; then
    timeout 3600 python3 -c 'while True: pass' &
    # Not a *.pid file: the processes the harness must have stopped are recorded from those.
    echo $! >"$E2E_STATE/cpu-hog"
    echo "== e2e: a CPU hog runs beside the harness (pid $!) =="
fi

cleanup() {
    [ -s "$E2E_STATE/cpu-hog" ] && kill "$(cat "$E2E_STATE/cpu-hog")" 2>/dev/null
    for ws in "$E2E_STATE"/kafka "$E2E_STATE"/sqs "$E2E_STATE"/calls-* "$E2E_STATE"/sagas-* "$E2E_STATE"/demo; do
        [ -x "$ws/deploy/local/down.sh" ] && bash "$ws/deploy/local/down.sh" || true
    done
    bash ci/brokers.sh stop kafka || true
    bash ci/brokers.sh stop sqs || true
    bash ci/brokers.sh stop redis || true
    stop_otlp_receiver
}
trap cleanup EXIT

# A broker for one scenario (ci/brokers.sh), whose log must not grow past 20 MB while it
# runs: CI once filled its disk with tansu's span log (31 GB), and PostgreSQL then failed
# the services' writes. Appended to across restarts, so what it grew by is measured.
broker_log_limit=$((20 * 1024 * 1024))
declare -A broker_log_start
log_bytes() { stat -c %s "$1" 2>/dev/null || echo 0; }
start_broker() {
    broker_log_start[$1]=$(log_bytes "$(bash ci/brokers.sh log "$1")")
    bash ci/brokers.sh start "$1"
}
stop_broker() {
    bash ci/brokers.sh stop "$1"
    local log grew
    log=$(bash ci/brokers.sh log "$1")
    grew=$(($(log_bytes "$log") - ${broker_log_start[$1]:-0}))
    if [ "$grew" -gt "$broker_log_limit" ]; then
        echo "e2e: $log grew by $((grew / 1024 / 1024)) MB during the scenario (at most 20): the broker logs too much" >&2
        head -c 2000 "$log" | tail -n 5 >&2
        return 1
    fi
}

# The OTLP receiver the system exports its spans to (ci/otlp_receiver.py), one per bus run.
otlp_pid="$E2E_STATE/otlp-receiver.pid"
start_otlp_receiver() {
    local out=$1
    rm -f "$out"
    "$cache/venv/bin/python" ci/otlp_receiver.py --port 4318 --out "$out" \
        >"$E2E_STATE/otlp-receiver.log" 2>&1 &
    echo $! >"$otlp_pid"
    local i
    for i in $(seq 1 50); do
        grep -q listening "$E2E_STATE/otlp-receiver.log" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "the OTLP receiver did not start" >&2
    cat "$E2E_STATE/otlp-receiver.log" >&2
    return 1
}
stop_otlp_receiver() {
    [ -s "$otlp_pid" ] || return 0
    kill "$(cat "$otlp_pid")" 2>/dev/null || true
    wait "$(cat "$otlp_pid")" 2>/dev/null || true
    rm -f "$otlp_pid"
}

# Every process the harness started must be gone at the end (check 5). The pids are
# recorded as they start, since the stop scripts remove their pid files.
started="$E2E_STATE/started.pids"
record_started() {
    cat "$@" >>"$started"
}
# Whether a recorded process still runs: a zombie (killed, not yet reaped by its parent)
# does not, nor one whose /proc entry went while it was looked at.
running() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}
assert_all_stopped() {
    local left=0 pid tries
    while read -r pid; do
        # One the stop scripts signalled may still be on its way out (PostgreSQL's
        # postmaster removes the pid file pg_ctl waits for just before it exits): up to 10 s.
        for ((tries = 0; tries < 20; tries++)); do
            running "$pid" || break
            sleep 0.5
        done
        if running "$pid"; then
            echo "still running: pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null))" >&2
            left=1
        fi
    done <"$started"
    [ -s "$started" ] || { echo "no started process was recorded" >&2; left=1; }
    return $left
}

# The warnings and errors every process of a failed scenario logged: what went wrong is
# rarely in the last lines of one log.
show_warnings() {
    local log
    for log in "$1"/.run/*.log; do
        echo "==> $log: last warnings and errors <==" >&2
        grep -h '"level":"\(WARN\|ERROR\)"' "$log" | tail -n 8 | cut -c1-400 >&2 || true
    done
}

database_url() {
    local base="${DATABASE_URL%%\?*}"
    echo "${base%/*}/$1"
}

for bus in ${buses[@]+"${buses[@]}"}; do
    echo "== e2e [$bus]: generate and build =="
    ws="$E2E_STATE/$bus"
    for db in shop_orders shop_billing shop_shipping; do
        psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"
    done
    # The default chain, with orders that change: a lifecycle and two commands
    # (e2e_lifecycle.py drives them over REST).
    printf '%s\n' 'name = "shop"' "bus = \"$bus\"" '' '[contexts.orders]' 'aggregate = "Order"' \
        'publishes = ["OrderCreated", "OrderUpdated"]' 'states = ["pending", "confirmed", "cancelled"]' \
        'replicas = 2' '' '[contexts.orders.commands.confirm]' 'from = ["pending"]' 'to = "confirmed"' '' \
        '[contexts.orders.commands.cancel]' 'from = ["pending", "confirmed"]' 'to = "cancelled"' \
        'fields = { reason = "string" }' '' '[contexts.billing]' \
        'subscribes = ["orders.OrderCreated"]' 'replicas = 1' >"$E2E_STATE/shop.toml"
    "$bin" new shop --spec "$E2E_STATE/shop.toml" --out "$ws" >/dev/null
    if [ "$bus" = kafka ]; then
        # The workspace as a user evolves it (on one bus: the evolution is bus-neutral):
        # edits to their rules and handlers, then a third context added by
        # `archscaffold add context`; e2e.py then checks orders -> billing -> shipping.
        printf '%s\n' '// ours: a rule kept across updates' >>"$ws/services/orders/src/domain/rules.rs"
        printf '%s\n' '// ours: a handler note kept across updates' >>"$ws/services/billing/src/handlers.rs"
        git -C "$ws" -c user.name=e2e -c user.email=e2e@localhost commit -qam "our edits"
        (cd "$ws" && "$bin" add context shipping --subscribes billing.BillingCreated >/dev/null)
        grep -qx '// ours: a rule kept across updates' "$ws/services/orders/src/domain/rules.rs"
        grep -qx '// ours: a handler note kept across updates' "$ws/services/billing/src/handlers.rs"
    fi
    # A bug in the user's handler that the faults check switches on (E2E_HANDLER_PANICS):
    # the build that panics and the fixed one are the same binary.
    python3 - "$ws/services/billing/src/handlers.rs" <<'PY'
import sys
path = sys.argv[1]
text = open(path).read()
bug = """impl Handlers for BillingHandlers {
    fn on_orders_order_created(
        &self,
        event: &contracts::orders::v1::OrderCreated,
    ) -> Result<Option<crate::domain::NewBilling>, platform::consumer::HandlerError> {
        if std::env::var_os("E2E_HANDLER_PANICS").is_some() {
            panic!("a bug in handlers.rs (switched on by the e2e harness)");
        }
        Ok(Some(crate::domain::NewBilling { order_id: event.order_id.clone() }))
    }
}"""
assert text.count("impl Handlers for BillingHandlers {}") == 1, text
open(path, "w").write(text.replace("impl Handlers for BillingHandlers {}", bug))
PY
    (cd "$ws" && cargo build --workspace --quiet)
    # An API key, made the way a user would; the harness keeps the clear key to present it.
    "$CARGO_TARGET_DIR/debug/gateway" api-key --name e2e-robot --scope orders:read --scope orders:write >"$E2E_STATE/api-key.json"
    api_key_record=$("$cache/venv/bin/python" -c 'import json,sys; print(json.dumps([json.load(sys.stdin)["record"]]))' <"$E2E_STATE/api-key.json")

    echo "== e2e [$bus]: start broker and system =="
    start_broker "$bus"
    if [ "$bus" = kafka ]; then
        # The platform's own producer and consumer on this broker (tests/kafka_broker.rs):
        # no event skipped when a group resumes inside a burst, with up.sh's settings.
        echo "== e2e [kafka]: the platform's Kafka client against the broker =="
        KAFKA_BROKERS=127.0.0.1:9092 cargo test --quiet -p platform --no-default-features \
            --features kafka,gateway,console,test-support --test kafka_broker -- --ignored
    fi
    if [ "$bus" = sqs ]; then
        # As a platform team's Terraform leaves it: billing's queue exists already, with
        # attributes of its own, which the services must use rather than fail to create
        # it again. And credentials come from a shared credentials file, which only the
        # AWS default chain reads.
        "$cache/venv/bin/python" -c 'import sys; sys.path.insert(0, "ci"); from e2e_common import sqs_client
sqs_client().create_queue(QueueName="shop-billing.fifo", Attributes={"FifoQueue": "true", "VisibilityTimeout": "45"})'
        printf '[default]\naws_access_key_id = e2e-from-file\naws_secret_access_key = e2e-from-file\n' \
            >"$E2E_STATE/aws-credentials"
        # Had the chain not found them there, the next in line would be instance
        # metadata, which is not loopback: off.
        export AWS_SHARED_CREDENTIALS_FILE="$E2E_STATE/aws-credentials" AWS_EC2_METADATA_DISABLED=true
    fi
    start_broker redis
    start_otlp_receiver "$E2E_STATE/spans-$bus.jsonl"
    record_started "$E2E_STATE"/*.pid
    # What up.sh reads; exported, so e2e_gateway.py can run it again to restart billing.
    export DATABASE_ADMIN_URL="$DATABASE_URL" KAFKA_BROKERS=127.0.0.1:9092 SQS_ENDPOINT=http://127.0.0.1:5000 \
        REDIS_URL=redis://127.0.0.1:6390 RUST_LOG=info \
        GATEWAY__AUTH__API_KEYS="$api_key_record" \
        GATEWAY__RATE_LIMIT__PER_SECOND=100 GATEWAY__RATE_LIMIT__BURST=50 GATEWAY__TRUSTED_PROXIES=127.0.0.1/32 \
        GATEWAY__BILLING__TIMEOUT_MS=1000 GATEWAY__BILLING__BREAKER__OPEN_MS=2000 \
        OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_BSP_SCHEDULE_DELAY=200
    bash "$ws/deploy/local/up.sh"
    record_started "$ws"/.run/*.pid

    echo "== e2e [$bus]: assertions =="
    status=0
    "$cache/venv/bin/python" ci/e2e.py --workspace "$ws" --bus "$bus" \
        --orders-db "$(database_url shop_orders)" || status=$?
    if [ $status -eq 0 ]; then
        "$cache/venv/bin/python" ci/e2e_metrics.py --workspace "$ws" \
            --gateway "$CARGO_TARGET_DIR/debug/gateway" || status=$?
    fi
    if [ $status -eq 0 ]; then
        "$cache/venv/bin/python" ci/e2e_traces.py --workspace "$ws" \
            --gateway "$CARGO_TARGET_DIR/debug/gateway" --spans "$E2E_STATE/spans-$bus.jsonl" || status=$?
    fi
    if [ $status -eq 0 ]; then
        "$cache/venv/bin/python" ci/e2e_lifecycle.py --workspace "$ws" --bus "$bus" --ordering \
            --gateway "$CARGO_TARGET_DIR/debug/gateway" --orders-bin "$CARGO_TARGET_DIR/debug/orders" \
            --orders-db "$(database_url shop_orders)" || status=$?
        record_started "$ws"/.run/*.pid
    fi
    if [ $status -eq 0 ]; then
        # On both buses: each feeds the gateway's consumer its own way (a consumer group;
        # the gateway's own FIFO queue).
        "$cache/venv/bin/python" ci/e2e_streams.py --workspace "$ws" \
            --gateway "$CARGO_TARGET_DIR/debug/gateway" || status=$?
    fi
    if [ $status -eq 0 ]; then
        schemathesis=""
        [ "$bus" = "${buses[0]}" ] && schemathesis="$cache/venv/bin/schemathesis"
        "$cache/venv/bin/python" ci/e2e_gateway.py --workspace "$ws" \
            --gateway "$CARGO_TARGET_DIR/debug/gateway" --api-key-file "$E2E_STATE/api-key.json" \
            --orders-db "$(database_url shop_orders)" --billing-db "$(database_url shop_billing)" \
            --billing-timeout-ms 1000 --schemathesis "$schemathesis" || status=$?
        # The breaker check restarted billing: its new pid must be stopped too.
        record_started "$ws"/.run/*.pid
    fi
    if [ $status -eq 0 ]; then
        # Faults: each bus gets the ones whose outcome depends on it; the bus-neutral
        # ones run on one bus each (see ci/e2e_faults.py).
        faults=(poison consumer panic crash rolling)
        [ "$bus" = sqs ] && faults=(poison consumer database)
        "$cache/venv/bin/python" ci/e2e_faults.py --workspace "$ws" \
            --gateway "$CARGO_TARGET_DIR/debug/gateway" --billing-bin "$CARGO_TARGET_DIR/debug/billing" \
            --orders-db "$(database_url shop_orders)" --billing-db "$(database_url shop_billing)" \
            "${faults[@]}" || status=$?
        # Billing and orders were restarted: their new pids must be stopped too.
        record_started "$ws"/.run/*.pid
    fi
    if [ $status -eq 0 ] && [ "$bus" = sqs ]; then
        # The gateway against a real OpenID provider (bus-neutral, so on one bus; on SQS a
        # second gateway shares the invalidation queue without a group rebalance).
        "$cache/venv/bin/python" ci/e2e_oidc.py --workspace "$ws" \
            --gateway "$CARGO_TARGET_DIR/debug/gateway" --oidc-dir "$cache/oidc" || status=$?
    fi

    bash "$ws/deploy/local/down.sh"
    stop_broker "$bus" || status=1
    stop_broker redis || status=1
    stop_otlp_receiver
    if [ $status -ne 0 ]; then
        echo "== e2e [$bus] failed; last log lines ==" >&2
        tail -n 30 "$ws/.run/orders.log" "$ws/.run/billing.log" "$ws/.run/gateway.log" >&2 || true
        show_warnings "$ws"
        exit $status
    fi
done

# The calls scenario on `bus` (ci/e2e_calls.py).
run_calls() {
    local bus=$1 ws="$E2E_STATE/calls-$1" status=0
    echo "== e2e [calls, $bus]: generate and build =="
    for db in shop_catalog shop_checkout shop_shipping; do
        psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"
    done
    # checkout's carts refer to catalog items, shipping's parcels to carts: a chain of calls.
    # One replica each: the checks stop and slow a service as a whole.
    printf '%s\n' 'name = "shop"' "bus = \"$bus\"" '' '[contexts.catalog]' 'aggregate = "Item"' \
        'fields = { title = "string", price_cents = "i64" }' 'replicas = 1' '' '[contexts.checkout]' \
        'aggregate = "Cart"' 'fields = { item_id = "ref:catalog", quantity = "i32" }' 'replicas = 1' '' \
        '[contexts.shipping]' 'aggregate = "Parcel"' \
        'fields = { cart_id = "ref:checkout", address = "string" }' 'replicas = 1' >"$E2E_STATE/calls-$bus.toml"
    "$bin" new shop --spec "$E2E_STATE/calls-$bus.toml" --out "$ws" >/dev/null
    (cd "$ws" && cargo build --workspace --quiet)

    echo "== e2e [calls, $bus]: start broker and system =="
    start_broker "$bus"
    start_otlp_receiver "$E2E_STATE/spans-calls-$bus.jsonl"
    record_started "$E2E_STATE"/*.pid
    # Exported: e2e_calls.py runs up.sh again to restart catalog. Short timeouts, so the
    # outage checks take seconds; no Redis: reads are not what this scenario is about.
    export DATABASE_ADMIN_URL="$DATABASE_URL" KAFKA_BROKERS=127.0.0.1:9092 SQS_ENDPOINT=http://127.0.0.1:5000 \
        RUST_LOG=info CHECKOUT__DEPS__CATALOG__TIMEOUT_MS=500 CHECKOUT__DEPS__CATALOG__BREAKER__OPEN_MS=2000 \
        OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_BSP_SCHEDULE_DELAY=200
    export REDIS_URL=
    bash "$ws/deploy/local/up.sh"
    record_started "$ws"/.run/*.pid

    echo "== e2e [calls, $bus]: assertions =="
    "$cache/venv/bin/python" ci/e2e_calls.py --workspace "$ws" \
        --gateway "$CARGO_TARGET_DIR/debug/gateway" --spans "$E2E_STATE/spans-calls-$bus.jsonl" || status=$?
    # catalog was restarted: its new pids must be stopped too.
    record_started "$ws"/.run/*.pid
    bash "$ws/deploy/local/down.sh"
    stop_broker "$bus" || status=1
    stop_otlp_receiver
    if [ $status -ne 0 ]; then
        echo "== e2e [calls, $bus] failed; last log lines ==" >&2
        tail -n 30 "$ws/.run/catalog.log" "$ws/.run/checkout.log" "$ws/.run/gateway.log" >&2 || true
        show_warnings "$ws"
        exit $status
    fi
}
for bus in ${calls_buses[@]+"${calls_buses[@]}"}; do
    run_calls "$bus"
done

# The saga scenario on `bus` (ci/e2e_sagas.py).
run_sagas() {
    local bus=$1 ws="$E2E_STATE/sagas-$1" status=0
    echo "== e2e [sagas, $bus]: generate and build =="
    for db in shop_orders shop_payments shop_inventory shop_shipping; do
        psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"
    done
    # One replica each: the checks stop and restart a service as a whole.
    sed 's/^\(\[contexts\.[a-z]*\]\)$/\1\nreplicas = 1/' examples/checkout.toml >"$E2E_STATE/sagas-$bus.toml"
    "$bin" new shop --spec "$E2E_STATE/sagas-$bus.toml" --bus "$bus" --out "$ws" >/dev/null
    bash ci/saga-rules.sh "$ws"
    (cd "$ws" && cargo build --workspace --quiet)

    echo "== e2e [sagas, $bus]: start broker and system =="
    # On Kafka the broker is the one deploy/local/infra.sh starts when KAFKA_BROKERS is
    # unset (tansu, at warn whatever RUST_LOG says), as for a user without a broker; the
    # demo covers that path for moto.
    [ "$bus" = kafka ] || start_broker "$bus"
    start_otlp_receiver "$E2E_STATE/spans-sagas-$bus.jsonl"
    record_started "$E2E_STATE"/*.pid
    # Exported: e2e_sagas.py runs up.sh again to restart orders and payments. A short lease
    # and backoff, so the crash and outage checks take seconds; no Redis.
    export DATABASE_ADMIN_URL="$DATABASE_URL" SQS_ENDPOINT=http://127.0.0.1:5000 \
        RUST_LOG=info ORDERS__SAGA__LEASE_MS=4000 ORDERS__SAGA__STEP_TIMEOUT_MS=2000 ORDERS__SAGA__POLL_MS=200 \
        ORDERS__SAGA__BACKOFF_MAX_MS=1000 ORDERS__SAGA__COMPENSATION_ATTEMPTS=4 \
        ORDERS__DEPS__PAYMENTS__BREAKER__OPEN_MS=1000 \
        OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_BSP_SCHEDULE_DELAY=200
    export REDIS_URL=
    unset KAFKA_BROKERS
    bash "$ws/deploy/local/up.sh"
    record_started "$ws"/.run/*.pid
    if [ "$bus" = kafka ]; then
        [ -f "$ws/.run/started-tansu" ] || { echo "up.sh without KAFKA_BROKERS did not start tansu" >&2; exit 1; }
        # The restarts in e2e_sagas.py and e2e_console.py reuse it, as does its duplicate check.
        KAFKA_BROKERS=$(cat "$ws/.run/tansu.addr")
        export KAFKA_BROKERS
    fi

    echo "== e2e [sagas, $bus]: assertions =="
    "$cache/venv/bin/python" ci/e2e_sagas.py --workspace "$ws" --gateway "$CARGO_TARGET_DIR/debug/gateway" \
        --database "$DATABASE_URL" --bus "$bus" --spans "$E2E_STATE/spans-sagas-$bus.jsonl" || status=$?
    # The console's Kafka consumer group in a real browser (the demo covers SQS, and traces).
    if [ $status -eq 0 ] && [ "$bus" = kafka ]; then
        console_checks --workspace "$ws" --keep-env --no-traces --oidc-dir "$cache/oidc" \
            --gateway "$CARGO_TARGET_DIR/debug/gateway" --screenshots "$E2E_STATE/screenshots-kafka" || status=$?
    fi
    # orders and payments were restarted: their new pids must be stopped too.
    record_started "$ws"/.run/*.pid
    bash "$ws/deploy/local/down.sh"
    if [ "$bus" = kafka ]; then
        # down.sh stopped the tansu up.sh started (every recorded pid must be gone at the
        # end); its log stays as small as the harness's own broker's must.
        local grew
        grew=$(log_bytes "$ws/.run/tansu.log")
        if [ "$grew" -gt "$broker_log_limit" ]; then
            echo "e2e: infra.sh's tansu logged $((grew / 1024 / 1024)) MB (at most 20)" >&2
            status=1
        fi
    else
        stop_broker "$bus" || status=1
    fi
    stop_otlp_receiver
    if [ $status -ne 0 ]; then
        echo "== e2e [sagas, $bus] failed; last log lines ==" >&2
        tail -n 30 "$ws/.run/orders.log" "$ws/.run/payments.log" "$ws/.run/gateway.log" >&2 || true
        show_warnings "$ws"
        exit $status
    fi
    # On SQS only: moto starts in seconds, where tansu would be waited for; infra.sh treats
    # both brokers alike.
    [ "$bus" = sqs ] && run_demo "$ws"
    return 0
}

# The console's browser checks (ci/e2e_console.py), run by pytest: each check a test, in
# order, stopping at the first that fails.
console_checks() {
    "$cache/venv/bin/python" -m pytest ci/e2e_console.py -x -v -s -p no:cacheprovider "$@"
}

# One command from `new` to a running system: the saga workspace's deploy/local/up.sh with
# nothing configured starts a private PostgreSQL cluster, moto and Redis itself
# (deploy/local/infra.sh), ci/e2e_demo.py uses the system, and down.sh stops exactly what
# up.sh started, leaving the harness's own PostgreSQL alone. Before that, up.sh without a
# broker to start says what to install and starts nothing. ci/e2e_console.py drives the
# console it started in a real browser.
run_demo() {
    local ws=$1 demo="$E2E_STATE/demo" out="$E2E_STATE/demo-up.out" status=0
    echo "== e2e [demo]: up.sh with nothing configured =="
    # As root the private cluster runs as the user postgres, who must reach the workspace.
    if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$ws"; then
        demo=$(mktemp -d /tmp/archscaffold-demo.XXXXXX)
        chmod 755 "$demo"
    fi
    rm -rf "$demo/shop"
    mkdir -p "$demo"
    cp -a "$ws" "$demo/shop"
    rm -rf "$demo/shop/.run"
    local up=(env -u DATABASE_ADMIN_URL -u KAFKA_BROKERS -u SQS_ENDPOINT -u REDIS_URL -u DATABASE_URL
        -u OTEL_EXPORTER_OTLP_ENDPOINT bash "$demo/shop/deploy/local/up.sh")
    if env PATH=/usr/bin:/bin XDG_CACHE_HOME="$demo/empty-cache" "${up[@]}" >"$out" 2>&1; then
        echo "up.sh started without a broker to start:" >&2; cat "$out" >&2; exit 1
    fi
    grep -q "pip install 'moto\[server\]==" "$out" || { echo "up.sh did not say how to install moto:" >&2; cat "$out" >&2; exit 1; }
    if ls "$demo/shop/.run/"*.pid >/dev/null 2>&1; then
        echo "up.sh left processes behind after refusing: $(ls "$demo/shop/.run/"*.pid)" >&2; exit 1
    fi
    # The port up.sh tries first for PostgreSQL held as a connection's source port (what a
    # TIME_WAIT does, which no listener shows): PostgreSQL's bind there fails, and up.sh must
    # go on to the next port (CI once lost a run to this).
    coproc HOLD { exec python3 ci/hold_port.py 15432 300; }
    local held="" holder=$HOLD_PID
    read -r -t 10 held <&"${HOLD[0]}" || true
    "${up[@]}" | tee "$out"
    kill "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
    if [ "$held" = "held 15432" ] && [ "$(cat "$demo/shop/.run/postgres/port")" = 15432 ]; then
        echo "up.sh reported PostgreSQL on a port a connection held" >&2; exit 1
    fi
    [ "$held" = "held 15432" ] || echo "(port 15432 was busy before the harness held it: $held)"
    record_started "$demo/shop"/.run/*.pid
    head -n 1 "$demo/shop/.run/postgres/data/postmaster.pid" >>"$started"
    "$cache/venv/bin/python" ci/e2e_demo.py --workspace "$demo/shop" --up-output "$out" \
        --gateway "$CARGO_TARGET_DIR/debug/gateway" || status=$?
    # The console up.sh started, in Debian's chromium; its screenshots are kept with the run.
    if [ $status -eq 0 ]; then
        console_checks --workspace "$demo/shop" \
            --gateway "$CARGO_TARGET_DIR/debug/gateway" --screenshots "$E2E_STATE/screenshots" || status=$?
    fi
    bash "$demo/shop/deploy/local/down.sh"
    if ls "$demo/shop/.run/"started-* >/dev/null 2>&1; then
        echo "down.sh left markers of what it should have stopped: $(ls "$demo/shop/.run/"started-*)" >&2; status=1
    fi
    psql "$DATABASE_URL" -Atc 'SELECT 1' >/dev/null || { echo "down.sh stopped the harness's PostgreSQL" >&2; status=1; }
    if [ $status -ne 0 ]; then
        echo "== e2e [demo] failed ==" >&2
        tail -n 20 "$demo/shop/.run/"*.log >&2 || true
        exit $status
    fi
    echo "== e2e [demo]: passed =="
}
for bus in ${saga_buses[@]+"${saga_buses[@]}"}; do
    run_sagas "$bus"
done

assert_all_stopped
echo "== e2e: every check passed and every process was stopped =="
