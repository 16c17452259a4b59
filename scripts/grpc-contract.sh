#!/usr/bin/env bash
# The hsca.v1 contract from a second language: a Python grpcio client (scripts/contract/client.py)
# with stubs generated from proto/ alone, against a fresh `ca-server init` + `serve`.
# Needs target/debug/ca-server (scripts/test.sh builds it). The venv is made here, once, under
# $HSCA_CONTRACT_CACHE (default ~/.cache/hsca-contract).
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${HSCA_CONTRACT_CACHE:-$HOME/.cache/hsca-contract}"
venv="$cache/venv"
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv
fi
if ! "$venv/bin/python" -c 'import grpc, grpc_tools, grpc_status, grpc_health, grpc_reflection, google.protobuf' >/dev/null 2>&1; then
    echo "==> python venv for the contract test: $venv"
    rm -rf "$venv"
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q grpcio grpcio-tools grpcio-status grpcio-health-checking grpcio-reflection protobuf
fi
py="$venv/bin/python"
"$py" -c 'import hashlib; hashlib.new("sm3")' || { echo "this Python's hashlib has no SM3" >&2; exit 1; }

work=$(mktemp -d)
server=""
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/stubs"
"$py" -m grpc_tools.protoc -I proto/proto --python_out="$work/stubs" --grpc_python_out="$work/stubs" \
    proto/proto/hsca/v1/*.proto
echo "==> stubs from proto/: $(cd "$work/stubs" && ls hsca/v1 | tr '\n' ' ')"

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc_port=$(free_port)
http_port=$(free_port)
target/debug/ca-server init --data-dir "$work/ca" --grpc "127.0.0.1:$grpc_port" --http "127.0.0.1:$http_port" >/dev/null
target/debug/ca-server serve --config "$work/ca/ca-server.toml" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
"$py" scripts/contract/client.py "$work/ca" "127.0.0.1:$grpc_port" "$work/stubs" proto/README.md || {
    echo "--- ca-server log" >&2
    tail -20 "$work/server.log" >&2
    exit 1
}
