#!/usr/bin/env bash
# Generates workspaces with the freshly built generator and holds them to our own bar:
# `shop` (the README's default) and a spec with every field type get fmt, clippy
# -D warnings, build and their tests against PostgreSQL; 3- and 20-context systems must
# build. Every workspace shares one CARGO_TARGET_DIR, so dependencies compile once.
# Needs DATABASE_URL (ci/test sets it).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
work="$root/.work"
gen="$work/generated"
: "${DATABASE_URL:?set DATABASE_URL to a PostgreSQL admin URL (ci/setup-postgres.sh prints one)}"

step() { printf '\n== %s ==\n' "$*"; }

bash "$root/ci/setup-build-deps.sh"
step "build the generator"
(cd "$root" && env -u CARGO_TARGET_DIR cargo build --quiet)
bin="$root/target/debug/archscaffold"
export CARGO_TARGET_DIR="${ARCHSCAFFOLD_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/archscaffold/target}"
rm -rf "$gen"
mkdir -p "$gen"

check_workspace() {
    local dir=$1
    (
        cd "$dir"
        step "$(basename "$dir"): cargo fmt --check"
        cargo fmt --all -- --check
        step "$(basename "$dir"): cargo build"
        cargo build --workspace --all-targets
        step "$(basename "$dir"): cargo clippy -D warnings"
        cargo clippy --workspace --all-targets -- -D warnings
        step "$(basename "$dir"): cargo test (PostgreSQL)"
        cargo test --workspace
    )
}

step "generate shop (orders,billing)"
"$bin" new shop --contexts orders,billing --out "$gen/shop"
check_workspace "$gen/shop"

step "generate market (every field type, custom events, calls, sqs)"
"$bin" new market --spec "$root/tests/specs/rich.toml" --out "$gen/market" --no-git
check_workspace "$gen/market"

for n in 3 20; do
    names=$(seq -f "ctx%g" 1 "$n" | paste -sd, -)
    step "generate and build $n contexts"
    "$bin" new "big$n" --contexts "$names" --out "$gen/big$n" --no-git
    (cd "$gen/big$n" && cargo build --workspace)
done

step "generated workspaces: all checks passed"
