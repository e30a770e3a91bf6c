#!/usr/bin/env bash
# Installs what the end-to-end harness needs, idempotently, under one cache directory
# (default ~/.cache/archscaffold; override with ARCHSCAFFOLD_CACHE):
#   tools/bin/tansu   the Kafka-protocol broker, from crates.io (15-20 min to compile once)
#   venv/             moto[server] (SQS endpoint), grpcio + grpcio-tools (a gRPC client in
#                     another process), confluent-kafka (librdkafka 2.x) and boto3, to
#                     inject duplicate and poison messages; pyjwt (tokens for the auth
#                     checks), schemathesis (fuzzes the gateway against its OpenAPI) and
#                     prometheus-client (its parser reads every /metrics) and
#                     opentelemetry-proto (the OTLP definitions ci/otlp_receiver.py decodes),
#                     playwright, axe-playwright-python and pytest (which runs
#                     ci/e2e_console.py: it drives the console in Debian's chromium,
#                     installed here too, as Playwright's own download is not reachable)
#   oidc/             oidc-provider (npm), the OpenID provider of ci/e2e_oidc.py, beside a
#                     copy of ci/oidc/provider.mjs (node resolves packages from the script)
# Prints the cache directory on stdout.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache="${ARCHSCAFFOLD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/archscaffold}"
log() { echo "setup-e2e-tools: $*" >&2; }
mkdir -p "$cache/tools"

if [ ! -x "$cache/tools/bin/tansu" ]; then
    log "installing tansu from crates.io (slow the first time)"
    cargo install tansu --locked --features dynostore,postgres --root "$cache/tools" >&2
fi

if [ ! -x "$cache/venv/bin/moto_server" ] || [ ! -x "$cache/venv/bin/schemathesis" ] ||
    ! "$cache/venv/bin/python" -c "import grpc_tools, confluent_kafka, boto3, jwt, prometheus_client, opentelemetry.proto, playwright, axe_playwright_python, pytest" 2>/dev/null; then
    log "installing the Python tools into $cache/venv"
    python3 -m venv "$cache/venv" >&2
    "$cache/venv/bin/pip" install --quiet --disable-pip-version-check \
        "moto[server]" grpcio grpcio-tools confluent-kafka boto3 pyjwt schemathesis \
        prometheus-client opentelemetry-proto playwright==1.65.3 axe-playwright-python==0.1.8 pytest >&2
fi

command -v chromium >/dev/null || {
    log "installing chromium (the console's browser tests)"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
}

oidc="$cache/oidc"
if ! cmp -s "$root/ci/oidc/package.json" "$oidc/package.json" || [ ! -d "$oidc/node_modules/oidc-provider" ]; then
    command -v npm >/dev/null || {
        log "installing Node.js and npm (the OpenID provider runs on it)"
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >&2
    }
    log "installing oidc-provider (npm) into $oidc"
    mkdir -p "$oidc"
    cp "$root/ci/oidc/package.json" "$oidc/package.json"
    (cd "$oidc" && npm install --silent --no-audit --no-fund >&2)
fi
cp "$root/ci/oidc/provider.mjs" "$oidc/provider.mjs"

command -v redis-server >/dev/null || {
    log "installing redis-server (the gateway's cache)"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
}

command -v psql >/dev/null || {
    log "installing the PostgreSQL client"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >&2
}
echo "$cache"
