//! Revocation that stock clients trust, end to end with the real binaries: `cactl revoke` (single,
//! and bulk under dual control), then `openssl crl` and `openssl ocsp` (POST, GET, nonce) against
//! the running `ca-server`, our own CRL and OCSP signature checks (`cactl verify`), delta + base =
//! full, and CRL numbers that keep increasing across restarts.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{RunningCa, Terminal, issue, openssl, text};
use pki::{CertSerial, IssuerInfo, SignerId};

fn ocsp(ca: &RunningCa, d: &Path, t: &Terminal, extra: &[&str]) -> String {
    let url = format!("http://127.0.0.1:{}/ocsp", ca.http);
    let issuing = ca.dir.join("certs/issuing.pem");
    let mut args =
        vec!["ocsp", "-issuer", issuing.to_str().expect("p"), "-cert", &t.pem, "-url", &url, "-noverify", "-resp_text"];
    args.extend_from_slice(extra);
    let (ok, out) = openssl(d, &args);
    assert!(ok, "{out}");
    out
}

fn verify(ca: &RunningCa, t: &Terminal, d: &Path, how: &str) -> (Option<i32>, String) {
    let o = ca.admin(&["verify", "--cert", d.join(&t.pem).to_str().expect("p"), how]);
    (o.status.code(), text(&o))
}

/// Fetches the CRL at `name`, checks our signature verification, returns what it says.
fn crl(ca: &RunningCa, name: &str) -> (Vec<u8>, pki::crl::VerifiedCrl) {
    let (head, der) = ca.get(&format!("/crl/{name}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let issuing =
        pki::pem::certificate_from_pem(&std::fs::read_to_string(ca.dir.join("certs/issuing.pem")).expect("pem"))
            .expect("cert");
    let info = IssuerInfo::from_certificate(&issuing, SignerId::default()).expect("issuer");
    let v = pki::verify_crl(&der, &info).expect("our validator accepts the CRL signature");
    (der, v)
}

fn serials(v: &pki::crl::VerifiedCrl) -> std::collections::BTreeSet<String> {
    v.revoked.iter().map(|(s, _)| s.to_hex()).collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn crls_ocsp_bulk_revocation_and_restarts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    // Two certificates per CRL partition, so three terminals span two partitions.
    let mut ca = RunningCa::init_with(d, |toml| {
        assert!(toml.contains("partition_size = 100000"), "{toml}");
        *toml = toml.replace("partition_size = 100000", "partition_size = 2");
    });
    // `init` made the second admin (identities/admin-2): a new admin added now would wait for approval.
    let (station, _) = ca.add_principal(d, "station", "station-1", &["HSTM"]);
    let t1 = issue(&ca, d, &station, "HSTM01261100000K", "L1");
    let t2 = issue(&ca, d, &station, "HSTM01261100001I", "L1");
    let t3 = issue(&ca, d, &station, "HSTM01261100002G", "L2");

    // The delta base: the scheduled full CRL made at start (nothing was revoked before now, so
    // it, like the current full CRL, lists nothing).
    let (_, base) = crl(&ca, "issuing.crl");
    assert!(base.revoked.is_empty());
    let base_number = crl(&ca, "issuing-delta.crl").1.delta_base.expect("a delta names its base");
    assert!(base_number <= base.number.expect("number"));

    // OCSP over POST says good; our relying-party check verifies the responder's signature and authority.
    assert!(ocsp(&ca, d, &t1, &["-no_nonce"]).contains("Cert Status: good"));
    let (code, out) = verify(&ca, &t1, d, "--ocsp");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("good") && out.contains("delegated responder"), "{out}");

    let o = ca.admin(&["revoke", "--terminal", t1.serial, "--reason", "key-compromise"]);
    assert!(o.status.success(), "{}", text(&o));
    let revoked = ocsp(&ca, d, &t1, &["-no_nonce"]);
    assert!(revoked.contains("Cert Status: revoked"), "{revoked}");
    assert!(revoked.contains("Revocation Time:") && revoked.contains("Revocation Reason: keyCompromise"), "{revoked}");
    // With a nonce: echoed (OpenSSL shows it among the response extensions).
    let with_nonce = ocsp(&ca, d, &t1, &["-nonce"]);
    assert!(with_nonce.contains("OCSP Nonce") && !with_nonce.contains("WARNING: no nonce"), "{with_nonce}");
    // GET (RFC 6960 appendix A): the request, base64 and URL-encoded, in the path.
    let issuing = ca.dir.join("certs/issuing.pem");
    let (ok, out) = openssl(
        d,
        &["ocsp", "-issuer", issuing.to_str().expect("p"), "-cert", &t1.pem, "-no_nonce", "-reqout", "req.der"],
    );
    assert!(ok, "{out}");
    let req = std::fs::read(d.join("req.der")).expect("req");
    let b64 = base64_url(&req);
    let (head, body) = ca.get(&format!("/ocsp/{b64}"));
    assert!(head.contains("application/ocsp-response") && head.contains("max-age"), "{head}");
    std::fs::write(d.join("get.der"), body).expect("write");
    let (ok, out) = openssl(d, &["ocsp", "-respin", "get.der", "-resp_text", "-noverify"]);
    assert!(ok && out.contains("Cert Status: revoked"), "{out}");
    let (code, out) = verify(&ca, &t1, d, "--ocsp");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("revoked") && out.contains("keyCompromise"), "{out}");
    // Malformed requests get malformedRequest.
    let url = format!("http://127.0.0.1:{}/ocsp", ca.http);
    let (_, body) = ca.post("/ocsp", b"\x30\x03\x02\x01\x00");
    std::fs::write(d.join("junk-answer.der"), body).expect("write");
    let (_, out) = openssl(d, &["ocsp", "-respin", "junk-answer.der", "-resp_text", "-noverify"]);
    assert!(out.to_lowercase().contains("malformedrequest"), "{out}");

    // A serial this CA never issued: unknown.
    let issuing_cert = pki::pem::certificate_from_pem(&std::fs::read_to_string(&issuing).expect("pem")).expect("cert");
    let never = CertSerial::generate().expect("rng");
    let id = pki::ocsp::IssuerHashes::new(&issuing_cert).expect("hashes").cert_id(pki::ocsp::CertIdHash::Sha1, &never);
    let (_, body) = ca.post("/ocsp", &pki::ocsp::build_request(&[id], None).expect("request"));
    std::fs::write(d.join("unknown.der"), body).expect("write");
    let (_, out) = openssl(d, &["ocsp", "-respin", "unknown.der", "-resp_text", "-noverify"]);
    assert!(out.contains("Cert Status: unknown"), "{out}");

    // A CertID naming another issuer (here: the root as issuer) gets unauthorized.
    let root = ca.dir.join("certs/root.pem");
    let (_, out) = openssl(
        d,
        &["ocsp", "-issuer", root.to_str().expect("p"), "-cert", &t1.pem, "-url", &url, "-resp_text", "-noverify"],
    );
    assert!(out.to_lowercase().contains("unauthorized"), "{out}");

    // The CRL lists it within a second, with its reason; OpenSSL parses number and AKI. A full
    // CRL carries no IDP (no critical extension: GmSSL reads it), a partition's does.
    wait_for("the CRL to list the revocation", || serials(&crl(&ca, "issuing.crl").1).contains(&t1.cert_serial));
    let (der, _) = crl(&ca, "issuing.crl");
    std::fs::write(d.join("full.crl"), &der).expect("write");
    let (ok, out) = openssl(d, &["crl", "-in", "full.crl", "-inform", "DER", "-text", "-noout"]);
    assert!(ok, "{out}");
    for want in [&t1.cert_serial[..], "Key Compromise", "X509v3 CRL Number", "Authority Key Identifier"] {
        assert!(out.contains(want), "openssl crl shows {want}:\n{out}");
    }
    assert!(!out.contains("Issuing Distribution Point"), "{out}");
    let (code, out) = verify(&ca, &t1, d, "--crl");
    assert_eq!(code, Some(1), "{out}");
    // A tampered CRL is refused by our validator.
    let mut tampered = der.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 1;
    let info = IssuerInfo::from_certificate(&issuing_cert, SignerId::default()).expect("info");
    assert!(pki::verify_crl(&tampered, &info).is_err(), "a flipped bit must fail");

    // Bulk revocation: asking changes nothing; a second admin approving revokes exactly the lot.
    let o = ca.admin(&["--json", "revoke", "--lot", "L2", "--reason", "cessation-of-operation"]);
    assert!(o.status.success(), "{}", text(&o));
    let id =
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json")["id"].as_str().expect("id").to_owned();
    assert!(ocsp(&ca, d, &t3, &["-no_nonce"]).contains("Cert Status: good"), "not revoked before approval");
    let o = ca.admin(&["approvals", "approve", &id]);
    assert_eq!(o.status.code(), Some(1), "the requester cannot approve: {}", text(&o));
    assert!(text(&o).contains("SAME_APPROVER"));
    let second = std::process::Command::new(common::CACTL)
        .arg("--identity")
        .arg(d.join("ca/identities/admin-2/identity.toml"))
        .args(["approvals", "approve", &id])
        .output()
        .expect("cactl");
    assert!(second.status.success(), "{}", text(&second));
    assert!(ocsp(&ca, d, &t3, &["-no_nonce"]).contains("Cert Status: revoked"));
    assert!(ocsp(&ca, d, &t2, &["-no_nonce"]).contains("Cert Status: good"), "lot L1 untouched by the L2 bulk");

    // Delta + base = full.
    // The full CRL is served a moment before the delta built on the same snapshot.
    wait_for("the full CRL to list the lot, and the delta to follow it", || {
        let (_, full) = crl(&ca, "issuing.crl");
        let (_, delta) = crl(&ca, "issuing-delta.crl");
        serials(&full).contains(&t3.cert_serial) && delta.number > full.number
    });
    let (_, full) = crl(&ca, "issuing.crl");
    let (_, delta) = crl(&ca, "issuing-delta.crl");
    assert_eq!(delta.delta_base, Some(base_number), "the delta builds on the scheduled base");
    assert!(delta.number > full.number && full.number > Some(base_number));
    let combined: std::collections::BTreeSet<String> = serials(&base).union(&serials(&delta)).cloned().collect();
    assert_eq!(combined, serials(&full));
    assert_eq!(serials(&full), [t1.cert_serial.clone(), t3.cert_serial.clone()].into_iter().collect());

    // Partitions: fixed at issuance in each certificate, each CRL listing only its own.
    let dp = |t: &Terminal| {
        let cert = pki::pem::certificate_from_pem(&std::fs::read_to_string(d.join(&t.pem)).expect("pem")).expect("c");
        pki::cert::status_urls(&cert).crl
    };
    let url = |p: u32| format!("http://127.0.0.1:{}/crl/issuing-{p}.crl", ca.http);
    assert_eq!((dp(&t1), dp(&t2), dp(&t3)), (vec![url(0)], vec![url(0)], vec![url(1)]));
    let (head, _) = ca.get("/crl/issuing-99.crl");
    assert!(head.starts_with("HTTP/1.1 404"), "a partition that does not exist: {head}");
    let (p0_der, p0) = crl(&ca, "issuing-0.crl");
    let (_, p1) = crl(&ca, "issuing-1.crl");
    assert_eq!(serials(&p0), [t1.cert_serial.clone()].into_iter().collect());
    assert_eq!(serials(&p1), [t3.cert_serial.clone()].into_iter().collect());
    std::fs::write(d.join("p0.crl"), &p0_der).expect("write");
    let (ok, out) = openssl(d, &["crl", "-in", "p0.crl", "-inform", "DER", "-text", "-noout"]);
    assert!(
        ok && out.contains("Issuing Distribution Point: critical") && out.contains(&format!("URI:{}", url(0))),
        "the partition's IDP names it:\n{out}"
    );
    let (code, out) = verify(&ca, &t1, d, "--crl");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("issuing-0.crl"), "{out}");
    let (code, out) = verify(&ca, &t2, d, "--crl");
    assert_eq!(code, Some(0), "{out}");

    // CRL numbers keep increasing across a restart; ETag answers 304.
    let before = crl(&ca, "issuing-delta.crl").1.number.expect("number");
    ca.stop();
    ca.start();
    wait_for("the CRLs after a restart", || ca.get("/crl/issuing.crl").0.starts_with("HTTP/1.1 200"));
    let after = crl(&ca, "issuing.crl").1.number.expect("number");
    assert!(after > before, "CRL number {after} after restart must exceed {before}");
    let (head, _) = ca.get("/crl/issuing.pem");
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("etag"), "{head}");
    let etag = head.lines().find_map(|l| l.strip_prefix("etag: ")).expect("etag").to_owned();
    let (head, body) = ca.request_with(&format!(
        "GET /crl/issuing.pem HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"
    ));
    assert!(head.starts_with("HTTP/1.1 304") && body.is_empty(), "{head}");
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes).replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
}

/// Stock `openssl ocsp` sends a nonce. Past `[ocsp] fresh_signatures_per_second` the responder
/// ignores it (RFC 8954) and sends the pre-signed answer: `successful`, never `tryLater`.
#[test]
fn nonce_requests_past_the_budget_get_the_presigned_answer() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let ca = RunningCa::init_with(d, |toml| {
        let ocsp = toml.find("[ocsp]").expect("an [ocsp] section");
        let line = toml[ocsp..].find("fresh_signatures_per_second = 500").map(|i| ocsp + i).expect("the default");
        toml.replace_range(line..line + "fresh_signatures_per_second = 500".len(), "fresh_signatures_per_second = 5");
    });
    let (station, _) = ca.add_principal(d, "station", "station-1", &["HSTM"]);
    let t = issue(&ca, d, &station, "HSTM01261100000K", "L1");
    let url = format!("http://127.0.0.1:{}/ocsp", ca.http);
    let issuing = ca.dir.join("certs/issuing.pem");
    let args =
        ["ocsp", "-issuer", issuing.to_str().expect("p"), "-cert", &t.pem, "-url", &url, "-noverify", "-resp_text"];
    // A burst of 40 stock clients at once, each with its own nonce (OpenSSL's default).
    let children: Vec<_> = (0..40)
        .map(|_| {
            std::process::Command::new("openssl")
                .args(args)
                .current_dir(d)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("openssl")
        })
        .collect();
    let (mut echoed, mut presigned) = (0, 0);
    for c in children {
        let o = c.wait_with_output().expect("openssl");
        let out = text(&o);
        assert!(o.status.success() && out.contains("OCSP Response Status: successful (0x0)"), "{out}");
        assert!(out.contains("Cert Status: good") && !out.contains("tryLater"), "{out}");
        if out.contains("OCSP Nonce") { echoed += 1 } else { presigned += 1 }
    }
    assert!(echoed >= 1 && presigned >= 1, "{echoed} echoed, {presigned} pre-signed");
    // Without -noverify OpenSSL checks the nonce first: a missing one is a warning, not an error
    // (its SM2 signature check then fails on the distinguishing ID, see NOTES-crates; ours verifies).
    let verifying = [
        "ocsp",
        "-issuer",
        issuing.to_str().expect("p"),
        "-cert",
        &t.pem,
        "-url",
        &url,
        "-CAfile",
        issuing.to_str().expect("p"),
    ];
    let issuing_cert = pki::pem::certificate_from_pem(&std::fs::read_to_string(&issuing).expect("pem")).expect("cert");
    let id = pki::ocsp::IssuerHashes::new(&issuing_cert)
        .expect("hashes")
        .cert_id(pki::ocsp::CertIdHash::Sha1, &CertSerial::from_hex(&t.cert_serial).expect("serial"));
    let mut warned = String::new();
    for _ in 0..5 {
        // Spend this second's budget, then ask.
        for i in 0..10u32 {
            ca.post(
                "/ocsp",
                &pki::ocsp::build_request(std::slice::from_ref(&id), Some(&i.to_be_bytes())).expect("request"),
            );
        }
        let (_, out) = openssl(d, &verifying);
        if out.contains("WARNING: no nonce in response") {
            warned = out;
            break;
        }
    }
    assert!(warned.contains(&format!("{}: good", t.pem)) && !warned.contains("Nonce Verify error"), "{warned}");
    let (_, metrics) = ca.get("/metrics");
    let ignored = String::from_utf8_lossy(&metrics)
        .lines()
        .find_map(|l| l.strip_prefix("hsca_ocsp_nonces_ignored_total ").map(|n| n.parse::<u64>().expect("count")))
        .expect("the counter");
    assert!(ignored >= presigned, "{ignored}");
}

#[test]
fn without_a_delegated_responder_the_ca_signs_ocsp_itself() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let ca = RunningCa::init_with(d, |toml| {
        let ocsp = toml.find("[ocsp]").expect("an [ocsp] section");
        let line = toml[ocsp..].find("key_label").map(|i| ocsp + i).expect("its key_label");
        let end = toml[line..].find('\n').map_or(toml.len(), |e| line + e + 1);
        toml.replace_range(line..end, "");
    });
    let (station, _) = ca.add_principal(d, "station", "station-1", &["HSTM"]);
    let t = issue(&ca, d, &station, "HSTM01261100000K", "L1");
    let (code, out) = verify(&ca, &t, d, "--ocsp");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("signed by the issuing CA"), "{out}");
    assert!(!ca.dir.join("certs/ocsp-signer.pem").exists(), "no responder certificate is made");
}

#[test]
fn a_revoked_terminal_comes_back_only_through_a_rekey_two_admins_decide() {
    let tmp = tempfile::tempdir().expect("tmp");
    let d = tmp.path();
    let ca = RunningCa::init(d);
    let (station, _) = ca.add_principal(d, "station", "station-1", &["HSTM"]);
    let t = issue(&ca, d, &station, "HSTM01261100000K", "L1");
    let o = ca.admin(&["revoke", "--terminal", t.serial, "--reason", "key-compromise"]);
    assert!(o.status.success(), "{}", text(&o));
    let subj = format!("/CN={0}/serialNumber={0}", t.serial);
    assert!(openssl(d, &["genpkey", "-algorithm", "SM2", "-out", "new.key"]).0);
    let (ok, out) = openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "new.key",
            "-sm3",
            "-sigopt",
            "distid:1234567812345678",
            "-subj",
            &subj,
            "-out",
            "new.csr",
        ],
    );
    assert!(ok, "{out}");
    let csr = d.join("new.csr");
    let csr = csr.to_str().expect("utf8");
    // The old key never comes back, the new one only when a second admin says so.
    let old_csr = d.join(format!("{}.csr", t.serial));
    let o =
        ca.admin(&["rekey", "--terminal", t.serial, "--csr", old_csr.to_str().expect("p"), "--station", "station-1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("KEY_COMPROMISED") || text(&o).contains("KEY_REUSED"), "{}", text(&o));
    let o = ca.admin(&["--json", "rekey", "--terminal", t.serial, "--csr", csr, "--station", "station-1"]);
    assert!(o.status.success(), "{}", text(&o));
    let asked: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let id = asked["id"].as_str().expect("id");
    let out = d.join("new.pem");
    let out = out.to_str().expect("utf8");
    let o = ca.admin(&["approvals", "approve", id, "--out", out]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("SAME_APPROVER") && !d.join("new.pem").exists(), "{}", text(&o));
    let o = std::process::Command::new(common::CACTL)
        .arg("--identity")
        .arg(ca.dir.join("identities/admin-2/identity.toml"))
        .args(["approvals", "approve", id, "--out", out])
        .output()
        .expect("cactl");
    assert!(o.status.success() && text(&o).contains("issued"), "{}", text(&o));
    let issuing = ca.dir.join("certs/issuing.pem");
    let (ok, v) = openssl(
        d,
        &[
            "verify",
            "-vfyopt",
            "distid:1234567812345678",
            "-partial_chain",
            "-CAfile",
            issuing.to_str().expect("p"),
            "new.pem",
        ],
    );
    assert!(ok && v.contains("OK"), "{v}");
    let o = ca.admin(&["--json", "terminal", "show", "--serial", t.serial]);
    let row: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(row["state"].as_str(), Some("issued"), "re-keyed, waiting for its station: {row}");
}
