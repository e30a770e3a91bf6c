#!/usr/bin/env bash
# The end-to-end harness: for each bus (default: kafka sqs; pass names to choose), it
# generates `shop` (orders -> billing), builds it, starts a real broker on loopback and the
# system with its own deploy/local/up.sh, runs ci/e2e.py against it, and stops everything
# it started, pass or fail. Needs DATABASE_URL (ci/test sets it).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
: "${DATABASE_URL:?set DATABASE_URL to a PostgreSQL admin URL (ci/setup-postgres.sh prints one)}"
buses=("$@")
[ ${#buses[@]} -gt 0 ] || buses=(kafka sqs)

bash "$root/ci/setup-build-deps.sh"
cache=$(bash ci/setup-e2e-tools.sh)
export E2E_STATE="$root/.work/e2e"
rm -rf "$E2E_STATE"
mkdir -p "$E2E_STATE"

(env -u CARGO_TARGET_DIR cargo build --quiet)
bin="$root/target/debug/archscaffold"
export CARGO_TARGET_DIR="${ARCHSCAFFOLD_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/archscaffold/target}"

cleanup() {
    for ws in "$E2E_STATE"/kafka "$E2E_STATE"/sqs; do
        [ -x "$ws/deploy/local/down.sh" ] && bash "$ws/deploy/local/down.sh" || true
    done
    bash ci/brokers.sh stop kafka || true
    bash ci/brokers.sh stop sqs || true
}
trap cleanup EXIT

# Every process the harness started must be gone at the end (check 5). The pids are
# recorded as they start, since the stop scripts remove their pid files.
started="$E2E_STATE/started.pids"
record_started() {
    cat "$@" >>"$started"
}
assert_all_stopped() {
    local left=0 pid
    while read -r pid; do
        if kill -0 "$pid" 2>/dev/null; then
            echo "still running: pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null))" >&2
            left=1
        fi
    done <"$started"
    [ -s "$started" ] || { echo "no started process was recorded" >&2; left=1; }
    return $left
}

database_url() {
    local base="${DATABASE_URL%%\?*}"
    echo "${base%/*}/$1"
}

for bus in "${buses[@]}"; do
    echo "== e2e [$bus]: generate and build =="
    ws="$E2E_STATE/$bus"
    for db in shop_orders shop_billing; do
        psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"
    done
    "$bin" new shop --contexts orders,billing --bus "$bus" --out "$ws" --no-git >/dev/null
    (cd "$ws" && cargo build --workspace --quiet)

    echo "== e2e [$bus]: start broker and system =="
    bash ci/brokers.sh start "$bus"
    record_started "$E2E_STATE"/*.pid
    DATABASE_ADMIN_URL="$DATABASE_URL" KAFKA_BROKERS=127.0.0.1:9092 SQS_ENDPOINT=http://127.0.0.1:5000 \
        RUST_LOG=info bash "$ws/deploy/local/up.sh"
    record_started "$ws"/.run/*.pid

    echo "== e2e [$bus]: assertions =="
    status=0
    "$cache/venv/bin/python" ci/e2e.py --workspace "$ws" --bus "$bus" \
        --orders-db "$(database_url shop_orders)" || status=$?

    bash "$ws/deploy/local/down.sh"
    bash ci/brokers.sh stop "$bus"
    if [ $status -ne 0 ]; then
        echo "== e2e [$bus] failed; last log lines ==" >&2
        tail -n 30 "$ws/.run/orders.log" "$ws/.run/billing.log" >&2 || true
        exit $status
    fi
done

assert_all_stopped
echo "== e2e: every check passed and every process was stopped =="
