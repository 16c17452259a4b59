#!/usr/bin/env bash
# Runs google/pkcs11test (a PKCS#11 conformance suite) against softtoken and fails on any failure
# not listed, with its reason, in softtoken/pkcs11test-expected-failures.txt (mechanisms and
# functions an SM-only token does not offer). Needs pkcs11-tool (OpenSC), g++ and make.
# Usage: scripts/pkcs11test.sh [path/to/libsofttoken.so]   (default target/debug/libsofttoken.so)
set -euo pipefail
cd "$(dirname "$0")/.."
lib=$(realpath "${1:-target/debug/libsofttoken.so}")
[ -e "$lib" ] || { echo "no $lib: cargo build -p softtoken first" >&2; exit 1; }
build=${PKCS11TEST_BUILD:-../shared/interop/build-pkcs11test.sh}
suite=$("$build")
expected_file=softtoken/pkcs11test-expected-failures.txt
so_pin=87654321
user_pin=12345678   # a throw-away token in a temporary directory

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'directory = "%s/token"\n' "$work" >"$work/softtoken.toml"
export SOFTTOKEN_CONF="$work/softtoken.toml"
pkcs11-tool --module "$lib" --init-token --label pkcs11test --so-pin "$so_pin" >"$work/init.log" 2>&1 || { cat "$work/init.log"; exit 1; }
pkcs11-tool --module "$lib" --login --login-type so --so-pin "$so_pin" --init-pin --pin "$user_pin" >"$work/init.log" 2>&1 || { cat "$work/init.log"; exit 1; }

status=0
"$suite" -m "$(basename "$lib")" -l "$(dirname "$lib")" -s 0 -u "$user_pin" -o "$so_pin" \
    --gtest_color=no >"$work/out.txt" 2>&1 || status=$?
passed=$(sed -nE 's/^\[  PASSED  \] ([0-9]+) tests?\..*/\1/p' "$work/out.txt")
if [ -z "$passed" ]; then
    tail -20 "$work/out.txt"
    echo "pkcs11test did not finish (exit $status)" >&2
    exit 1
fi
sed -nE 's/^\[  FAILED  \] ([^ ,]+).*/\1/p' "$work/out.txt" | grep '\.' | sort -u >"$work/failed"
grep -vE '^\s*(#|$)' "$expected_file" | awk '{print $1}' | sort -u >"$work/expected"
comm -23 "$work/failed" "$work/expected" >"$work/unexpected"
comm -13 "$work/failed" "$work/expected" >"$work/fixed"
echo "pkcs11test: $passed passed, $(wc -l <"$work/failed") failed ($(wc -l <"$work/unexpected") not in $expected_file)"
if [ -s "$work/fixed" ]; then
    echo "listed as expected failures but passing now (remove them from the list):"
    sed 's/^/  /' "$work/fixed"
fi
if [ -s "$work/unexpected" ]; then
    echo "unexpected failures:"
    while read -r t; do
        awk -v t="$t" 'index($0, "[ RUN      ] " t) == 1 { p = 1 } p { print "  " $0 } p && /^\[  FAILED  \]/ { exit }' "$work/out.txt"
    done <"$work/unexpected"
    exit 1
fi
