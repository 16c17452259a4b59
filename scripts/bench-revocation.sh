#!/usr/bin/env bash
# Revocation benchmarks (issue #6), on the release build of the real server:
#   1. OCSP responses per second from the pre-signed cache (wrk, GET, 2 threads, 64 connections),
#      and fresh answers to requests with a nonce (POST, the budget lifted to 1,000,000/s);
#   2. revocation-to-visible latency: from `cactl revoke` starting to the OCSP answer and to the
#      certificate's CRL partition (and the full CRL) showing it;
#   3. CRL generation time and size for 100,000 and 1,000,000 entries (pki crl-scale example).
# Usage: scripts/bench-revocation.sh   (installs wrk with apt-get when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --bins -q
B=$PWD/target/release
W="$(mktemp -d)"
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
GRPC=$(free_port); HTTP=$(free_port)
"$B/ca-server" init --data-dir "$W/ca" --grpc "127.0.0.1:$GRPC" --http "127.0.0.1:$HTTP" >/dev/null
# Lifted so that section 1 measures signing, not the budget (answers without a nonce are unaffected).
sed -i 's/^fresh_signatures_per_second = .*/fresh_signatures_per_second = 1000000/' "$W/ca/ca-server.toml"
"$B/ca-server" serve --config "$W/ca/ca-server.toml" >"$W/server.log" 2>&1 &
SPID=$!
until curl -sf "127.0.0.1:$HTTP/crl/issuing.crl" -o /dev/null; do sleep 0.1; done
"$B/cactl" --config "$W/ca/cactl.toml" principal add --role station --name s --manufacturers HSTM --out "$W/s" >/dev/null

cd "$W"
N=10
for i in $(seq 0 $N); do
    s=$(serial "$(printf 'HSTM012611%05d' "$i")")
    openssl genpkey -algorithm SM2 -out "t$i.key" 2>/dev/null
    openssl req -new -key "t$i.key" -sm3 -sigopt distid:1234567812345678 -subj "/CN=$s/serialNumber=$s" -out "t$i.csr"
    "$B/cactl" --identity s/identity.toml issue --csr "t$i.csr" --serial "$s" --class II --out "t$i.pem" >/dev/null
    openssl ocsp -issuer ca/certs/issuing.pem -cert "t$i.pem" -no_nonce -reqout "t$i.req" >/dev/null 2>&1
done

echo "## OCSP throughput (pre-signed answers, GET, wrk -t2 -c64 -d10s, client on the same 2 cores)"
GETPATH=$(python3 -c 'import base64,sys,urllib.parse;print(urllib.parse.quote(base64.b64encode(open("t0.req","rb").read()).decode(),safe=""))')
curl -s "127.0.0.1:$HTTP/ocsp/$GETPATH" -o /dev/null
wrk -t2 -c64 -d10s "http://127.0.0.1:$HTTP/ocsp/$GETPATH" | grep -E "Requests/sec|Latency|requests in"
curl -s "127.0.0.1:$HTTP/metrics" | grep -E "^hsca_ocsp"

echo
echo "## OCSP with a nonce (fresh signature + check each; wrk -t2 -c64 -d10s POST; server CPU from /proc)"
openssl ocsp -issuer ca/certs/issuing.pem -cert t0.pem -nonce -reqout nonce.req >/dev/null 2>&1
cat >post.lua <<'LUA'
local f = io.open("nonce.req", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/ocsp-request"
LUA
cpu0=$(awk '{print $14+$15}' "/proc/$SPID/stat")
n0=$(curl -s "127.0.0.1:$HTTP/metrics" | awk '/^hsca_ocsp_requests_total/{print $2}')
wrk -t2 -c64 -d10s -s post.lua "http://127.0.0.1:$HTTP/ocsp" | grep -E "Requests/sec|Latency|requests in|Non-2xx"
cpu1=$(awk '{print $14+$15}' "/proc/$SPID/stat")
n1=$(curl -s "127.0.0.1:$HTTP/metrics" | awk '/^hsca_ocsp_requests_total/{print $2}')
echo "server CPU per fresh answer: $(( (cpu1 - cpu0) * 1000000 / $(getconf CLK_TCK) / (n1 - n0) )) µs; $(curl -s "127.0.0.1:$HTTP/metrics" | grep '^hsca_ocsp_nonces_ignored_total')"

echo
echo "## Revocation to visible ($N revocations, ms from \`cactl revoke\` starting)"
python3 - "$B/cactl" "$HTTP" "$N" <<'PY'
import subprocess, sys, time, urllib.request, statistics
cactl, http, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def get(path):
    return urllib.request.urlopen(f"http://127.0.0.1:{http}{path}").read()
def ocsp_revoked(i):
    req = open(f"t{i}.req", "rb").read()
    r = urllib.request.Request(f"http://127.0.0.1:{http}/ocsp", data=req, headers={"Content-Type": "application/ocsp-request"})
    der = urllib.request.urlopen(r).read()
    out = subprocess.run(["openssl", "ocsp", "-respin", "/dev/stdin", "-resp_text", "-noverify"], input=der, capture_output=True).stdout
    return b"Cert Status: revoked" in out
rows = {"cactl revoke (signed gRPC, durable commit, OCSP re-signed)": [], "OCSP answer says revoked": [], "partition CRL lists it": [], "full CRL lists it": []}
for i in range(1, n + 1):
    pem = open(f"t{i}.pem").read()
    serial = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem.encode(), capture_output=True).stdout.decode().strip().split("=")[1]
    t0 = time.monotonic()
    subprocess.run([cactl, "--config", "ca/cactl.toml", "revoke", "--cert-serial", serial, "--reason", "key-compromise"], check=True, capture_output=True)
    rows["cactl revoke (signed gRPC, durable commit, OCSP re-signed)"].append((time.monotonic() - t0) * 1000)
    seen = {}
    while len(seen) < 3:
        now = (time.monotonic() - t0) * 1000
        if "o" not in seen and ocsp_revoked(i): seen["o"] = now
        if "p" not in seen and bytes.fromhex(serial) in get("/crl/issuing-0.crl"): seen["p"] = now
        if "f" not in seen and bytes.fromhex(serial) in get("/crl/issuing.crl"): seen["f"] = now
        time.sleep(0.005)
    rows["OCSP answer says revoked"].append(seen["o"]); rows["partition CRL lists it"].append(seen["p"]); rows["full CRL lists it"].append(seen["f"])
print("| what | p50 | max |")
print("|---|---|---|")
for k, v in rows.items():
    print(f"| {k} | {statistics.median(v):.0f} ms | {max(v):.0f} ms |")
PY
cd - >/dev/null

echo
echo "## CRL generation (pki crl-scale: build + lint, sign, assemble with signature check, size)"
cargo run --release -q -p pki --example crl-scale -- 100000 1000000
