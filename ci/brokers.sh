#!/usr/bin/env bash
# Starts or stops a broker for the end-to-end harness, on loopback only:
#   brokers.sh start|stop kafka   the tansu broker on 127.0.0.1:9092 (memory storage)
#   brokers.sh start|stop sqs     moto's SQS endpoint on 127.0.0.1:5000
#   brokers.sh start|stop redis   redis-server on 127.0.0.1:6390, in memory only (the
#                                 gateway's cache; its own port, so a Redis the machine
#                                 already runs is left alone)
#   brokers.sh log <server>       prints the path of that server's log
# Pid files and logs go to $E2E_STATE (default .work/e2e). Starting a running broker and
# stopping a stopped one are no-ops.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache="${ARCHSCAFFOLD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/archscaffold}"
state="${E2E_STATE:-$root/.work/e2e}"
mkdir -p "$state"
action=$1
bus=$2

case "$bus" in
kafka) name=tansu port=9092
    # tansu logs every span's start and end from RUST_LOG=info up (the harness exports info
    # for the services): its own level, warnings unless TANSU_LOG says. It reads
    # OTEL_EXPORTER_OTLP_ENDPOINT too (the services' span receiver): not its business.
    cmd=(env -u OTEL_EXPORTER_OTLP_ENDPOINT RUST_LOG=${TANSU_LOG:-warn} "$cache/tools/bin/tansu" broker --listener-url tcp://127.0.0.1:9092
        --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/) ;;
sqs) name=moto port=5000
    cmd=("$cache/venv/bin/moto_server" -H 127.0.0.1 -p 5000) ;;
redis) name=redis port=6390
    cmd=(redis-server --bind 127.0.0.1 --port 6390 --save "" --appendonly no) ;;
*) echo "brokers.sh: unknown server '$bus' (kafka, sqs or redis)" >&2; exit 2 ;;
esac
pid_file="$state/$name.pid"
log="$state/$name.log"

alive() { [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

case "$action" in
start)
    alive && exit 0
    if listening; then
        echo "brokers.sh: port $port is already taken by another process" >&2
        exit 1
    fi
    "${cmd[@]}" >>"$log" 2>&1 &
    echo $! >"$pid_file"
    for _ in $(seq 1 300); do
        listening && { echo "$name listening on 127.0.0.1:$port" >&2; exit 0; }
        alive || break
        sleep 0.1
    done
    echo "brokers.sh: $name did not start; see $log" >&2
    tail -n 20 "$log" >&2
    exit 1 ;;
stop)
    if alive; then
        pid=$(cat "$pid_file")
        kill -TERM "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        wait "$pid" 2>/dev/null || true
        echo "$name stopped" >&2
    fi
    rm -f "$pid_file" ;;
log) echo "$log" ;;
*) echo "brokers.sh: unknown action '$action' (start, stop or log)" >&2; exit 2 ;;
esac
