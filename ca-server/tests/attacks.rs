//! Issue 11's attacks, each against the real `ca-server` binary over gRPC/TLS: a station moving a
//! deployed terminal onto a key of its choosing, an administrator approving their own request
//! through a second identity they made, forged requests locking out a station, anonymous traffic
//! growing the audit log, and a request replayed across a restart. Each is refused with a named
//! reason (SECURITY.md names these tests).

use std::time::Duration;

use hsm::backend::memory::SoftwareSm2Key;
use pki::SignerId;
use proto::client::{Client, request_id};
use proto::v1::{self, Reason};
use tonic::Code;

mod common;
use common::*;

on_both_backends!(
    a_station_cannot_move_a_deployed_terminal_onto_a_key_of_its_choosing,
    an_admin_cannot_approve_their_own_request_through_an_admin_they_made
);

async fn confirm(c: &Client, terminal: &str, cert: &str) -> Result<v1::ConfirmProvisioningResponse, tonic::Status> {
    let msg = v1::ConfirmProvisioningRequest {
        request_id: request_id(),
        terminal_serial: terminal.into(),
        certificate_serial: cert.into(),
        duration_ms: 1000,
        firmware_version: "1.0".into(),
    };
    let signed = c.signed("/hsca.v1.CertificateAuthority/ConfirmProvisioning", msg).expect("sign");
    v1::certificate_authority_client::CertificateAuthorityClient::new(c.channel.clone())
        .confirm_provisioning(signed)
        .await
        .map(|r| r.into_inner())
}

fn admin_rpc(c: &Client) -> v1::admin_client::AdminClient<tonic::transport::Channel> {
    v1::admin_client::AdminClient::new(c.channel.clone())
}

async fn request_rekey(c: &Client, terminal: &str, csr: Vec<u8>, station: &str) -> Result<v1::Approval, tonic::Status> {
    let msg = v1::RequestRekeyRequest {
        request_id: request_id(),
        terminal_serial: terminal.into(),
        csr_der: csr,
        station: station.into(),
        reason: v1::RevocationReason::Superseded as i32,
    };
    admin_rpc(c)
        .request_rekey(c.signed("/hsca.v1.Admin/RequestRekey", msg).expect("sign"))
        .await
        .map(|r| r.into_inner())
}

async fn decide(c: &Client, id: &str, approve: bool) -> Result<v1::Approval, tonic::Status> {
    let msg = v1::DecideApprovalRequest { request_id: request_id(), id: id.into(), approve };
    admin_rpc(c)
        .decide_approval(c.signed("/hsca.v1.Admin/DecideApproval", msg).expect("sign"))
        .await
        .map(|r| r.into_inner())
}

async fn get_terminal(c: &Client, serial: &str) -> Result<v1::Terminal, tonic::Status> {
    let msg = v1::GetTerminalRequest { request_id: request_id(), serial: serial.into() };
    v1::registry_client::RegistryClient::new(c.channel.clone())
        .get_terminal(c.signed("/hsca.v1.Registry/GetTerminal", msg).expect("sign"))
        .await
        .map(|r| r.into_inner())
}

/// The audit log's entries with `action`, read from the registry of a stopped server.
fn audited(store: &Store, action: &str) -> Vec<registry::AuditEntry> {
    let reg = store.open();
    reg.audit_tail(1_000_000).expect("audit").into_iter().filter(|e| e.event.action == action).collect()
}

async fn a_station_cannot_move_a_deployed_terminal_onto_a_key_of_its_choosing(backend: Backend) {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let (_, http) = init(&dir);
    let store = use_backend(backend, &dir);
    let server = Server::start(&dir, http);
    let admin = admin(&dir).await;
    let (station, _) = principal(&dir, &admin, "station-1", "station", &["HSTM"]).await;
    let (station2, _) = principal(&dir, &admin, "station-2", "station", &["HSTM"]).await;
    let (other_maker, _) = principal(&dir, &admin, "station-x", "station", &["ABCD"]).await;
    let t = serial(1);
    let first = issue(
        &station,
        issue_req(
            &t,
            v1::TerminalClass::ClassIi,
            csr_for(&SoftwareSm2Key::generate(SignerId::default()).expect("k"), &t),
        ),
    )
    .await
    .expect("issued");

    // Before provisioning, the issuing station may replace its own certificate; another station may not.
    let mut again = issue_req(
        &t,
        v1::TerminalClass::ClassIi,
        csr_for(&SoftwareSm2Key::generate(SignerId::default()).expect("k"), &t),
    );
    again.reissue = true;
    assert_eq!(
        refused(issue(&station2, again.clone()).await),
        (Code::PermissionDenied, Reason::IssuedByAnotherStation)
    );
    let second = issue(&station, again).await.expect("own reissue before provisioning");
    assert_eq!(second.superseded_serial, first.certificate_serial);

    // Only the issuing station confirms; a station sees only its manufacturers' terminals.
    assert_eq!(
        refused(confirm(&station2, &t, &second.certificate_serial).await),
        (Code::PermissionDenied, Reason::IssuedByAnotherStation)
    );
    assert_eq!(refused(get_terminal(&other_maker, &t).await), (Code::PermissionDenied, Reason::ManufacturerNotAllowed));
    confirm(&station, &t, &second.certificate_serial).await.expect("confirm");
    assert_eq!(get_terminal(&station, &t).await.expect("own maker").state, v1::TerminalState::Provisioned as i32);

    // Provisioned: a station's reissue is a re-key, which needs two administrators.
    let mut rekey = issue_req(
        &t,
        v1::TerminalClass::ClassIi,
        csr_for(&SoftwareSm2Key::generate(SignerId::default()).expect("k"), &t),
    );
    rekey.reissue = true;
    assert_eq!(refused(issue(&station, rekey).await), (Code::FailedPrecondition, Reason::RekeyNeedsApproval));
    // Another class than the registered one is refused.
    let t2 = serial(2);
    let mut reg = v1::RegisterTerminalRequest {
        request_id: request_id(),
        serial: t2.clone(),
        class: v1::TerminalClass::ClassI as i32,
        ..Default::default()
    };
    reg.model = String::new();
    v1::registry_client::RegistryClient::new(admin.channel.clone())
        .register_terminal(admin.signed("/hsca.v1.Registry/RegisterTerminal", reg).expect("sign"))
        .await
        .expect("register");
    let wrong = issue_req(
        &t2,
        v1::TerminalClass::ClassIi,
        csr_for(&SoftwareSm2Key::generate(SignerId::default()).expect("k"), &t2),
    );
    assert_eq!(refused(issue(&station, wrong).await), (Code::FailedPrecondition, Reason::ClassMismatch));

    // The approved re-key: asked by one admin, never decided by them, done by the second.
    let new_key = SoftwareSm2Key::generate(SignerId::default()).expect("k");
    let asked = request_rekey(&admin, &t, csr_for(&new_key, &t), "station-1").await.expect("rekey asked");
    assert_eq!((asked.kind.as_str(), asked.replaces.as_str()), ("rekey", second.certificate_serial.as_str()));
    assert_eq!(refused(decide(&admin, &asked.id, true).await), (Code::PermissionDenied, Reason::SameApprover));
    let admin2 = admin_named(&dir, "admin-2").await;
    let done = decide(&admin2, &asked.id, true).await.expect("approved by the second admin");
    assert_eq!(done.revoked, vec![second.certificate_serial.clone()]);
    assert!(!done.issued_certificate_serial.is_empty());
    // A key certified before, for any terminal, never comes back.
    let reuse = request_rekey(&admin, &t, csr_for(&new_key, &t), "station-1").await;
    assert_eq!(refused(reuse).1, Reason::KeyReused);

    drop(server);
    let refusals: Vec<_> = audited(&store, "issue")
        .into_iter()
        .chain(audited(&store, "confirm"))
        .filter(|e| e.event.outcome != "ok")
        .map(|e| e.event.outcome)
        .collect();
    for reason in ["ISSUED_BY_ANOTHER_STATION", "REKEY_NEEDS_APPROVAL", "CLASS_MISMATCH"] {
        assert!(refusals.iter().any(|r| r == reason), "{reason} audited: {refusals:?}");
    }
}

async fn an_admin_cannot_approve_their_own_request_through_an_admin_they_made(backend: Backend) {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let (_, http) = init(&dir);
    let _store = use_backend(backend, &dir);
    let _server = Server::start(&dir, http);
    let admin = admin(&dir).await;
    let admin2 = admin_named(&dir, "admin-2").await;

    // The new admin's certificate does nothing until a second admin approves.
    let (sock, answer) = principal_answer(&dir, &admin, "sock-puppet", "admin", &[]).await.expect("asked");
    assert!(!answer.pending_approval.is_empty(), "a new admin waits for approval");
    let list = v1::ListApprovalsRequest { request_id: request_id(), pending_only: true };
    let r =
        admin_rpc(&sock).list_approvals(sock.signed("/hsca.v1.Admin/ListApprovals", list.clone()).expect("sign")).await;
    assert_eq!(refused(r), (Code::PermissionDenied, Reason::CallerPendingApproval));
    assert_eq!(refused(decide(&sock, &answer.pending_approval, true).await).1, Reason::CallerPendingApproval);
    assert_eq!(
        refused(decide(&admin, &answer.pending_approval, true).await),
        (Code::PermissionDenied, Reason::SameApprover)
    );
    decide(&admin2, &answer.pending_approval, true).await.expect("the second admin lets it act");

    // Now active, it still cannot approve what its creator asks.
    let bulk = v1::RequestBulkRevocationRequest {
        request_id: request_id(),
        lot: "L1".into(),
        reason: v1::RevocationReason::Superseded as i32,
        ..Default::default()
    };
    let asked = admin_rpc(&admin)
        .request_bulk_revocation(admin.signed("/hsca.v1.Admin/RequestBulkRevocation", bulk).expect("sign"))
        .await
        .expect("asked")
        .into_inner();
    assert_eq!(refused(decide(&sock, &asked.id, true).await), (Code::PermissionDenied, Reason::ApproverNotIndependent));
    decide(&admin2, &asked.id, true).await.expect("an independent admin may");

    let listed = admin_rpc(&admin)
        .list_approvals(admin.signed("/hsca.v1.Admin/ListApprovals", list).expect("sign"))
        .await
        .expect("list")
        .into_inner();
    assert!(listed.dual_control_available);
    assert_eq!(listed.active_admins.len(), 3, "{:?}", listed.active_admins);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_admin_dual_control_is_reported_unavailable() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let (grpc, http) = (free_port(), free_port());
    let out = std::process::Command::new(EXE)
        .args(["init", "--admins", "1", "--data-dir"])
        .arg(&dir)
        .args(["--grpc", &format!("127.0.0.1:{grpc}"), "--http", &format!("127.0.0.1:{http}")])
        .output()
        .expect("init");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("dual control:         unavailable"));
    assert!(!dir.join("identities/admin-2").exists());
    let _server = Server::start(&dir, http);
    assert!(http_get(http, "/readyz").contains("dual control: unavailable (1 active admin"));
    let admin = admin(&dir).await;
    let list = v1::ListApprovalsRequest { request_id: request_id(), pending_only: true };
    let listed = admin_rpc(&admin)
        .list_approvals(admin.signed("/hsca.v1.Admin/ListApprovals", list).expect("sign"))
        .await
        .expect("list")
        .into_inner();
    assert!(!listed.dual_control_available);
    let bad = std::process::Command::new(EXE)
        .args(["init", "--admins", "0", "--data-dir"])
        .arg(tmp.path().join("x"))
        .output()
        .expect("init");
    assert!(!bad.status.success(), "--admins 0 is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_anonymous_requests_neither_lock_out_a_station_nor_grow_the_audit_log() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let (_, http) = init(&dir);
    let server = Server::start(&dir, http);
    let admin = admin(&dir).await;
    let (station, station_serial) = principal(&dir, &admin, "station-1", "station", &["HSTM"]).await;
    // Forged: the station's public certificate, signed with another key, from the station's address.
    let pdir = dir.join("principal-station-1");
    let id = proto::identity::Identity {
        file: proto::identity::IdentityFile {
            certificate: pdir.join("cert.pem"),
            ..proto::identity::Identity::load(&dir.join("identities/admin/identity.toml")).expect("id").file
        },
        base: dir.join("identities/admin"),
    };
    let forger = Client::connect(&id, None, Box::new(SoftwareSm2Key::generate(SignerId::default()).expect("k")))
        .await
        .expect("connect");
    let chain = v1::GetCaChainRequest { request_id: request_id() };
    let ca = |c: &Client| v1::certificate_authority_client::CertificateAuthorityClient::new(c.channel.clone());
    for _ in 0..10 {
        let r = ca(&forger)
            .get_ca_chain(forger.signed("/hsca.v1.CertificateAuthority/GetCaChain", chain.clone()).expect("sign"))
            .await;
        assert_eq!(refused(r).1, Reason::BadSignature);
    }
    ca(&station)
        .get_ca_chain(station.signed("/hsca.v1.CertificateAuthority/GetCaChain", chain.clone()).expect("sign"))
        .await
        .expect("the station still works after 10 forgeries");

    // 10,000 requests with no credentials at all.
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..20 {
        let mut rpc = ca(&station);
        tasks.spawn(async move {
            for _ in 0..500 {
                let r = rpc
                    .get_ca_chain(tonic::Request::new(v1::GetCaChainRequest { request_id: format!("{worker}") }))
                    .await;
                // The address is over its failure limit by now: refused as rate-limited.
                let code = r.expect_err("anonymous").code();
                assert!(matches!(code, Code::Unauthenticated | Code::ResourceExhausted), "{code:?}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("worker");
    }
    ca(&station)
        .get_ca_chain(station.signed("/hsca.v1.CertificateAuthority/GetCaChain", chain).expect("sign"))
        .await
        .expect("the station still works behind the same address");
    // SIGTERM flushes the tally; every refusal is counted in a handful of entries.
    server.terminate();
    let entries = audited(&use_backend(Backend::Redb, &dir), "auth_refused");
    assert!(entries.len() <= 10, "{} entries for 10,010 refusals", entries.len());
    let counted: u64 =
        entries.iter().filter_map(|e| e.event.detail.split_whitespace().next()?.parse::<u64>().ok()).sum();
    assert_eq!(
        counted,
        10_010,
        "every refusal counted: {:?}",
        entries.iter().map(|e| &e.event.detail).collect::<Vec<_>>()
    );
    let _ = station_serial;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_captured_before_a_restart_cannot_be_replayed_after_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let (_, http) = init(&dir);
    let server = Server::start(&dir, http);
    let admin = admin(&dir).await;
    let (station, _) = principal(&dir, &admin, "station-1", "station", &["HSTM"]).await;
    let ca = || v1::certificate_authority_client::CertificateAuthorityClient::new(station.channel.clone());
    let signed = |n: u32| {
        let t = serial(n);
        let req = issue_req(
            &t,
            v1::TerminalClass::ClassIi,
            csr_for(&SoftwareSm2Key::generate(SignerId::default()).expect("k"), &t),
        );
        station.signed("/hsca.v1.CertificateAuthority/IssueTerminalCertificate", req).expect("sign").into_parts()
    };
    let copy = |p: &(tonic::metadata::MetadataMap, tonic::Extensions, v1::IssueTerminalCertificateRequest)| {
        tonic::Request::from_parts(p.0.clone(), tonic::Extensions::default(), p.2.clone())
    };
    let sent = signed(7);
    let held = signed(8);
    ca().issue_terminal_certificate(copy(&sent)).await.expect("first use");
    assert_eq!(refused(ca().issue_terminal_certificate(copy(&sent)).await).1, Reason::ReplayedNonce);
    server.terminate();

    let _server = Server::start(&dir, http);
    // The server forgot its nonces, but refuses whatever was signed before it started.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        refused(ca().issue_terminal_certificate(copy(&sent)).await),
        (Code::Unauthenticated, Reason::StaleTimestamp)
    );
    assert_eq!(
        refused(ca().issue_terminal_certificate(copy(&held)).await),
        (Code::Unauthenticated, Reason::StaleTimestamp)
    );
    ca().issue_terminal_certificate(copy(&signed(9))).await.expect("a request signed now is fine");
}
