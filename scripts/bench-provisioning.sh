#!/usr/bin/env bash
# Provisioning benchmark (issue #5): wall time per terminal from HELLO to LOCK (+ Confirm), with
# the default simulated secure-element latencies and with none (the station's own overhead), for
# 1 and 8 ports at once. Release build; real ca-server, terminal-sim on ptys, provisioner.
# Usage: scripts/bench-provisioning.sh [rounds]   (default 3 rounds per row; prints a table)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROUNDS="${1:-3}"
cargo build --release --bins -q
BIN=target/release
WORK="$(mktemp -d)"
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
GRPC=$(free_port); HTTP=$(free_port)
"$BIN/ca-server" init --data-dir "$WORK/ca" --grpc "127.0.0.1:$GRPC" --http "127.0.0.1:$HTTP" >/dev/null
"$BIN/ca-server" serve --config "$WORK/ca/ca-server.toml" >/dev/null 2>&1 &
until curl -sf "127.0.0.1:$HTTP/readyz" >/dev/null; do sleep 0.1; done
"$BIN/cactl" --config "$WORK/ca/cactl.toml" principal add --role station --name bench-station \
    --manufacturers HSTM --out "$WORK/station" >/dev/null


n=0
row() { # label ports sim-args...
    local label="$1" ports="$2"; shift 2
    local per=() walls=()
    for r in $(seq 1 "$ROUNDS"); do
        local links=() pids=()
        for i in $(seq 1 "$ports"); do
            n=$((n + 1))
            local s; s=$(serial "$(printf 'HSTM012611%05d' "$n")")
            "$BIN/terminal-sim" --serial "$s" --state-dir "$WORK/se-$n" --link "$WORK/tty-$n" "$@" > "$WORK/sim-$n.out" &
            pids+=($!); links+=(--port "$WORK/tty-$n")
        done
        for i in $(seq $((n - ports + 1)) "$n"); do until [ -s "$WORK/sim-$i.out" ]; do sleep 0.02; done; done
        local t0 t1; t0=$(date +%s%N)
        "$BIN/provisioner" run --identity "$WORK/station/identity.toml" --report "$WORK/r.json" "${links[@]}" >/dev/null
        t1=$(date +%s%N)
        walls+=($(( (t1 - t0) / 1000000 )))
        per+=($(python3 -c 'import json,sys;r=json.load(open(sys.argv[1]));print(" ".join(str(x["duration_ms"]) for x in r if x["outcome"]=="provisioned"))' "$WORK/r.json"))
        kill "${pids[@]}" 2>/dev/null || true
    done
    python3 - "$label" "$ports" "${#per[@]}" "${per[@]}" -- "${walls[@]}" <<'PY'
import sys, statistics as st
a = sys.argv[1:]; label, ports, k = a[0], int(a[1]), int(a[2])
per = [int(x) for x in a[3:3 + k]]; walls = [int(x) for x in a[4 + k:]]
print(f"| {label} | {ports} | {len(per)} | {st.median(per)} | {max(per)} | {st.median(walls)} |")
PY
}

echo "| secure element | ports | terminals | per terminal p50 (ms) | per terminal max (ms) | batch wall p50 (ms) |"
echo "|---|---|---|---|---|---|"
row "smart-card latencies (default)" 1
row "smart-card latencies (default)" 8
row "zero latency (station overhead)" 1 --keygen-ms 0 --sign-ms 0 --write-bytes-per-s 0
row "zero latency (station overhead)" 8 --keygen-ms 0 --sign-ms 0 --write-bytes-per-s 0
