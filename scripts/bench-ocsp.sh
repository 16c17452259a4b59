#!/usr/bin/env bash
# OCSP load bench (issue 17) on the release build of the real server: answers per second and the
# server's CPU per answer for pre-signed answers (GET and POST without a nonce) and for requests
# with a nonce, each freshly signed through the HSM and checked (`fresh_signatures_per_second`
# lifted). wrk on the same cores, keep-alive, 2 threads, 64 connections, 10 s per row; prints a
# table per run with the load average before it.
# Usage: scripts/bench-ocsp.sh [RUNS=3]   (HSCA_BIN=DIR uses binaries already built there;
#   ROWS="get post fresh" picks rows; PERF=FILE records `perf record -g` of the server during
#   the fresh rows into FILE, PERF_ARGS="--call-graph dwarf -F 999" to change its options)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
RUNS=${1:-3}
ROWS=${ROWS:-get post fresh}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
if [ -z "${HSCA_BIN:-}" ]; then
    cargo build --release --bins -q
    HSCA_BIN=$PWD/target/release
fi
B=$HSCA_BIN
W="$(mktemp -d)"
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
GRPC=$(free_port); HTTP=$(free_port)
"$B/ca-server" init --data-dir "$W/ca" --grpc "127.0.0.1:$GRPC" --http "127.0.0.1:$HTTP" >/dev/null
sed -i 's/^fresh_signatures_per_second = .*/fresh_signatures_per_second = 1000000/' "$W/ca/ca-server.toml"
"$B/ca-server" serve --config "$W/ca/ca-server.toml" >"$W/server.log" 2>&1 &
SPID=$!
until curl -sf "127.0.0.1:$HTTP/crl/issuing.crl" -o /dev/null; do sleep 0.1; done
"$B/cactl" --config "$W/ca/cactl.toml" principal add --role station --name s --manufacturers HSTM --out "$W/s" >/dev/null
cd "$W"
s=$(serial HSTM01261100000)
openssl genpkey -algorithm SM2 -out t.key 2>/dev/null
openssl req -new -key t.key -sm3 -sigopt distid:1234567812345678 -subj "/CN=$s/serialNumber=$s" -out t.csr
"$B/cactl" --identity s/identity.toml issue --csr t.csr --serial "$s" --class II --out t.pem >/dev/null
openssl ocsp -issuer ca/certs/issuing.pem -cert t.pem -no_nonce -reqout plain.req >/dev/null 2>&1
openssl ocsp -issuer ca/certs/issuing.pem -cert t.pem -nonce -reqout nonce.req >/dev/null 2>&1
for kind in plain nonce; do
    cat >"$kind.lua" <<LUA
local f = io.open("$kind.req", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/ocsp-request"
LUA
done
GETPATH=$(python3 -c 'import base64,urllib.parse;print(urllib.parse.quote(base64.b64encode(open("plain.req","rb").read()).decode(),safe=""))')
curl -s "127.0.0.1:$HTTP/ocsp/$GETPATH" -o /dev/null
metric() { curl -s "127.0.0.1:$HTTP/metrics" | awk -v m="$1" '$1==m{print $2}'; }
cpu() { awk '{print $14+$15}' "/proc/$SPID/stat"; }

FRESH="fresh, POST with a nonce (signed + checked each)"

# One row: what, then wrk's arguments.
row() {
    local what=$1; shift
    local c0 n0 f0 out rps p50 c1 n1 f1 errs
    c0=$(cpu); n0=$(metric hsca_ocsp_requests_total); f0=$(metric hsca_ocsp_presigned_total)
    local perf=
    if [ -n "${PERF:-}" ] && [ "$what" = "$FRESH" ]; then
        perf record ${PERF_ARGS:--g} -o "$PERF" -p "$SPID" 2>/dev/null & perf=$!
    fi
    out=$(wrk -t2 -c64 -d10s --latency "$@")
    if [ -n "$perf" ]; then kill -INT "$perf"; wait "$perf" || true; fi
    c1=$(cpu); n1=$(metric hsca_ocsp_requests_total); f1=$(metric hsca_ocsp_presigned_total)
    rps=$(awk '/Requests\/sec/{printf "%.0f", $2}' <<<"$out")
    p50=$(awk '$1=="50%"{print $2}' <<<"$out")
    errs=$(awk '/Non-2xx|Socket errors/{print}' <<<"$out" | tr '\n' ' ')
    printf '| %s | %s | %s | %s µs | %s of %s | %s |\n' "$what" "$rps" "$p50" \
        "$(( (c1 - c0) * 1000000 / $(getconf CLK_TCK) / (n1 - n0 > 0 ? n1 - n0 : 1) ))" \
        "$((f1 - f0))" "$((n1 - n0))" "${errs:-none}"
}

for r in $(seq 1 "$RUNS"); do
    echo
    echo "run $r, load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "| OCSP requests (wrk -t2 -c64 -d10s, keep-alive) | answers/s | p50 | server CPU per answer | from the cache | errors |"
    echo "|---|---|---|---|---|---|"
    case " $ROWS " in *" get "*) row "pre-signed, GET" "http://127.0.0.1:$HTTP/ocsp/$GETPATH" ;; esac
    case " $ROWS " in *" post "*) row "pre-signed, POST without a nonce" -s plain.lua "http://127.0.0.1:$HTTP/ocsp" ;; esac
    case " $ROWS " in *" fresh "*) row "$FRESH" -s nonce.lua "http://127.0.0.1:$HTTP/ocsp" ;; esac
done
echo
echo "$(curl -s "127.0.0.1:$HTTP/metrics" | grep '^hsca_ocsp_nonces_ignored_total')"
