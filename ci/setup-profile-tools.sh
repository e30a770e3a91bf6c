#!/usr/bin/env bash
# Installs what `ci/bench --try --phases profile` needs, idempotently: perf (Debian's
# linux-perf) and inferno's perf collapser and flame graph drawer (cargo install, into
# the tools cache given as $1; about 2 minutes once).
set -euo pipefail

cache=$1
log() { echo "setup-profile-tools: $*" >&2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

command -v perf >/dev/null || {
    log "installing perf (linux-perf)"
    $SUDO apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq linux-perf >&2
}
[ -x "$cache/tools/bin/inferno-flamegraph" ] || {
    log "installing inferno 0.12.3 (cargo install, once)"
    cargo install inferno --version 0.12.3 --locked --root "$cache/tools" >&2
}
