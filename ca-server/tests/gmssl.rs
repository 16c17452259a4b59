//! GmSSL 3.3, the Chinese reference SM2 stack, as a relying party of a live `ca-server`: it must
//! accept a terminal chain (`certverify`), the full CRL (`crlverify`) and OCSP answers
//! (`ocspreq` + POST + `ocspverify`). And the terminal profile's `crl_scope` decides which CRL a
//! terminal certificate names: its partition's (default) or the full one.
//!
//! GmSSL comes from `HSCA_GMSSL` (the `gmssl` binary; `scripts/test.sh` sets it), else from
//! running `../shared/interop/build-gmssl.sh` beside the repository. Without either the GmSSL
//! checks are skipped with a note, except under `CI`, where that is a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hsm::backend::memory::SoftwareSm2Key;
use pki::SignerId;
use proto::client::{Client, request_id};
use proto::v1;

mod common;
use common::{free_port, serial};

const EXE: &str = env!("CARGO_BIN_EXE_ca-server");

fn gmssl() -> Option<&'static Path> {
    static GMSSL: OnceLock<Option<PathBuf>> = OnceLock::new();
    GMSSL
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("HSCA_GMSSL").filter(|p| !p.is_empty()) {
                return Some(PathBuf::from(p));
            }
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/interop/build-gmssl.sh");
            if script.exists() {
                let out = Command::new("bash").arg(&script).output().expect("run build-gmssl.sh");
                assert!(out.status.success(), "build-gmssl.sh: {}", String::from_utf8_lossy(&out.stderr));
                return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
            }
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the GmSSL checks: set HSCA_GMSSL or put shared/interop beside the repository"
            );
            eprintln!("GmSSL checks skipped: no HSCA_GMSSL and no {}", script.display());
            None
        })
        .as_deref()
}

fn run_gmssl(dir: &Path, args: &[&str]) -> Output {
    let gmssl = gmssl().expect("only called when GmSSL is there");
    Command::new(gmssl).args(args).current_dir(dir).output().expect("run gmssl")
}

/// Runs `gmssl ARGS` in `dir`, asserts it succeeded, and returns stdout and stderr together.
fn gmssl_ok(dir: &Path, args: &[&str]) -> String {
    let out = run_gmssl(dir, args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "gmssl {args:?} failed:\n{text}");
    text
}

fn gmssl_fails(dir: &Path, args: &[&str]) -> String {
    let out = run_gmssl(dir, args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "gmssl {args:?} should have failed:\n{text}");
    text
}

struct Server(Child);

impl Server {
    fn start(dir: &Path, http: u16) -> Self {
        let child = Command::new(EXE)
            .args(["serve", "--config"])
            .arg(dir.join("ca-server.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("serve.log")).expect("log"))
            .spawn()
            .expect("spawn ca-server serve");
        let mut server = Self(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http_request(http, "GET", "/readyz", None).0.starts_with("HTTP/1.1 200") {
            let exited = server.0.try_wait().expect("wait").is_some();
            if exited || Instant::now() > deadline {
                panic!(
                    "ca-server did not become ready: {}",
                    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 exchange: the status line and headers, and the body bytes.
fn http_request(port: u16, method: &str, path: &str, body: Option<(&str, &[u8])>) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return (String::new(), Vec::new()) };
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n").into_bytes();
    if let Some((ctype, bytes)) = body {
        req.extend(format!("Content-Type: {ctype}\r\nContent-Length: {}\r\n", bytes.len()).into_bytes());
        req.extend(b"\r\n");
        req.extend(bytes);
    } else {
        req.extend(b"\r\n");
    }
    s.write_all(&req).expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read");
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").map_or(out.len(), |p| p + 4);
    (String::from_utf8_lossy(&out[..split]).into_owned(), out[split..].to_vec())
}

fn get_ok(port: u16, path: &str) -> Vec<u8> {
    let (head, body) = http_request(port, "GET", path, None);
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body
}

/// `ca-server init` in `dir` (policy as shipped, then `edit` applied to `policies/profiles.toml`).
fn init(dir: &Path, edit: impl FnOnce(String) -> String) -> u16 {
    let (grpc, http) = (free_port(), free_port());
    let out = Command::new(EXE)
        .args(["init", "--data-dir"])
        .arg(dir)
        .args(["--grpc", &format!("127.0.0.1:{grpc}"), "--http", &format!("127.0.0.1:{http}")])
        .output()
        .expect("ca-server init");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let profiles = dir.join("policies/profiles.toml");
    let text = std::fs::read_to_string(&profiles).expect("profiles.toml");
    std::fs::write(&profiles, edit(text)).expect("write profiles.toml");
    http
}

/// The station principal the tests issue with, added through the Admin service.
async fn station(dir: &Path, admin: &Client) -> Client {
    common::principal(dir, admin, "station-1", "station", &["HSTM"]).await.0
}

/// Issues a terminal certificate for `serial(n)`; returns its DER and its serial (hex).
async fn issue_terminal(station: &Client, n: u32) -> (Vec<u8>, String) {
    let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    let s = serial(n);
    let subject: pki::Name = format!("CN={s},serialNumber={s}").parse().expect("name");
    let info = pki::csr::build_csr_info(&subject, key.sm2_public_key()).expect("info");
    let sig = hsm::Signer::sign(&key, &info).expect("sign");
    let csr = pki::csr::assemble_csr(&info, sig.as_der(), &SignerId::default()).expect("csr");
    let req = v1::IssueTerminalCertificateRequest {
        request_id: request_id(),
        terminal_serial: s,
        class: v1::TerminalClass::ClassIi as i32,
        model: String::new(),
        csr_der: csr,
        reissue: false,
        lot: "L1".into(),
    };
    let signed = station.signed("/hsca.v1.CertificateAuthority/IssueTerminalCertificate", req).expect("sign");
    let resp = v1::certificate_authority_client::CertificateAuthorityClient::new(station.channel.clone())
        .issue_terminal_certificate(signed)
        .await
        .expect("issued")
        .into_inner();
    (resp.certificate_der, resp.certificate_serial)
}

async fn revoke(admin: &Client, serial: &str) {
    let rv = v1::RevokeCertificateRequest {
        request_id: request_id(),
        certificate_serial: serial.into(),
        terminal_serial: String::new(),
        reason: 1,
        invalidity_ms: 0,
    };
    v1::admin_client::AdminClient::new(admin.channel.clone())
        .revoke_certificate(admin.signed("/hsca.v1.Admin/RevokeCertificate", rv).expect("s"))
        .await
        .expect("revoked");
}

fn pem(der: &[u8]) -> String {
    pki::pem::der_to_pem("CERTIFICATE", der).expect("pem")
}

/// The path part of a CRL URL the CA wrote, e.g. `/crl/issuing-0.crl`.
fn crl_path(cert_der: &[u8]) -> String {
    let cert: pki::Certificate = der::Decode::from_der(cert_der).expect("der");
    let urls = pki::cert::status_urls(&cert).crl;
    assert_eq!(urls.len(), 1, "{urls:?}");
    let after_scheme = urls[0].strip_prefix("http://").expect("http URL");
    after_scheme[after_scheme.find('/').expect("path")..].to_owned()
}

/// Fetches the CRL at `path` (DER, which is what `gmssl crlverify` reads) once it lists `serial`:
/// it is remade within a second of a revocation.
fn crl_listing(http: u16, path: &str, serial: &str, issuing: &pki::Certificate) -> Vec<u8> {
    let info = pki::IssuerInfo::from_certificate(issuing, SignerId::default()).expect("issuer");
    let want = pki::CertSerial::from_hex(serial).expect("hex serial");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let der = get_ok(http, path);
        let crl = pki::verify_crl(&der, &info).expect("our own check of the CRL");
        if crl.revoked.iter().any(|(s, _)| *s == want) {
            return der;
        }
        assert!(Instant::now() < deadline, "{path} never listed {serial}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gmssl_accepts_the_terminal_chain_the_full_crl_and_ocsp_answers() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let http = init(&dir, |t| t);
    let _server = Server::start(&dir, http);
    let admin = common::admin(&dir).await;
    let station = station(&dir, &admin).await;
    let (good, _) = issue_terminal(&station, 0).await;
    let (bad, bad_serial) = issue_terminal(&station, 1).await;
    revoke(&admin, &bad_serial).await;

    let d = tmp.path();
    let issuing_pem = std::fs::read_to_string(dir.join("certs/issuing.pem")).expect("issuing");
    let issuing: pki::Certificate = pki::pem::certificate_from_pem(&issuing_pem).expect("issuing cert");
    std::fs::write(d.join("terminal+issuing.pem"), pem(&good) + &issuing_pem).expect("w");
    std::fs::write(d.join("revoked+issuing.pem"), pem(&bad) + &issuing_pem).expect("w");
    std::fs::copy(dir.join("certs/root.pem"), d.join("root.pem")).expect("root");
    std::fs::copy(dir.join("certs/issuing.pem"), d.join("issuing.pem")).expect("issuing");

    // Default scope: the certificate names its partition's CRL.
    assert_eq!(crl_path(&good), "/crl/issuing-0.crl");
    let full = crl_listing(http, "/crl/issuing.crl", &bad_serial, &issuing);
    std::fs::write(d.join("issuing.crl"), &full).expect("w");
    let partition = crl_listing(http, "/crl/issuing-0.crl", &bad_serial, &issuing);
    std::fs::write(d.join("issuing-0.crl"), &partition).expect("w");
    let delta = get_ok(http, "/crl/issuing-delta.crl");
    std::fs::write(d.join("issuing-delta.crl"), &delta).expect("w");
    // Only a partition CRL carries an issuingDistributionPoint; a delta has its base's scope.
    let info = pki::IssuerInfo::from_certificate(&issuing, SignerId::default()).expect("issuer");
    let idp = |der: &[u8]| pki::verify_crl(der, &info).expect("verifies").distribution_point;
    assert_eq!(idp(&full), None);
    assert_eq!(idp(&delta), None);
    assert_eq!(idp(&partition), Some(format!("http://127.0.0.1:{http}/crl/issuing-0.crl")));

    if gmssl().is_none() {
        return;
    }
    // A whole SM2 chain with the standard signer ID, which OpenSSL 3.0's CLI cannot check.
    let out = gmssl_ok(d, &["certverify", "-client", "-in", "terminal+issuing.pem", "-cacert", "root.pem"]);
    assert!(out.contains("Verification success"), "{out}");
    // The oracle is live: a chain whose terminal certificate was altered is refused.
    let mut tampered = good.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    std::fs::write(d.join("tampered+issuing.pem"), pem(&tampered) + &issuing_pem).expect("w");
    gmssl_fails(d, &["certverify", "-client", "-in", "tampered+issuing.pem", "-cacert", "root.pem"]);

    // The full CRL carries no critical extension, so GmSSL reads it; partition and delta CRLs
    // must carry critical ones (issuingDistributionPoint, deltaCRLIndicator), so it cannot.
    let out = gmssl_ok(d, &["crlverify", "-in", "issuing.crl", "-cacert", "issuing.pem"]);
    assert!(out.contains("Verification success"), "{out}");
    gmssl_fails(d, &["crlverify", "-in", "issuing-0.crl", "-cacert", "issuing.pem"]);
    gmssl_fails(d, &["crlverify", "-in", "issuing-delta.crl", "-cacert", "issuing.pem"]);
    gmssl_fails(d, &["crlverify", "-in", "issuing.crl", "-cacert", "root.pem"]);

    // OCSP: GmSSL's request, POSTed as its users would, its verification of our answer.
    std::fs::copy(dir.join("certs/ocsp-signer.pem"), d.join("ocsp-signer.pem")).expect("responder cert");
    let ask = |chain: &str| {
        gmssl_ok(d, &["ocspreq", "-in", chain, "-out", "req.der"]);
        let req = std::fs::read(d.join("req.der")).expect("req");
        let (head, resp) = http_request(http, "POST", "/ocsp", Some(("application/ocsp-request", &req)));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        std::fs::write(d.join("resp.der"), &resp).expect("w");
    };
    let verify = ["ocspverify", "-reqin", "req.der", "-respin", "resp.der", "-cacert", "issuing.pem", "-signer"];
    ask("terminal+issuing.pem");
    let out = gmssl_ok(d, &[&verify[..], &["ocsp-signer.pem"]].concat());
    assert!(out.contains("Verification success"), "{out}");
    // GmSSL reports a signed "revoked" answer as a failure, naming the reason.
    ask("revoked+issuing.pem");
    let out = gmssl_fails(d, &[&verify[..], &["ocsp-signer.pem"]].concat());
    assert!(out.contains("Verification failure: revoked"), "{out}");
    // An answer signed by someone else is refused.
    ask("terminal+issuing.pem");
    let out = gmssl_fails(d, &[&verify[..], &["issuing.pem"]].concat());
    assert!(out.contains("badResponderID"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crl_scope_full_points_terminal_certificates_at_the_full_crl() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let http = init(&dir, |t| t.replace("crl_scope = \"partition\"", "crl_scope = \"full\""));
    let _server = Server::start(&dir, http);
    let admin = common::admin(&dir).await;
    let station = station(&dir, &admin).await;
    let (good, _) = issue_terminal(&station, 0).await;
    let (_, bad_serial) = issue_terminal(&station, 1).await;
    revoke(&admin, &bad_serial).await;

    assert_eq!(crl_path(&good), "/crl/issuing.crl");
    let issuing_pem = std::fs::read_to_string(dir.join("certs/issuing.pem")).expect("issuing");
    let issuing: pki::Certificate = pki::pem::certificate_from_pem(&issuing_pem).expect("issuing cert");
    // What the certificate names lists the revocation, and a GmSSL relying party can read it.
    let crl = crl_listing(http, &crl_path(&good), &bad_serial, &issuing);
    let d = tmp.path();
    std::fs::write(d.join("named.crl"), crl).expect("w");
    std::fs::copy(dir.join("certs/issuing.pem"), d.join("issuing.pem")).expect("issuing");
    if gmssl().is_some() {
        gmssl_ok(d, &["crlverify", "-in", "named.crl", "-cacert", "issuing.pem"]);
    }
}
