//! End to end: the real `ca-server` binary (`init`, `serve`), spoken to over gRPC/TLS with signed
//! requests, as a station, an admin and an auditor would; OpenSSL checks what comes out.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use hsm::backend::memory::SoftwareSm2Key;
use pki::SignerId;
use proto::client::{Client, request_id};
use proto::v1::{self, Reason};
use tonic::Code;

mod common;
use common::*;

on_both_backends!(
    the_ca_end_to_end,
    registration_switch_and_life_cycle,
    online_backup_and_restore,
    audit_checkpoints_are_signed_by_the_hsm_audit_key,
    retries_racing_with_their_first_call_get_its_certificate
);

/// Retries of one request sent while it still runs (a station that gave up waiting and retried
/// at once): those that passed the replay check before the first one committed are refused by
/// the registry's write, and answered with the first one's certificate after the commit.
async fn retries_racing_with_their_first_call_get_its_certificate(backend: Backend) {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let (_, http) = init(&dir);
    let _store = use_backend(backend, &dir);
    let server = Server::start(&dir, http);
    let admin = admin(&dir).await;
    let (station, _) = principal(&dir, &admin, "station-1", "station", &["HSTM"]).await;
    let station = std::sync::Arc::new(station);
    let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    let s0 = serial(0);
    let req = issue_req(&s0, v1::TerminalClass::ClassIi, csr_for(&key, &s0));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (station, req) = (station.clone(), req.clone());
        calls.spawn(async move { issue(&station, req).await });
    }
    let answers: Vec<_> = calls.join_all().await.into_iter().map(|a| a.expect("every call answered")).collect();
    assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1, "one call issued, the others were answered with it");
    assert!(answers.iter().all(|a| a.certificate_der == answers[0].certificate_der), "one certificate");
    // The signing ran on the CPU pool with the in-process softtoken and redb, on tokio's
    // blocking threads with PostgreSQL (whose reads wait on the network).
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", server.child.id()))
        .expect("the server's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .collect();
    let pooled = threads.iter().filter(|n| n.starts_with("cpu-pool-")).count();
    assert_eq!(pooled > 0, backend == Backend::Redb, "{threads:?}");
    // /metrics: one certificate issued, and the registry writer's work so far.
    let metrics = http_get(http, "/metrics");
    let value = |name: &str| -> f64 {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).expect(name)
    };
    assert_eq!(value("hsca_certificates_issued_total"), 1.0, "{metrics}");
    let (commits, writes) = (value("hsca_registry_commits_total"), value("hsca_registry_writes_total"));
    assert!(commits >= 1.0 && writes >= commits, "{metrics}");
    assert!(value("hsca_registry_writer_busy_seconds_total") > 0.0, "{metrics}");
}

async fn the_ca_end_to_end(backend: Backend) {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let (_, http) = init(&dir);
    let store = use_backend(backend, &dir);
    let server = Server::start(&dir, http);
    assert!(http_get(http, "/healthz").contains("200 OK"));
    assert!(http_get(http, "/readyz").contains("ready"));

    let admin = admin(&dir).await;
    let (station, _) = principal(&dir, &admin, "station-1", "station", &["HSTM"]).await;

    // An OpenSSL-made CSR: the certificate passes openssl verify and our full-chain validator.
    let d = tmp.path();
    openssl(d, &["genpkey", "-algorithm", "SM2", "-out", "t.key"]);
    let s0 = serial(0);
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "t.key",
            "-sm3",
            "-sigopt",
            "distid:1234567812345678",
            "-subj",
            &format!("/CN={s0}/serialNumber={s0}"),
            "-outform",
            "DER",
            "-out",
            "t.csr",
        ],
    );
    let csr = std::fs::read(d.join("t.csr")).expect("csr");
    let first = issue_req(&s0, v1::TerminalClass::ClassIi, csr.clone());
    let resp = issue(&station, first.clone()).await.expect("issued");
    std::fs::write(d.join("t.pem"), pki::pem::der_to_pem("CERTIFICATE", &resp.certificate_der).expect("pem"))
        .expect("w");
    let out = openssl(
        d,
        &[
            "verify",
            "-vfyopt",
            "distid:1234567812345678",
            "-partial_chain",
            "-CAfile",
            dir.join("certs/issuing.pem").to_str().expect("p"),
            "t.pem",
        ],
    );
    assert!(out.contains("t.pem: OK"), "{out}");
    let cert: pki::Certificate = der::Decode::from_der(&resp.certificate_der).expect("der");
    let chain: Vec<pki::Certificate> =
        resp.chain_der.iter().map(|c| der::Decode::from_der(c).expect("chain")).collect();
    pki::validate_chain(&cert, &chain[..1], &chain[1], SystemTime::now(), &SignerId::default())
        .expect("full chain validates");

    // Idempotency and the one-certificate rule.
    let again = issue(&station, first.clone()).await.expect("retry");
    assert!(again.replayed && again.certificate_der == resp.certificate_der, "same request id, same certificate");
    assert_eq!(
        refused(issue(&station, issue_req(&s0, v1::TerminalClass::ClassIi, csr.clone())).await),
        (Code::FailedPrecondition, Reason::AlreadyHasActiveCertificate)
    );
    let s1 = serial(1);
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "t.key",
            "-sm3",
            "-sigopt",
            "distid:1234567812345678",
            "-subj",
            &format!("/CN={s1}/serialNumber={s1}"),
            "-outform",
            "DER",
            "-out",
            "t1.csr",
        ],
    );
    let same_key = std::fs::read(d.join("t1.csr")).expect("csr");
    assert_eq!(
        refused(issue(&station, issue_req(&s1, v1::TerminalClass::ClassIi, same_key)).await),
        (Code::FailedPrecondition, Reason::PublicKeyInUse)
    );

    // Bad requests, each with its reason.
    let k = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    let s2 = serial(2);
    let bad_check = format!("{}{}", &s2[..15], if s2.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        refused(issue(&station, issue_req("HSTM0126", v1::TerminalClass::ClassI, csr_for(&k, &s2))).await).1,
        Reason::BadSerial
    );
    assert_eq!(
        refused(issue(&station, issue_req(&bad_check, v1::TerminalClass::ClassI, csr_for(&k, &bad_check))).await).1,
        Reason::BadCheckCharacter
    );
    assert_eq!(
        refused(issue(&station, issue_req(&s2, v1::TerminalClass::Unspecified, csr_for(&k, &s2))).await).1,
        Reason::UnknownClass
    );
    assert_eq!(
        refused(issue(&station, issue_req(&s2, v1::TerminalClass::ClassI, b"not a csr".to_vec())).await).1,
        Reason::BadCsr
    );
    assert_eq!(
        refused(issue(&station, issue_req(&s2, v1::TerminalClass::ClassI, csr_for(&k, &s1))).await).1,
        Reason::CsrSubjectMismatch
    );

    // Roles: a station cannot revoke, an auditor cannot issue.
    let revoke = v1::RevokeCertificateRequest {
        request_id: request_id(),
        certificate_serial: resp.certificate_serial.clone(),
        terminal_serial: String::new(),
        reason: 1,
        invalidity_ms: 0,
    };
    let r = v1::admin_client::AdminClient::new(station.channel.clone())
        .revoke_certificate(station.signed("/hsca.v1.Admin/RevokeCertificate", revoke.clone()).expect("s"))
        .await;
    assert_eq!(refused(r), (Code::PermissionDenied, Reason::RoleForbidden));
    let (auditor, _) = principal(&dir, &admin, "auditor-1", "auditor", &[]).await;
    assert_eq!(
        refused(issue(&auditor, issue_req(&s2, v1::TerminalClass::ClassI, csr_for(&k, &s2))).await),
        (Code::PermissionDenied, Reason::RoleForbidden)
    );

    // Request authentication: replayed, tampered, stale.
    let mut ca = v1::certificate_authority_client::CertificateAuthorityClient::new(station.channel.clone());
    let chain_req = v1::GetCaChainRequest { request_id: request_id() };
    let signed = station.signed("/hsca.v1.CertificateAuthority/GetCaChain", chain_req.clone()).expect("s");
    let md = signed.metadata().clone();
    ca.get_ca_chain(signed).await.expect("first use");
    let mut replay = tonic::Request::new(chain_req.clone());
    *replay.metadata_mut() = md.clone();
    assert_eq!(refused(ca.get_ca_chain(replay).await).1, Reason::ReplayedNonce);
    let mut tampered = tonic::Request::new(v1::GetCaChainRequest { request_id: "other".into() });
    *tampered.metadata_mut() = md;
    tampered.metadata_mut().insert(proto::signing::NONCE, "0123456789abcdef0123456789abcdef".parse().expect("ascii"));
    assert_eq!(refused(ca.get_ca_chain(tampered).await).1, Reason::BadSignature);
    let mut stale = station.signed("/hsca.v1.CertificateAuthority/GetCaChain", chain_req.clone()).expect("s");
    let old =
        (SystemTime::now() - Duration::from_secs(600)).duration_since(SystemTime::UNIX_EPOCH).expect("t").as_millis();
    stale.metadata_mut().insert(proto::signing::TIME, old.to_string().parse().expect("ascii"));
    assert_eq!(refused(ca.get_ca_chain(stale).await).1, Reason::StaleTimestamp);
    assert_eq!(
        refused(ca.get_ca_chain(tonic::Request::new(chain_req.clone())).await),
        (Code::Unauthenticated, Reason::MissingSignature)
    );

    // A revoked caller certificate is refused.
    let (station2, station2_cert) = principal(&dir, &admin, "station-2", "station", &["HSTM"]).await;
    let rv = v1::RevokeCertificateRequest {
        request_id: request_id(),
        certificate_serial: station2_cert,
        terminal_serial: String::new(),
        reason: 1,
        invalidity_ms: 0,
    };
    v1::admin_client::AdminClient::new(admin.channel.clone())
        .revoke_certificate(admin.signed("/hsca.v1.Admin/RevokeCertificate", rv).expect("s"))
        .await
        .expect("admin revokes");
    assert_eq!(
        refused(issue(&station2, issue_req(&s2, v1::TerminalClass::ClassI, csr_for(&k, &s2))).await).1,
        Reason::CallerRevoked
    );

    // 32 concurrent issues for distinct terminals: no error, no duplicate serial.
    let mut tasks = Vec::new();
    for n in 100..132u32 {
        let c = principal(&dir, &admin, &format!("bulk-{n}"), "station", &["HSTM"]).await.0;
        tasks.push(tokio::spawn(async move {
            let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
            let s = serial(n);
            issue(&c, issue_req(&s, v1::TerminalClass::ClassIii, csr_for(&key, &s)))
                .await
                .expect("concurrent issue")
                .certificate_serial
        }));
    }
    let mut serials = Vec::new();
    for t in tasks {
        serials.push(t.await.expect("task"));
    }
    let unique: std::collections::BTreeSet<_> = serials.iter().collect();
    assert_eq!(unique.len(), 32);

    // Every refusal above was audited, and the chain verifies: the RA's and the registry's one
    // by one, failed authentications in aggregate (one entry per source and interval, with counts).
    let audit = verify_audit(&admin, 500).await;
    assert!(audit.chain_verified, "{}", audit.chain_error);
    for reason in [
        "ALREADY_HAS_ACTIVE_CERTIFICATE",
        "PUBLIC_KEY_IN_USE",
        "BAD_SERIAL",
        "BAD_CHECK_CHARACTER",
        "UNKNOWN_CLASS",
        "BAD_CSR",
        "CSR_SUBJECT_MISMATCH",
    ] {
        assert!(audit.entries.iter().any(|e| e.outcome == reason), "no audit entry with outcome {reason}");
    }
    let deadline = Instant::now() + ca_server::serve::REFUSAL_INTERVAL + Duration::from_secs(5);
    let auth_reasons =
        ["ROLE_FORBIDDEN", "REPLAYED_NONCE", "BAD_SIGNATURE", "STALE_TIMESTAMP", "MISSING_SIGNATURE", "CALLER_REVOKED"];
    loop {
        let audit = verify_audit(&admin, 500).await;
        let tallies: Vec<&str> =
            audit.entries.iter().filter(|e| e.action == "auth_refused").map(|e| e.detail.as_str()).collect();
        let missing: Vec<&str> =
            auth_reasons.iter().copied().filter(|r| !tallies.iter().any(|d| d.contains(&format!("{r} x")))).collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "refusals {missing:?} not audited: {tallies:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop((admin, station, station2, auditor));

    // SIGKILL, restart: every returned certificate is there; then tamper with the audit table.
    server.kill();
    let server = Server::start(&dir, http);
    let admin = self::admin(&dir).await;
    let mut ca = v1::certificate_authority_client::CertificateAuthorityClient::new(admin.channel.clone());
    for s in serials.iter().chain([&resp.certificate_serial]) {
        let req = v1::GetCertificateRequest { request_id: request_id(), certificate_serial: s.clone() };
        ca.get_certificate(admin.signed("/hsca.v1.CertificateAuthority/GetCertificate", req).expect("s"))
            .await
            .expect("durable after SIGKILL");
    }
    let dir_path = server.dir.clone();
    drop(admin);
    server.kill();
    let reg = store.open();
    reg.verify_audit_chain().expect("intact");
    let raw = reg.raw_audit(3).expect("raw").expect("entry 3");
    let mut edited = raw.clone();
    let at = edited.iter().position(|b| *b == b'o').expect("a byte to change");
    edited[at] = b'0';
    reg.tamper_audit(3, Some(edited)).expect("tamper");
    assert!(reg.verify_audit_chain().is_err(), "an edited audit byte is detected");
    drop(reg);
    let server = Server::start(&dir_path, http);
    let admin = self::admin(&dir_path).await;
    let audit = verify_audit(&admin, 1).await;
    assert!(!audit.chain_verified && audit.chain_error.contains("entry 3"), "{audit:?}");
    drop(admin);

    // SIGTERM: a graceful exit.
    let mut server = server;
    let pid = server.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
    let status = server.child.wait().expect("wait");
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
}

async fn registration_switch_and_life_cycle(backend: Backend) {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let (_, http) = init(&dir);
    let _store = use_backend(backend, &dir);
    // Turn the production switch on.
    let cfg = std::fs::read_to_string(dir.join("ca-server.toml")).expect("config");
    assert!(cfg.contains("require_registration = false"), "development default is off");
    std::fs::write(
        dir.join("ca-server.toml"),
        cfg.replace("require_registration = false", "require_registration = true"),
    )
    .expect("write");
    let _server = Server::start(&dir, http);
    let admin = admin(&dir).await;
    let (station, _) = principal(&dir, &admin, "station-1", "station", &["HSTM"]).await;
    let (operator, _) = principal(&dir, &admin, "operator-1", "operator", &[]).await;
    let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    let s = serial(7);
    let req = issue_req(&s, v1::TerminalClass::ClassIii, csr_for(&key, &s));
    assert_eq!(refused(issue(&station, req.clone()).await), (Code::FailedPrecondition, Reason::TerminalNotRegistered));

    let mut reg = v1::registry_client::RegistryClient::new(operator.channel.clone());
    let register = v1::RegisterTerminalRequest {
        request_id: request_id(),
        serial: s.clone(),
        class: v1::TerminalClass::ClassIii as i32,
        model: String::new(),
        lot: "LOT-9".into(),
    };
    // A model or lot past the bound: the same refusal on both backends (PostgreSQL could not
    // index it), nothing stored.
    let long_model =
        v1::RegisterTerminalRequest { request_id: request_id(), model: "M".repeat(65), ..register.clone() };
    let long_lot = v1::RegisterTerminalRequest { request_id: request_id(), lot: "L".repeat(3000), ..register.clone() };
    for long in [long_model, long_lot] {
        let refusal =
            reg.register_terminal(operator.signed("/hsca.v1.Registry/RegisterTerminal", long).expect("s")).await;
        assert_eq!(refused(refusal), (Code::InvalidArgument, Reason::BadRequest));
    }
    let t = reg
        .register_terminal(operator.signed("/hsca.v1.Registry/RegisterTerminal", register.clone()).expect("s"))
        .await
        .expect("operator registers")
        .into_inner();
    assert_eq!(t.state, v1::TerminalState::Registered as i32);
    let again = v1::RegisterTerminalRequest { request_id: request_id(), ..register };
    assert_eq!(
        refused(reg.register_terminal(operator.signed("/hsca.v1.Registry/RegisterTerminal", again).expect("s")).await)
            .1,
        Reason::TerminalExists
    );

    let long_lot =
        v1::IssueTerminalCertificateRequest { request_id: request_id(), lot: "L".repeat(3000), ..req.clone() };
    assert_eq!(refused(issue(&station, long_lot).await), (Code::InvalidArgument, Reason::BadRequest));
    let resp = issue(&station, req).await.expect("issued once registered");
    // Activation needs the device to have confirmed the write first. (The administrator's manual
    // override here; proof of presence is in tests/activation.rs.)
    let activate = v1::ActivateTerminalRequest {
        request_id: request_id(),
        serial: s.clone(),
        institution: "No. 1 Hospital".into(),
        latitude: 31.23,
        longitude: 121.47,
        manual: true,
        ..Default::default()
    };
    let mut admin_reg = v1::registry_client::RegistryClient::new(admin.channel.clone());
    assert_eq!(
        refused(
            admin_reg
                .activate_terminal(admin.signed("/hsca.v1.Registry/ActivateTerminal", activate.clone()).expect("s"))
                .await
        )
        .1,
        Reason::WrongState
    );
    let confirm = v1::ConfirmProvisioningRequest {
        request_id: request_id(),
        terminal_serial: s.clone(),
        certificate_serial: resp.certificate_serial.clone(),
        duration_ms: 2400,
        firmware_version: "1.0.3".into(),
    };
    v1::certificate_authority_client::CertificateAuthorityClient::new(station.channel.clone())
        .confirm_provisioning(station.signed("/hsca.v1.CertificateAuthority/ConfirmProvisioning", confirm).expect("s"))
        .await
        .expect("confirm");
    let a = admin_reg
        .activate_terminal(admin.signed("/hsca.v1.Registry/ActivateTerminal", activate).expect("s"))
        .await
        .expect("activate")
        .into_inner();
    assert_eq!((a.method.as_str(), a.institution.as_str()), ("manual", "No. 1 Hospital"));
    let bad = v1::ActivateTerminalRequest {
        request_id: request_id(),
        serial: s.clone(),
        institution: "x".into(),
        latitude: 120.0,
        longitude: 0.0,
        ..Default::default()
    };
    assert_eq!(
        refused(reg.activate_terminal(operator.signed("/hsca.v1.Registry/ActivateTerminal", bad).expect("s")).await).1,
        Reason::BadRequest
    );
    let log = reg
        .list_activations(
            operator
                .signed(
                    "/hsca.v1.Registry/ListActivations",
                    v1::ListActivationsRequest { request_id: request_id(), serial: s.clone() },
                )
                .expect("s"),
        )
        .await
        .expect("list")
        .into_inner();
    assert_eq!(log.activations.len(), 1);
    let shown = reg
        .get_terminal(
            operator
                .signed(
                    "/hsca.v1.Registry/GetTerminal",
                    v1::GetTerminalRequest { request_id: request_id(), serial: s.clone() },
                )
                .expect("s"),
        )
        .await
        .expect("get")
        .into_inner();
    assert_eq!((shown.state, shown.lot.as_str()), (v1::TerminalState::Active as i32, "LOT-9"));
    let lot =
        v1::ListTerminalsRequest { request_id: request_id(), page_size: 10, lot: "LOT-9".into(), ..Default::default() };
    assert_eq!(
        reg.list_terminals(operator.signed("/hsca.v1.Registry/ListTerminals", lot).expect("s"))
            .await
            .expect("list")
            .into_inner()
            .terminals
            .len(),
        1
    );
    // The overview's counts: the same terminals the list pages through; a station may not ask.
    let all = v1::ListTerminalsRequest { request_id: request_id(), page_size: 1000, ..Default::default() };
    let listed = reg
        .list_terminals(operator.signed("/hsca.v1.Registry/ListTerminals", all).expect("s"))
        .await
        .expect("list")
        .into_inner()
        .terminals;
    let count = || v1::CountTerminalsRequest { request_id: request_id(), ..Default::default() };
    let counts = reg
        .count_terminals(operator.signed("/hsca.v1.Registry/CountTerminals", count()).expect("s"))
        .await
        .expect("count")
        .into_inner();
    assert_eq!(counts.total, listed.len() as u64);
    let active = listed.iter().filter(|t| t.state == v1::TerminalState::Active as i32).count() as u64;
    assert_eq!(counts.by_state.get("active").copied().unwrap_or(0), active);
    assert!(active >= 1);
    assert_eq!(counts.by_state.values().sum::<u64>(), counts.total);
    assert_eq!(counts.by_class.values().sum::<u64>(), counts.total);
    assert_eq!(counts.by_manufacturer.get("HSTM").copied(), Some(counts.total));
    // Hourly counts only when asked; asked from hour 1, the server answers its last 31 days.
    assert!(counts.hourly.is_empty());
    let hourly = v1::CountTerminalsRequest { request_id: request_id(), hourly_since_hour: 1 };
    let hourly = reg
        .count_terminals(operator.signed("/hsca.v1.Registry/CountTerminals", hourly).expect("s"))
        .await
        .expect("count")
        .into_inner()
        .hourly;
    let of = |kind: &str| hourly.iter().filter(|h| h.kind == kind).map(|h| h.n).sum::<u64>();
    assert!(of("issued") >= 1 && of("provisioned") >= 1, "{hourly:?}");
    assert!(hourly.iter().all(|h| !h.station.is_empty()), "{hourly:?}");
    let r = reg.count_terminals(station.signed("/hsca.v1.Registry/CountTerminals", count()).expect("s")).await;
    assert_eq!(refused(r), (Code::PermissionDenied, Reason::RoleForbidden));

    // Revoking the terminal's certificate: status says so, and a plain re-issue is refused.
    let revoke = v1::RevokeCertificateRequest {
        request_id: request_id(),
        certificate_serial: String::new(),
        terminal_serial: s.clone(),
        reason: v1::RevocationReason::KeyCompromise as i32,
        invalidity_ms: 0,
    };
    v1::admin_client::AdminClient::new(admin.channel.clone())
        .revoke_certificate(admin.signed("/hsca.v1.Admin/RevokeCertificate", revoke).expect("s"))
        .await
        .expect("revoke");
    let st = v1::certificate_authority_client::CertificateAuthorityClient::new(operator.channel.clone())
        .get_certificate_status(
            operator
                .signed(
                    "/hsca.v1.CertificateAuthority/GetCertificateStatus",
                    v1::GetCertificateStatusRequest {
                        request_id: request_id(),
                        certificate_serial: resp.certificate_serial.clone(),
                    },
                )
                .expect("s"),
        )
        .await
        .expect("status")
        .into_inner();
    assert_eq!(
        (st.state, st.reason),
        (v1::certificate_status::State::Revoked as i32, v1::RevocationReason::KeyCompromise as i32)
    );
    let key2 = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    assert_eq!(
        refused(issue(&station, issue_req(&s, v1::TerminalClass::ClassIii, csr_for(&key2, &s))).await).1,
        Reason::RekeyNeedsApproval,
        "a revoked terminal comes back only through an approved re-key"
    );
}

async fn online_backup_and_restore(backend: Backend) {
    use sm3::Digest;
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let (_, http) = init(&dir);
    let store = use_backend(backend, &dir);
    let server = Server::start(&dir, http);
    let admin = admin(&dir).await;
    let (station, _) = principal(&dir, &admin, "station-1", "station", &["HSTM"]).await;
    let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    let issued = issue(&station, issue_req(&serial(3), v1::TerminalClass::ClassI, csr_for(&key, &serial(3))))
        .await
        .expect("issue");

    let r = v1::admin_client::AdminClient::new(station.channel.clone())
        .backup(station.signed("/hsca.v1.Admin/Backup", v1::BackupRequest { request_id: request_id() }).expect("s"))
        .await;
    assert_eq!(refused(r), (Code::PermissionDenied, Reason::RoleForbidden));
    let mut stream = v1::admin_client::AdminClient::new(admin.channel.clone())
        .backup(admin.signed("/hsca.v1.Admin/Backup", v1::BackupRequest { request_id: request_id() }).expect("s"))
        .await
        .expect("backup")
        .into_inner();
    let mut bytes = Vec::new();
    let mut digest = String::new();
    while let Some(chunk) = stream.message().await.expect("chunk") {
        bytes.extend_from_slice(&chunk.data);
        if chunk.last {
            digest = chunk.sm3;
        }
    }
    assert_eq!(hex::encode(sm3::Sm3::digest(&bytes)), digest);
    let backup = tmp.path().join("backup.redb");
    std::fs::write(&backup, &bytes).expect("write");
    drop((admin, station));
    server.kill();

    // Disaster: the registry is lost. Restore refuses to overwrite, then restores.
    let out = Command::new(EXE)
        .args(["restore", "--config"])
        .arg(dir.join("ca-server.toml"))
        .arg("--from")
        .arg(&backup)
        .output()
        .expect("restore");
    assert!(!out.status.success(), "restore over an existing registry must be refused");
    // On PostgreSQL the backup (a redb file) goes into a new, empty database with migrate --from.
    let _fresh = match &store.pg {
        None => {
            std::fs::rename(dir.join("registry.redb"), tmp.path().join("lost.redb")).expect("move away");
            None
        }
        Some(lost) => {
            let fresh = registry::testing::PgServer::start().expect("a new PostgreSQL server");
            let config = dir.join("ca-server.toml");
            let text = std::fs::read_to_string(&config).expect("read");
            std::fs::write(&config, text.replace(&lost.url(), &fresh.url())).expect("write");
            Some(fresh)
        }
    };
    let verb = if store.pg.is_some() { "migrate" } else { "restore" };
    let out = Command::new(EXE)
        .args([verb, "--config"])
        .arg(dir.join("ca-server.toml"))
        .arg("--from")
        .arg(&backup)
        .output()
        .expect("restore");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("audit chain verified"));
    drop(store);
    let _server = Server::start(&dir, http);
    let admin = self::admin(&dir).await;
    let req =
        v1::GetCertificateRequest { request_id: request_id(), certificate_serial: issued.certificate_serial.clone() };
    let info = v1::certificate_authority_client::CertificateAuthorityClient::new(admin.channel.clone())
        .get_certificate(admin.signed("/hsca.v1.CertificateAuthority/GetCertificate", req).expect("s"))
        .await
        .expect("restored certificate")
        .into_inner();
    assert_eq!(info.certificate_der, issued.certificate_der);
}

/// `ListAudit` of the last `last` entries, with the whole chain verified.
async fn verify_audit(client: &Client, last: u32) -> v1::ListAuditResponse {
    let req = v1::ListAuditRequest { request_id: request_id(), last, verify: true, ..Default::default() };
    v1::admin_client::AdminClient::new(client.channel.clone())
        .list_audit(client.signed("/hsca.v1.Admin/ListAudit", req).expect("s"))
        .await
        .expect("audit")
        .into_inner()
}

async fn audit_checkpoints_are_signed_by_the_hsm_audit_key(backend: Backend) {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let (_, http) = init(&dir);
    let store = use_backend(backend, &dir);
    let config = dir.join("ca-server.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(text.contains("key_label = \"hsca-audit\""), "init configures the audit key:\n{text}");
    std::fs::write(&config, text.replace("checkpoint_seconds = 60", "checkpoint_seconds = 1")).expect("write");

    let server = Server::start(&dir, http);
    let admin = admin(&dir).await;
    principal(&dir, &admin, "station-1", "station", &["HSTM"]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let signed = loop {
        let v = verify_audit(&admin, 1).await;
        assert!(v.chain_verified && v.checkpoint_key_configured, "{v:?}");
        if v.checkpoints_verified > 0 {
            break v;
        }
        assert!(Instant::now() < deadline, "no checkpoint within 20 s: {v:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(signed.last_checkpoint_seq >= 2, "{signed:?}");
    drop(admin);
    server.kill();

    // A forger with the database file rewrites entry 2 and re-chains every later hash: the
    // hash chain alone holds, the signed checkpoint does not.
    let reg = store.open();
    let mut entry = reg.audit_tail(usize::MAX).expect("tail").into_iter().nth(1).expect("entry 2");
    entry.event.actor = "nobody".into();
    reg.rewrite_audit(2, &entry.event).expect("rewrite");
    assert!(matches!(
        reg.verify_audit_chain(),
        Err(registry::RegistryError::Audit(registry::ChainBreak::CheckpointMismatch { .. }))
    ));
    drop(reg);
    // The anchor log outside the registry names a head the rewritten chain lacks: serve refuses.
    let out = Command::new(EXE).args(["serve", "--config"]).arg(&config).output().expect("serve");
    assert!(!out.status.success(), "serve must refuse a rewritten chain");
    assert!(String::from_utf8_lossy(&out.stderr).contains("rewritten or rolled back"), "{out:?}");
    // Started anyway (audited), the signed checkpoint still shows the rewrite.
    let server = Server::start_with(&dir, http, &["--accept-audit-rollback"]);
    let admin = self::admin(&dir).await;
    let v = verify_audit(&admin, 1).await;
    assert!(!v.chain_verified && v.chain_error.contains("rewritten"), "{v:?}");
    drop(admin);
    server.kill();
}
