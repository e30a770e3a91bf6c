#!/usr/bin/env bash
# Installs, idempotently, what the benchmark's peer phase (ci/bench_peer.py) needs: Loco's
# generator (`loco`) and sea-orm-cli, which `cargo loco generate scaffold` runs to write
# the entities. Pinned to the versions measured (loco 1.2.0 generates apps on sea-orm 2).
# Into <cache>/tools/bin, beside tansu; prints that directory. Compiling both takes about
# 10 minutes on 2 cores, once.
set -euo pipefail

cache=$1
tools="$cache/tools"
log() { echo "setup-peer-tools: $*" >&2; }

install() {
    local crate=$1 version=$2 binary=$3
    if [ -x "$tools/bin/$binary" ] && "$tools/bin/$binary" --version 2>/dev/null | grep -q " $version$"; then
        return
    fi
    log "installing $crate $version (cargo install, once)"
    cargo install --quiet --locked --force --root "$tools" "$crate@$version" >&2
}

install loco 1.2.0 loco
install sea-orm-cli 2.0.4 sea-orm-cli
echo "$tools/bin"
