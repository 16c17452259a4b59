# Helpers shared by the benchmark scripts (sourced, not run).

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# BODY -> BODY + its ISO 7064 MOD 37,36 check character (as pki::CheckAlgorithm computes it).
serial() {
    python3 - "$1" <<'PY'
import sys
digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
m, p = 36, 36
for ch in sys.argv[1]:
    t = (p + digits.index(ch)) % m or m
    p = (2 * t) % (m + 1)
print(sys.argv[1] + digits[(m + 1 - p) % m])
PY
}
