#!/usr/bin/env bash
# Makes a PostgreSQL server available on loopback and prints its admin URL on stdout.
# Idempotent: installs the Debian package only when no server is installed, creates and
# starts the cluster only when needed. If DATABASE_URL is already set, only checks it.
set -euo pipefail

log() { echo "setup-postgres: $*" >&2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

if [ -n "${DATABASE_URL:-}" ]; then
    log "using DATABASE_URL from the environment"
    echo "$DATABASE_URL"
    exit 0
fi

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    log "installing postgresql (apt)"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >&2
fi

version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" { found = 1 } END { exit !found }'; then
    log "creating cluster $version/main"
    $SUDO pg_createcluster "$version" main >&2
fi
port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" { print $3 }')
status=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" { print $4 }')
if [ "$status" != "online" ]; then
    log "starting cluster $version/main on port $port"
    $SUDO pg_ctlcluster "$version" main start >&2
fi

for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 1
done
pg_isready -q -h 127.0.0.1 -p "$port" || { log "server did not become ready on port $port"; exit 1; }

# Tests connect over TCP with a password (Debian's default for local TCP is scram).
$SUDO -u postgres psql -q -p "$port" -c "ALTER USER postgres PASSWORD 'postgres'" >&2 2>/dev/null ||
    su postgres -c "psql -q -p $port -c \"ALTER USER postgres PASSWORD 'postgres'\"" >&2
echo "postgres://postgres:postgres@127.0.0.1:${port}/postgres"
