#!/usr/bin/env bash
# Holds what the generator writes besides Rust to real validators, installed from
# registries by ci/setup-validators.sh: docker-compose.yml against the Compose
# specification's schema, the Kubernetes manifests against the Kubernetes 1.37 schemas
# (strict), the GitHub workflow with actionlint and its schema, the alerting rules and
# the Prometheus config with promtool, every Mermaid diagram with Mermaid's parser, and
# the whole tree with a secret scanner, which must find nothing; and compose-env.sh must write
# every secret the compose file requires. Each validator is first
# shown a copy with one planted defect and must reject it, so a validator that passes
# everything cannot pass here.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cache=$(bash ci/setup-validators.sh)
bin="$cache/validators/bin"
cp ci/mermaid-parse.mjs "$cache/node/mermaid-parse.mjs"
work="$root/.work/validated"
rm -rf "$work"
mkdir -p "$work"

step() { printf '\n== %s ==\n' "$*"; }

(env -u CARGO_TARGET_DIR cargo build --quiet)
gen="$root/target/debug/archscaffold"
"$gen" new shop --contexts orders,billing --out "$work/shop" --no-git >/dev/null
"$gen" new market --spec tests/specs/rich.toml --out "$work/market" --no-git >/dev/null
"$gen" new lifecycle --spec examples/shop.toml --out "$work/lifecycle" --no-git >/dev/null
"$gen" new checkout --spec examples/checkout.toml --out "$work/checkout" --no-git >/dev/null

compose() { "$bin/check-jsonschema" --builtin-schema vendor.compose-spec "$1/deploy/docker-compose.yml"; }
k8s() { "$bin/kubernetes-validate" --strict --kubernetes-version 1.37.0 "$1"/deploy/k8s/*.yaml; }
workflow() {
    "$bin/actionlint" -no-color "$1/.github/workflows/ci.yml" &&
        "$bin/check-jsonschema" --builtin-schema vendor.github-workflows "$1/.github/workflows/ci.yml"
}
rules() { promtool check rules "$1/deploy/alerts.yml" && promtool check config "$1/deploy/prometheus.yml"; }
# The rules do what they say: promtool unit tests (ci/alerts-<ws>.test.yml) feed synthetic
# series to shop's and checkout's rules; SLO breaches and a saga waiting for an operator
# must fire, the rest must not.
rules_fire() {
    local dir="$work/alerts-test-$(basename "$1")" tests="ci/alerts-$(basename "$1").test.yml"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$1/deploy/alerts.yml" "$tests" "$dir/"
    promtool test rules "$dir/$(basename "$tests")"
}
mermaid() { node "$cache/node/mermaid-parse.mjs" "$1"/docs/*.md; }
# deploy/compose-env.sh writes every variable docker-compose.yml requires (`${VAR:?...}`),
# and a second run adds nothing. On a copy: the .env it writes holds real secrets, which
# the secret scan of the tree must not meet.
compose_env() {
    local copy="$1.compose-env" missing
    rm -rf "$copy"
    cp -r "$1" "$copy"
    (cd "$copy" && bash deploy/compose-env.sh >/dev/null && bash deploy/compose-env.sh) | grep -q ": 0 setting(s) added" ||
        { echo "a second compose-env.sh run added settings"; return 1; }
    missing=$(grep -o '\${[A-Z0-9_]*:?' "$copy/deploy/docker-compose.yml" | sed 's/^\${//; s/:?$//' | sort -u |
        while read -r var; do grep -q "^$var=" "$copy/deploy/.env" || echo "$var"; done)
    rm -rf "$copy"
    [ -z "$missing" ] || { echo "docker-compose.yml requires what compose-env.sh does not write:" $missing; return 1; }
    echo "compose-env.sh writes every variable docker-compose.yml requires"
}
secrets() {
    (cd "$1" && "$bin/detect-secrets" scan --all-files .) >"$1.secrets.json" || return 1
    python3 - "$1.secrets.json" <<'PY'
import json, sys

results = json.load(open(sys.argv[1]))["results"]
for path, found in results.items():
    for secret in found:
        print(f"{path}:{secret['line_number']}: {secret['type']}")
if results:
    sys.exit(1)
print("detect-secrets: nothing found")
PY
}

# Plants one defect per validator into a copy of a workspace; the validator must fail.
must_reject() {
    local name=$1 check=$2 plant=$3
    local copy="$work/defect-$name"
    rm -rf "$copy"
    cp -r "$work/shop" "$copy"
    (cd "$copy" && eval "$plant")
    if "$check" "$copy" >"$copy.log" 2>&1; then
        echo "FAIL $name: accepted a planted defect ($plant)"
        return 1
    fi
    echo "ok   $name rejects a planted defect"
}

step "each validator rejects a planted defect"
must_reject compose compose "sed -i '0,/condition: service_healthy/s//condition: service_happy/' deploy/docker-compose.yml"
must_reject compose-env compose_env "sed -i '/ensure LINK_GATEWAY_ORDERS_KEY/d' deploy/compose-env.sh"
must_reject k8s k8s "sed -i '0,/replicas: 2/s//replicas: two/' deploy/k8s/orders.yaml"
must_reject workflow workflow "sed -i 's/github.ref }}/github.reff }}/' .github/workflows/ci.yml"
must_reject rules rules "sed -i '0,/> 0.01/s//> sum(rate(/' deploy/alerts.yml"
must_reject rules-fire rules_fire "sed -i '0,/> 0.01/s//> 0.2/' deploy/alerts.yml"
must_reject mermaid mermaid "sed -i 's/    clients -->|/    clients -->|| -->/' docs/architecture.md"
# A made-up AWS access key id (AKIA and 16 characters), assembled here so this script
# itself holds none.
must_reject secrets secrets "echo 'aws_access_key_id = AKIA''Q3ZP7WJ2M5XK8RNV' >>deploy/compose-env.sh"

for ws in shop market lifecycle checkout; do
    dir="$work/$ws"
    step "$ws: docker-compose.yml against the Compose specification schema"
    compose "$dir"
    step "$ws: deploy/compose-env.sh provides what docker-compose.yml requires"
    compose_env "$dir"
    step "$ws: Kubernetes manifests (1.37, strict)"
    k8s "$dir"
    step "$ws: GitHub workflow (actionlint, schema)"
    workflow "$dir"
    step "$ws: alerting rules and Prometheus config (promtool)"
    rules "$dir"
    if [ -f "ci/alerts-$ws.test.yml" ]; then
        step "$ws: the alerting rules fire when they should and only then (promtool test rules)"
        rules_fire "$dir"
    fi
    step "$ws: Mermaid diagrams"
    mermaid "$dir" | tee "$dir.mermaid.log"
    if [ "$ws" = lifecycle ]; then
        # Both aggregates with states get their lifecycle diagram.
        [ "$(grep -c ' stateDiagram' "$dir.mermaid.log")" = 2 ] || { echo "FAIL: expected 2 state diagrams" >&2; exit 1; }
    fi
    if [ "$ws" = checkout ]; then
        # The saga's sequence diagram parses, beside the lifecycles'.
        grep -q ' sequence' "$dir.mermaid.log" || { echo "FAIL: no sequence diagram parsed" >&2; exit 1; }
    fi
    step "$ws: no secret values (detect-secrets)"
    secrets "$dir"
done

step "generated deployment files and docs: every validator passed"
