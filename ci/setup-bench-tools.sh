#!/usr/bin/env bash
# Installs and sets up what the benchmark (ci/bench) needs beyond the end-to-end tools,
# idempotently: wrk (the HTTP load generator, Debian package), pgbench (ships with the
# PostgreSQL server ci/setup-postgres.sh installs), matplotlib in the harness venv (the
# plot), and on the local PostgreSQL cluster track_commit_timestamp (the event-latency
# figure reads commit timestamps) and pg_stat_statements (what the services send per
# request); turning them on needs a restart, done once.
# Needs DATABASE_URL and the venv of ci/setup-e2e-tools.sh (its path as $1).
set -euo pipefail

cache=$1
log() { echo "setup-bench-tools: $*" >&2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

command -v wrk >/dev/null || {
    log "installing wrk"
    $SUDO apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >&2
}
command -v pgbench >/dev/null || {
    log "pgbench is missing: install the PostgreSQL server package (ci/setup-postgres.sh does)"
    exit 1
}
"$cache/venv/bin/python" -c "import matplotlib" 2>/dev/null || {
    log "installing matplotlib into $cache/venv"
    "$cache/venv/bin/pip" install --quiet --disable-pip-version-check matplotlib >&2
}

ready() {
    [ "$(psql "$DATABASE_URL" -XAtqc 'SHOW track_commit_timestamp')" = "on" ] &&
        psql "$DATABASE_URL" -XAtqc 'SHOW shared_preload_libraries' | grep -q pg_stat_statements
}
if ! ready; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    if ! pg_lsclusters -h 2>/dev/null | awk -v v="$version" '$1 == v && $2 == "main" { found = 1 } END { exit !found }'; then
        log "the server at DATABASE_URL needs track_commit_timestamp = on and pg_stat_statements in shared_preload_libraries; set them there and restart it"
        exit 1
    fi
    log "turning on track_commit_timestamp and pg_stat_statements (restarts cluster $version/main)"
    psql "$DATABASE_URL" -XAtqc "ALTER SYSTEM SET track_commit_timestamp = on" >&2
    preload=$(psql "$DATABASE_URL" -XAtqc 'SHOW shared_preload_libraries')
    case ",$preload," in
        *,pg_stat_statements,*) ;;
        ,,) psql "$DATABASE_URL" -XAtqc "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" >&2 ;;
        *) psql "$DATABASE_URL" -XAtqc "ALTER SYSTEM SET shared_preload_libraries = '$preload,pg_stat_statements'" >&2 ;;
    esac
    $SUDO pg_ctlcluster "$version" main restart >&2
    for _ in $(seq 1 30); do
        psql "$DATABASE_URL" -XAtqc "SELECT 1" >/dev/null 2>&1 && break
        sleep 1
    done
    ready || { log "track_commit_timestamp or pg_stat_statements is still off after the restart"; exit 1; }
fi
