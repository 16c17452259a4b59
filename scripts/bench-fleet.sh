#!/usr/bin/env bash
# Fleet benchmark (issue #14): COUNT simulated terminals heartbeating every INTERVAL_MS to a real
# fleet-server (release build) on this machine, the simulator on the same cores; 10 intervals,
# one of each anomaly x5 injected half-way. Prints the simulator's summary (rate, p50/p99
# latency), fleet-server CPU per heartbeat, and the score: injections alerted with their rule,
# alerts on terminals nothing was injected into (false positives).
# Usage: scripts/bench-fleet.sh [COUNT] [INTERVAL_MS] [INTERVALS]   (default 10000 6000 10: the
# rate of 100,000 terminals at 60 s, 1,667 heartbeats/s, for 10 intervals)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
COUNT="${1:-10000}"; INTERVAL="${2:-6000}"; INTERVALS="${3:-10}"
cargo build --release -q -p ca-server -p cli -p fleet -p terminal-sim
BIN=target/release
WORK="$(mktemp -d)"
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
GRPC=$(free_port); HTTP=$(free_port); FGRPC=$(free_port); FHTTP=$(free_port)
"$BIN/ca-server" init --data-dir "$WORK/ca" --grpc "127.0.0.1:$GRPC" --http "127.0.0.1:$HTTP" >/dev/null
"$BIN/ca-server" serve --config "$WORK/ca/ca-server.toml" >/dev/null 2>&1 &
until curl -sf "127.0.0.1:$HTTP/readyz" >/dev/null; do sleep 0.1; done
for p in "station station --manufacturers HSTM" "monitor monitor" "operator operator"; do
    set -- $p
    "$BIN/cactl" --config "$WORK/ca/cactl.toml" principal add --role "$1" --name "$2" ${3:+"$3" "$4"} --out "$WORK/$2" >/dev/null
done
"$BIN/fleet-server" init --data-dir "$WORK/fleet" --ca-identity "$WORK/monitor/identity.toml" \
    --grpc "127.0.0.1:$FGRPC" --http "127.0.0.1:$FHTTP" >/dev/null
sed -i "s/interval_seconds = 60/interval_seconds = $(( (INTERVAL + 999) / 1000 ))/" "$WORK/fleet/policies/fleet.toml"
"$BIN/fleet-server" serve --config "$WORK/fleet/fleet-server.toml" >/dev/null 2>&1 &
FLEET=$!
until curl -sf "127.0.0.1:$FHTTP/readyz" >/dev/null; do sleep 0.1; done
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
echo "load before: $(uptime)"
T0=$(ticks $FLEET)
"$BIN/terminal-sim" fleet --station "$WORK/station/identity.toml" --fleet "https://127.0.0.1:$FGRPC" \
    --fleet-tls-ca "$WORK/fleet/tls/ca.pem" --count "$COUNT" --interval-ms "$INTERVAL" \
    --duration-ms $((INTERVAL * INTERVALS)) --inject-after-ms $((INTERVAL * INTERVALS / 2)) \
    --clones 5 --relocations 5 --counterfeits 5 --tampers 5 --silences 5 > "$WORK/sim.jsonl"
T1=$(ticks $FLEET)
echo "load after:  $(uptime)"
RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$FLEET/status")
curl -sf "127.0.0.1:$FHTTP/metrics" | grep -E '^fleet_(crl|service_failures|ca_failures)' || true
"$BIN/cactl" --identity "$WORK/operator/identity.toml" --json alerts --fleet "https://127.0.0.1:$FGRPC" \
    --fleet-tls-ca "$WORK/fleet/tls/ca.pem" list --all --limit 1000000 > "$WORK/alerts.json"
python3 - "$WORK/sim.jsonl" "$WORK/alerts.json" $((T1 - T0)) "$(getconf CLK_TCK)" "$INTERVAL" "$RSS_KB" <<'PY'
import json, sys
events = [json.loads(l) for l in open(sys.argv[1])]
alerts = json.load(open(sys.argv[2]))
ticks, hz, interval_ms, rss_kb = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6] or 0)
s = next(e for e in events if e["event"] == "summary")
inj = [e for e in events if e["event"] == "inject"]
hit = sum(any(a["terminal"] == i["terminal"] and a["rule"] == i["kind"] for a in alerts) for i in inj)
injected = {i["terminal"] for i in inj}
false = [a for a in alerts if a["terminal"] not in injected]
cpu = ticks / hz
print(f"terminals {s['terminals']}  heartbeats {s['sent']} in {s['seconds']:.0f} s = {s['heartbeats_per_s']:.0f}/s  "
      f"p50 {s['p50_ms']:.1f} ms  p99 {s['p99_ms']:.1f} ms  p99 after the first interval "
      f"{s.get('p99_after_first_interval_ms', 0):.1f} ms")
us = 1e6 * cpu / max(s['sent'], 1)
print(f"fleet-server CPU {cpu:.1f} s = {us:.0f} us per heartbeat, peak RSS {rss_kb / 1024:.0f} MB; "
      f"1,000,000 terminals at this interval: {1e6 / (interval_ms / 1000) * us / 1e6:.1f} cores")
# Detection delay: from the injection to the first alert of its rule on its terminal, in intervals.
# By design relocation needs sustained_heartbeats (3) and silence missed_intervals (3) + a sweep.
delays = {}
for i in inj:
    firsts = [a['first_ms'] for a in alerts if a['terminal'] == i['terminal'] and a['rule'] == i['kind']]
    if firsts and 'at_ms' in i:
        delays.setdefault(i['kind'], []).append((min(firsts) - i['at_ms']) / interval_ms)
for kind, d in sorted(delays.items()):
    print(f"  {kind:12} found after {min(d):.2f}..{max(d):.2f} intervals ({len(d)} injected)")
from collections import Counter
print(f"injections alerted with their rule: {hit}/{len(inj)}   alerts on other terminals: {len(false)} "
      f"{dict(Counter(a['rule'] for a in false))}   refused: {s['refused']}")
PY
