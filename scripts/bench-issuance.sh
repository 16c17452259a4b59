#!/usr/bin/env bash
# End-to-end issuance on each registry backend (issue 15): `ca-server bench` (32 connections,
# every reply after its own durable commit) against the release build of the real server, once
# on the embedded redb registry and once on a PostgreSQL server of its own (initdb + pg_ctl in a
# temp dir, on a free port, stopped at the end; the init's registry copied in with
# `ca-server migrate --from`). Prints `ca-server bench`'s table per backend and run, with the
# load average before it.
# Usage: scripts/bench-issuance.sh [RUNS=1] [COUNT=3000]   (HSCA_BIN=DIR uses binaries built there)
# HSCA_PG_STATS=1: after each PostgreSQL run, the CPU ticks of the postgres backends and of the
# server (/proc/PID/stat) and the most called statements (pg_stat_statements), for profiling.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
RUNS=${1:-1}
COUNT=${2:-3000}
if [ -z "${HSCA_BIN:-}" ]; then
    cargo build --release --bins -q
    HSCA_BIN=$PWD/target/release
fi
B=$HSCA_BIN
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL is not installed (apt-get install -y postgresql)" >&2; exit 1; }
W="$(mktemp -d)"
chmod 755 "$W"
PGDATA="$W/pg"
cleanup() {
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    [ -f "$PGDATA/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" stop -D "$PGDATA" -m immediate >/dev/null 2>&1
    rm -rf "$W"
}
trap cleanup EXIT

# One CA on BACKEND: init, (PostgreSQL: point the config at it and copy the registry in), serve,
# add a station, bench; then stop the server.
bench() {
    local backend=$1 dir="$W/ca-$1" grpc http spid
    grpc=$(free_port); http=$(free_port)
    "$B/ca-server" init --data-dir "$dir" --grpc "127.0.0.1:$grpc" --http "127.0.0.1:$http" >/dev/null
    if [ "$backend" = postgres ]; then
        local db="hsca_$RANDOM"
        runuser -u postgres -- "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" "$db"
        python3 - "$dir/ca-server.toml" "postgres://postgres@127.0.0.1:$PGPORT/$db" <<'PY'
import re, sys
path, url = sys.argv[1], sys.argv[2]
text = open(path).read()
head, sep, rest = text.partition("[registry]")
body, nxt, tail = rest.partition("\n[")
body = "\n".join(l for l in body.split("\n") if not re.match(r"\s*(path|url)\s*=", l))
open(path, "w").write(head + sep + body.rstrip("\n") + f'\nurl = "{url}"\n' + (nxt + tail if nxt else ""))
PY
        "$B/ca-server" migrate --config "$dir/ca-server.toml" --from "$dir/registry.redb" >/dev/null
    fi
    "$B/ca-server" serve --config "$dir/ca-server.toml" >"$W/server-$backend.log" 2>&1 &
    spid=$!
    until curl -sf "127.0.0.1:$http/readyz" -o /dev/null; do
        kill -0 "$spid" 2>/dev/null || { cat "$W/server-$backend.log" >&2; exit 1; }
        sleep 0.1
    done
    "$B/cactl" --config "$dir/cactl.toml" principal add --role station --name "s-$backend" --manufacturers HSTM \
        --out "$W/s-$backend" >/dev/null
    for r in $(seq 1 "$RUNS"); do
        local pg0=0 ca0=0
        if [ -n "${HSCA_PG_STATS:-}" ] && [ "$backend" = postgres ]; then
            pg0=$(pg_ticks); ca0=$(awk '{print $14 + $15}' "/proc/$spid/stat")
            runuser -u postgres -- psql -h 127.0.0.1 -p "$PGPORT" -d "$db" -qc \
                "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()" >/dev/null
        fi
        echo
        echo "$backend, run $r, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
        "$B/ca-server" bench --config "$dir/ca-server.toml" --identity "$W/s-$backend/identity.toml" --count "$COUNT"
        if [ -n "${HSCA_PG_STATS:-}" ] && [ "$backend" = postgres ]; then
            echo "CPU ticks: postgres backends $(( $(pg_ticks) - pg0 )), ca-server $(( $(awk '{print $14 + $15}' "/proc/$spid/stat") - ca0 ))"
            runuser -u postgres -- psql -h 127.0.0.1 -p "$PGPORT" -d "$db" -c "SELECT calls,
                round(mean_exec_time::numeric, 3) AS mean_ms, left(regexp_replace(query, '\s+', ' ', 'g'), 100) AS query
                FROM pg_stat_statements ORDER BY calls DESC LIMIT 30"
        fi
    done
    kill "$spid"; wait "$spid" 2>/dev/null || true
}

# The CPU ticks (user + system) of every postgres backend serving a client.
pg_ticks() {
    local p t=0
    for p in $(pgrep -P "$(head -1 "$PGDATA/postmaster.pid")" -f "postgres: postgres"); do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done
    echo "$t"
}
PGSTATS=""
[ -n "${HSCA_PG_STATS:-}" ] && PGSTATS="-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"

mkdir -p "$PGDATA" && touch "$PGDATA.log" && chown postgres "$PGDATA" "$PGDATA.log"
PGPORT=$(free_port)
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA" -A trust -U postgres >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" start -D "$PGDATA" -l "$PGDATA.log" -w \
    -o "-p $PGPORT -k $PGDATA -c listen_addresses=127.0.0.1 $PGSTATS" >/dev/null

bench redb
bench postgres
