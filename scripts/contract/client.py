"""A second-language client of the hsca.v1 contract, written from proto/ and proto/README.md only.

Python grpcio with stubs generated from proto/*.proto; SM2 signing written here from GB/T 32918
(no SM2 library), SM3 from hashlib (OpenSSL). It checks itself against the README's worked
example, then against a live ca-server: health and reflection without a signature, issuing a station principal
and a terminal certificate, refusals decoded with grpcio-status, and a request carrying a field
the server does not know.

Usage: client.py DATA_DIR GRPC_ADDR STUB_DIR README
"""

import base64
import hashlib
import os
import secrets
import subprocess
import sys
import time
import tomllib

DATA_DIR, GRPC_ADDR, STUB_DIR, README = sys.argv[1:5]
sys.path.insert(0, STUB_DIR)

import grpc  # noqa: E402
from grpc_status import rpc_status  # noqa: E402
from google.protobuf.descriptor_pool import DescriptorPool  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (  # noqa: E402
    ProtoReflectionDescriptorDatabase,
)
from hsca.v1 import admin_pb2, admin_pb2_grpc, ca_pb2, ca_pb2_grpc, errors_pb2  # noqa: E402

CHECKS = []


def check(name, ok, detail=""):
    CHECKS.append((name, bool(ok)))
    print(("ok   " if ok else "FAIL ") + name + (f": {detail}" if detail and not ok else ""))


# --- SM3 and SM2 (GB/T 32918.2, recommended curve) -------------------------------------------

def sm3(data: bytes) -> bytes:
    h = hashlib.new("sm3")
    h.update(data)
    return h.digest()


P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
A = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
G = (0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7,
     0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0)
SIGNER_ID = b"1234567812345678"


def ec_add(p1, p2):
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % P == 0:
        return None
    if p1 == p2:
        lam = (3 * x1 * x1 + A) * pow(2 * y1, -1, P) % P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (lam * lam - x1 - x2) % P
    return (x3, (lam * (x1 - x3) - y1) % P)


def ec_mul(k, point):
    acc = None
    while k:
        if k & 1:
            acc = ec_add(acc, point)
        point = ec_add(point, point)
        k >>= 1
    return acc


def i32(v: int) -> bytes:
    return v.to_bytes(32, "big")


def public_key(d: int):
    return ec_mul(d, G)


def sec1(pub) -> bytes:
    return b"\x04" + i32(pub[0]) + i32(pub[1])


def sm2_e(pub, msg: bytes) -> int:
    entl = (len(SIGNER_ID) * 8).to_bytes(2, "big")
    z = sm3(entl + SIGNER_ID + i32(A) + i32(B) + i32(G[0]) + i32(G[1]) + i32(pub[0]) + i32(pub[1]))
    return int.from_bytes(sm3(z + msg), "big")


def sm2_sign(d: int, msg: bytes) -> bytes:
    e = sm2_e(public_key(d), msg)
    while True:
        k = secrets.randbelow(N - 1) + 1
        x1 = ec_mul(k, G)[0]
        r = (e + x1) % N
        if r == 0 or r + k == N:
            continue
        s = pow(1 + d, -1, N) * (k - r * d) % N
        if s:
            return der_seq(der_int(r), der_int(s))


def sm2_verify(pub, msg: bytes, sig: bytes) -> bool:
    (tag, body), rest = der_read(sig)
    if tag != 0x30 or rest:
        return False
    (_, rb), body = der_read(body)
    (_, sb), _ = der_read(body)
    r, s = int.from_bytes(rb, "big"), int.from_bytes(sb, "big")
    if not (0 < r < N and 0 < s < N) or (r + s) % N == 0:
        return False
    pt = ec_add(ec_mul(s, G), ec_mul((r + s) % N, pub))
    return pt is not None and (sm2_e(pub, msg) + pt[0]) % N == r


# --- just enough DER --------------------------------------------------------------------------

def der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        length = bytes([n])
    else:
        nb = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(nb)]) + nb
    return bytes([tag]) + length + body


def der_seq(*items: bytes) -> bytes:
    return der(0x30, b"".join(items))


def der_int(v: int) -> bytes:
    b = v.to_bytes(v.bit_length() // 8 + 1, "big")  # a leading zero keeps it positive
    return der(0x02, b)


def der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytes([40 * arcs[0] + arcs[1]])
    for a in arcs[2:]:
        chunk = [a & 0x7F]
        a >>= 7
        while a:
            chunk.insert(0, 0x80 | (a & 0x7F))
            a >>= 7
        out += bytes(chunk)
    return der(0x06, out)


def der_read(data: bytes):
    """((tag, body), rest) of the first element of data."""
    tag, n = data[0], data[1]
    off = 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(data[2:2 + k], "big")
        off = 2 + k
    return (tag, data[off:off + n]), data[off + n:]


SM2_WITH_SM3 = der_seq(der_oid("1.2.156.10197.1.501"))


def csr(d: int, cn: str, serial_number: str | None = None) -> bytes:
    """A PKCS#10 request, SM2-with-SM3 over the CertificationRequestInfo with SIGNER_ID."""
    rdns = [der(0x31, der_seq(der_oid("2.5.4.3"), der(0x0C, cn.encode())))]
    if serial_number:
        rdns.append(der(0x31, der_seq(der_oid("2.5.4.5"), der(0x13, serial_number.encode()))))
    spki = der_seq(der_seq(der_oid("1.2.840.10045.2.1"), der_oid("1.2.156.10197.1.301")),
                   der(0x03, b"\x00" + sec1(public_key(d))))
    info = der_seq(der_int(0), der_seq(*rdns), spki, b"\xa0\x00")
    return der_seq(info, SM2_WITH_SM3, der(0x03, b"\x00" + sm2_sign(d, info)))


# --- signed requests (proto/README.md "Signed requests") --------------------------------------

def canonical(method: str, time_ms: int, nonce: str, body: bytes) -> bytes:
    return "\n".join(["HSCA-REQ-1", method, str(time_ms), nonce, sm3(body).hex()]).encode("ascii")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Principal:
    def __init__(self, d: int, cert_der: bytes):
        self.d, self.cert_der = d, cert_der

    def metadata(self, method: str, body: bytes, time_ms: int | None = None):
        time_ms = int(time.time() * 1000) if time_ms is None else time_ms
        nonce = secrets.token_hex(16)
        sig = sm2_sign(self.d, canonical(method, time_ms, nonce, body))
        return [("x-hsca-cert", b64(self.cert_der)), ("x-hsca-time", str(time_ms)),
                ("x-hsca-nonce", nonce), ("x-hsca-signature", b64(sig))]


def call(channel, principal, method, request, response_type, sent: bytes | None = None):
    """Calls method with request's bytes (or `sent`, as given) and a signature over the bytes sent."""
    body = request.SerializeToString() if sent is None else sent
    stub = channel.unary_unary(method, request_serializer=lambda b: b,
                               response_deserializer=response_type.FromString)
    return stub(body, metadata=principal.metadata(method, body), timeout=30)


def refusal(err: grpc.RpcError):
    """(code name, reason name) from the google.rpc.Status in grpc-status-details-bin."""
    st = rpc_status.from_call(err)
    if st is None:
        return (err.code().name, None)
    detail = errors_pb2.ErrorDetail()
    anys = [a for a in st.details if a.Is(errors_pb2.ErrorDetail.DESCRIPTOR)]
    if not anys or not anys[0].Unpack(detail):
        return (err.code().name, None)
    return (err.code().name, errors_pb2.Reason.Name(detail.reason))


def expect_refusal(name, fn, want):
    try:
        fn()
    except grpc.RpcError as e:
        got = refusal(e)
        check(name, got == want, f"got {got}, want {want}")
        return
    check(name, False, "not refused")


def pem_der(path: str) -> bytes:
    lines = open(path).read().strip().splitlines()
    return base64.b64decode("".join(l for l in lines if not l.startswith("-----")))


def load_identity(path: str) -> Principal:
    """identity.toml: the certificate, and the key decrypted by stock OpenSSL (PBES2, SM4-CBC)."""
    base = os.path.dirname(path)
    ident = tomllib.load(open(path, "rb"))
    at = lambda p: p if os.path.isabs(p) else os.path.join(base, p)  # noqa: E731
    plain = subprocess.run(
        ["openssl", "pkcs8", "-in", at(ident["key"]), "-passin", "file:" + at(ident["passphrase_file"]),
         "-outform", "DER"], check=True, capture_output=True).stdout
    # OpenSSL writes SEC1 ECPrivateKey { 1, OCTET STRING d, ... }; PKCS#8 PrivateKeyInfo
    # { 0, algorithm, OCTET STRING { ECPrivateKey } } is read too.
    (_, body), _ = der_read(plain)
    (_, version), rest = der_read(body)
    if version == b"\x00":
        _, rest = der_read(rest)
        (_, inner), _ = der_read(rest)
        (_, body), _ = der_read(inner)
        _, rest = der_read(body)
    (_, d), _ = der_read(rest)
    return Principal(int.from_bytes(d, "big"), pem_der(at(ident["certificate"])))


# --- the checks -------------------------------------------------------------------------------

def readme_example():
    text = open(README).read()
    block = text.split("<!-- worked-example: start -->")[1].split("<!-- worked-example: end -->")[0]
    ex = dict((k.strip(), v.strip()) for k, v in
              (l.split("=", 1) for l in block.splitlines() if "=" in l and not l.startswith("```")))
    shown = text.split("<!-- canonical: start -->")[1].split("<!-- canonical: end -->")[0]
    shown = shown.split("```text\n")[1].split("\n```")[0].encode()
    body = bytes.fromhex(ex["message_hex"])
    msg = admin_pb2.ListAuditRequest.FromString(body)
    check("README example: message decodes", (msg.request_id, msg.last) == ("readme-example", 5))
    check("README example: SM3", sm3(body).hex() == ex["sm3_hex"])
    c = canonical(ex["method"], int(ex["x-hsca-time"]), ex["x-hsca-nonce"], body)
    check("README example: canonical string", c == shown)
    d = int(ex["private_key_hex"], 16)
    check("README example: private key", i32(d) == sm3(b"hsca.v1 README example key"))
    pub = public_key(d)
    check("README example: public key", sec1(pub).hex() == ex["public_key_hex"])
    sig = base64.b64decode(ex["x-hsca-signature"], validate=True)
    check("README example: signature verifies", sm2_verify(pub, c, sig))
    check("README example: another body does not", not sm2_verify(pub, c[:-1] + b"0", sig))
    mine = sm2_sign(d, c)
    check("our own SM2 signature verifies", sm2_verify(pub, c, mine))


def terminal_serial(n: int) -> str:
    """HSTM0126 11 + five digits + ISO 7064 MOD 37,36 check character (policies/serial-rules.toml)."""
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    body = f"HSTM012611{n:05d}"
    p = 36
    for ch in body:
        s = (p % 37 + alphabet.index(ch)) % 36 or 36
        p = (s * 2) % 37
    return body + alphabet[(37 - p) % 36]


def live():
    tls_ca = open(os.path.join(DATA_DIR, "identities/admin/tls-ca.pem"), "rb").read()
    creds = grpc.ssl_channel_credentials(root_certificates=tls_ca)
    channel = grpc.secure_channel(GRPC_ADDR, creds, options=[("grpc.ssl_target_name_override", "localhost")])
    grpc.channel_ready_future(channel).result(timeout=30)

    # Health, with no metadata at all.
    health = health_pb2_grpc.HealthStub(channel)
    r = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    check("health: SERVING without a signature", r.status == health_pb2.HealthCheckResponse.SERVING)
    r = health.Check(health_pb2.HealthCheckRequest(service="hsca.v1.CertificateAuthority"), timeout=30)
    check("health: hsca.v1.CertificateAuthority SERVING", r.status == health_pb2.HealthCheckResponse.SERVING)

    # Server reflection (what grpcurl uses), also without a signature.
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    want = {"hsca.v1.CertificateAuthority", "hsca.v1.Registry", "hsca.v1.Admin", "grpc.health.v1.Health"}
    check("reflection: lists the services", want <= services, f"{services}")
    detail = DescriptorPool(db).FindMessageTypeByName("hsca.v1.ErrorDetail")
    check("reflection: describes hsca.v1.ErrorDetail", [f.name for f in detail.fields] == ["reason", "message"])

    admin = load_identity(os.path.join(DATA_DIR, "identities/admin/identity.toml"))

    # A station principal, its key made and its CSR built and signed here.
    station_d = secrets.randbelow(N - 1) + 1
    station_name = "py-station-" + secrets.token_hex(3)
    resp = call(channel, admin, "/hsca.v1.Admin/IssuePrincipal",
                admin_pb2.IssuePrincipalRequest(request_id=secrets.token_hex(16), name=station_name,
                                                role="station", csr_der=csr(station_d, station_name),
                                                manufacturers=["HSTM"]),
                admin_pb2.IssuePrincipalResponse)
    check("IssuePrincipal: a station certificate", len(resp.certificate_der) > 100)
    station = Principal(station_d, resp.certificate_der)

    # Issue a terminal certificate.
    serial = terminal_serial(int.from_bytes(secrets.token_bytes(2), "big"))
    terminal_d = secrets.randbelow(N - 1) + 1
    issue = ca_pb2.IssueTerminalCertificateRequest(request_id=secrets.token_hex(16), terminal_serial=serial,
                                                   csr_der=csr(terminal_d, serial, serial), lot="PY1",
                                                   **{"class": ca_pb2.CLASS_I})
    got = call(channel, station, "/hsca.v1.CertificateAuthority/IssueTerminalCertificate", issue,
               ca_pb2.IssueTerminalCertificateResponse)
    (tag, _), rest = der_read(got.certificate_der)
    check("IssueTerminalCertificate: a certificate and its chain",
          tag == 0x30 and not rest and len(got.chain_der) == 2 and got.certificate_serial and not got.replayed)
    check("the certificate carries our public key", sec1(public_key(terminal_d)) in got.certificate_der)

    # Refusals, read through grpcio-status: a second certificate for the same terminal, a call
    # without the signature, one signed over other bytes, one from a role that may not.
    again = ca_pb2.IssueTerminalCertificateRequest()
    again.CopyFrom(issue)
    again.request_id = secrets.token_hex(16)
    expect_refusal("refusal: ALREADY_HAS_ACTIVE_CERTIFICATE via grpcio-status",
                   lambda: call(channel, station, "/hsca.v1.CertificateAuthority/IssueTerminalCertificate",
                                again, ca_pb2.IssueTerminalCertificateResponse),
                   ("FAILED_PRECONDITION", "ALREADY_HAS_ACTIVE_CERTIFICATE"))
    ca_stub = ca_pb2_grpc.CertificateAuthorityStub(channel)
    expect_refusal("refusal: unsigned call is MISSING_SIGNATURE",
                   lambda: ca_stub.GetCaChain(ca_pb2.GetCaChainRequest(request_id="x"), timeout=30),
                   ("UNAUTHENTICATED", "MISSING_SIGNATURE"))
    expect_refusal("refusal: a station may not list the audit log",
                   lambda: call(channel, station, "/hsca.v1.Admin/ListAudit",
                                admin_pb2.ListAuditRequest(request_id="x", last=1), admin_pb2.ListAuditResponse),
                   ("PERMISSION_DENIED", "ROLE_FORBIDDEN"))

    # A field this server does not know (field 1000, as a later hsca.v1 might add), signed as sent.
    status_req = ca_pb2.GetCertificateStatusRequest(request_id=secrets.token_hex(16),
                                                    certificate_serial=got.certificate_serial)
    unknown = status_req.SerializeToString() + bytes([0xC0, 0x3E, 0x01])  # key (1000 << 3 | 0), value 1
    st = call(channel, station, "/hsca.v1.CertificateAuthority/GetCertificateStatus", None,
              ca_pb2.CertificateStatus, sent=unknown)
    check("unknown field: accepted and answered", st.state == ca_pb2.CertificateStatus.GOOD)
    # Signed over the known fields only, sent with the unknown one: a different request.
    method = "/hsca.v1.CertificateAuthority/GetCertificateStatus"
    md = station.metadata(method, status_req.SerializeToString())
    raw = channel.unary_unary(method, request_serializer=lambda b: b,
                              response_deserializer=ca_pb2.CertificateStatus.FromString)
    expect_refusal("unknown field: a signature over other bytes is BAD_SIGNATURE",
                   lambda: raw(unknown, metadata=md, timeout=30), ("UNAUTHENTICATED", "BAD_SIGNATURE"))
    # grpcio's protobuf keeps unknown fields: a message parsed from the bytes re-serialises them.
    kept = ca_pb2.GetCertificateStatusRequest.FromString(unknown)
    st = call(channel, station, method, kept, ca_pb2.CertificateStatus)
    check("unknown field kept by python protobuf: accepted", st.state == ca_pb2.CertificateStatus.GOOD)


def main():
    readme_example()
    live()
    failed = sum(1 for _, ok in CHECKS if not ok)
    print(f"python contract: {len(CHECKS) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
