//! Proof-of-presence activation and `hold_until_activation` (issue 14 item 3), against the real
//! `ca-server` binary: certificates issued on the activation hold; a statement signed by the
//! terminal's key over a fresh challenge, carried in the operator's signed request, lifts it;
//! every forgery, replay and mismatch is refused with its reason; no other hold is ever lifted.

mod common;

use common::*;
use hsm::Signer as _;
use hsm::backend::memory::SoftwareSm2Key;
use pki::SignerId;
use proto::client::{Client, request_id};
use proto::v1::{self, Reason};
use tonic::Code;

/// `init` a CA with `hold_until_activation` on (and challenges valid `challenge_seconds`), started.
async fn held_ca(dir: &std::path::Path, challenge_seconds: u64) -> (Server, Client, Client, Client) {
    held_ca_with(dir, challenge_seconds, 20).await
}

/// As [`held_ca`], with `per_operator` unused challenges allowed per operator.
async fn held_ca_with(
    dir: &std::path::Path,
    challenge_seconds: u64,
    per_operator: u64,
) -> (Server, Client, Client, Client) {
    let (_, http) = init(dir);
    let cfg_path = dir.join("ca-server.toml");
    let cfg = std::fs::read_to_string(&cfg_path).expect("config");
    assert!(cfg.contains("hold_until_activation = false"), "off by default: {cfg}");
    let cfg = cfg
        .replace("hold_until_activation = false", "hold_until_activation = true")
        .replace("activation_challenge_seconds = 300", &format!("activation_challenge_seconds = {challenge_seconds}"))
        .replace(
            "activation_challenges_per_operator = 20",
            &format!("activation_challenges_per_operator = {per_operator}"),
        );
    std::fs::write(&cfg_path, cfg).expect("write");
    let server = Server::start(dir, http);
    let admin = admin(dir).await;
    let (station, _) = principal(dir, &admin, "station-1", "station", &["HSTM"]).await;
    let (operator, _) = principal(dir, &admin, "operator-1", "operator", &[]).await;
    (server, admin, station, operator)
}

/// A terminal key, issued for and confirmed (provisioned): its serial and certificate serial.
async fn provisioned(station: &Client, n: u32) -> (SoftwareSm2Key, String, String) {
    let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    let s = serial(n);
    let resp = issue(station, issue_req(&s, v1::TerminalClass::ClassIi, csr_for(&key, &s))).await.expect("issue");
    let confirm = v1::ConfirmProvisioningRequest {
        request_id: request_id(),
        terminal_serial: s.clone(),
        certificate_serial: resp.certificate_serial.clone(),
        duration_ms: 900,
        firmware_version: "1.0".into(),
    };
    v1::certificate_authority_client::CertificateAuthorityClient::new(station.channel.clone())
        .confirm_provisioning(station.signed("/hsca.v1.CertificateAuthority/ConfirmProvisioning", confirm).expect("s"))
        .await
        .expect("confirm");
    (key, s, resp.certificate_serial)
}

async fn status(c: &Client, cert: &str) -> v1::CertificateStatus {
    let req = v1::GetCertificateStatusRequest { request_id: request_id(), certificate_serial: cert.into() };
    v1::certificate_authority_client::CertificateAuthorityClient::new(c.channel.clone())
        .get_certificate_status(c.signed("/hsca.v1.CertificateAuthority/GetCertificateStatus", req).expect("s"))
        .await
        .expect("status")
        .into_inner()
}

fn on_hold(s: &v1::CertificateStatus) -> bool {
    s.state == v1::certificate_status::State::Revoked as i32 && s.reason == v1::RevocationReason::CertificateHold as i32
}

async fn challenge(c: &Client, serial: &str) -> Result<v1::ActivationChallenge, tonic::Status> {
    let req = v1::NewActivationChallengeRequest { request_id: request_id(), serial: serial.into() };
    v1::registry_client::RegistryClient::new(c.channel.clone())
        .new_activation_challenge(c.signed("/hsca.v1.Registry/NewActivationChallenge", req).expect("s"))
        .await
        .map(|r| r.into_inner())
}

const PLACE: (&str, f64, f64) = ("No. 1 Hospital, Ward 3", 31.2304, 121.4737);

/// The statement a terminal's SE signs, encoded.
fn statement(challenge: &[u8], terminal: &str, cert: &str) -> Vec<u8> {
    proto::activation::encode(&v1::ActivationStatement {
        challenge: challenge.to_vec(),
        terminal_serial: terminal.into(),
        certificate_serial: cert.into(),
        institution: PLACE.0.into(),
        latitude: PLACE.1,
        longitude: PLACE.2,
    })
}

fn se_sign(key: &SoftwareSm2Key, statement: &[u8]) -> Vec<u8> {
    key.sign(&proto::activation::signed_bytes(statement)).expect("sign").as_der().to_vec()
}

fn presence(serial: &str, statement: Vec<u8>, signature: Vec<u8>) -> v1::ActivateTerminalRequest {
    v1::ActivateTerminalRequest {
        request_id: request_id(),
        serial: serial.into(),
        institution: PLACE.0.into(),
        latitude: PLACE.1,
        longitude: PLACE.2,
        statement,
        terminal_signature: signature,
        manual: false,
    }
}

async fn activate(c: &Client, req: v1::ActivateTerminalRequest) -> Result<v1::Activation, tonic::Status> {
    v1::registry_client::RegistryClient::new(c.channel.clone())
        .activate_terminal(c.signed("/hsca.v1.Registry/ActivateTerminal", req).expect("s"))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn proof_of_presence_lifts_the_activation_hold_and_every_forgery_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let (_server, admin, station, operator) = held_ca(&dir, 300).await;
    let (key_a, a, cert_a) = provisioned(&station, 1).await;
    let (key_b, b, cert_b) = provisioned(&station, 2).await;
    assert!(on_hold(&status(&operator, &cert_a).await), "issued under the activation hold");

    let ch = challenge(&operator, &a).await.expect("challenge");
    assert_eq!((ch.challenge.len(), ch.certificate_serial.as_str()), (32, cert_a.as_str()));
    let good = statement(&ch.challenge, &a, &cert_a);
    let refused_as = |r: Result<v1::Activation, tonic::Status>| refused(r);

    // Missing fields.
    let missing = presence(&a, vec![], vec![]);
    assert_eq!(refused_as(activate(&operator, missing).await), (Code::InvalidArgument, Reason::BadRequest));
    let no_sig = presence(&a, good.clone(), vec![]);
    assert_eq!(refused_as(activate(&operator, no_sig).await), (Code::InvalidArgument, Reason::BadRequest));
    let no_place =
        v1::ActivateTerminalRequest { institution: " ".into(), ..presence(&a, good.clone(), se_sign(&key_a, &good)) };
    assert_eq!(refused_as(activate(&operator, no_place).await), (Code::InvalidArgument, Reason::BadRequest));
    let not_a_statement = presence(&a, vec![0xFF, 0xFF, 0xFF], se_sign(&key_a, &[0xFF, 0xFF, 0xFF]));
    assert_eq!(refused_as(activate(&operator, not_a_statement).await), (Code::InvalidArgument, Reason::BadRequest));

    // Wrong terminal key, or a signature that is not over this statement.
    let wrong_key = presence(&a, good.clone(), se_sign(&key_b, &good));
    assert_eq!(
        refused_as(activate(&operator, wrong_key).await),
        (Code::PermissionDenied, Reason::TerminalSignatureInvalid)
    );
    let bare = key_a.sign(&good).expect("sign").as_der().to_vec();
    assert_eq!(
        refused_as(activate(&operator, presence(&a, good.clone(), bare)).await),
        (Code::PermissionDenied, Reason::TerminalSignatureInvalid),
        "the tag is part of what is signed"
    );

    // A statement for another terminal or another certificate, or another place than asked.
    let for_b = statement(&ch.challenge, &b, &cert_b);
    let r = activate(&operator, presence(&a, for_b.clone(), se_sign(&key_b, &for_b))).await;
    assert_eq!(refused_as(r), (Code::PermissionDenied, Reason::StatementMismatch));
    let other_cert = statement(&ch.challenge, &a, &cert_b);
    let r = activate(&operator, presence(&a, other_cert.clone(), se_sign(&key_a, &other_cert))).await;
    assert_eq!(refused_as(r), (Code::PermissionDenied, Reason::StatementMismatch));
    let elsewhere =
        v1::ActivateTerminalRequest { latitude: 39.9, ..presence(&a, good.clone(), se_sign(&key_a, &good)) };
    assert_eq!(refused_as(activate(&operator, elsewhere).await), (Code::PermissionDenied, Reason::StatementMismatch));

    // A challenge never handed out, or handed out for another terminal.
    let forged = statement(&[9; 32], &a, &cert_a);
    let r = activate(&operator, presence(&a, forged.clone(), se_sign(&key_a, &forged))).await;
    assert_eq!(refused_as(r), (Code::FailedPrecondition, Reason::ChallengeUnknown));
    let ch_b = challenge(&operator, &b).await.expect("challenge b");
    let borrowed = statement(&ch_b.challenge, &a, &cert_a);
    let r = activate(&operator, presence(&a, borrowed.clone(), se_sign(&key_a, &borrowed))).await;
    assert_eq!(refused_as(r), (Code::FailedPrecondition, Reason::ChallengeUnknown));

    // Roles: proof of presence is an operator's; the manual override an administrator's.
    let r = activate(&admin, presence(&a, good.clone(), se_sign(&key_a, &good))).await;
    assert_eq!(refused_as(r), (Code::PermissionDenied, Reason::RoleForbidden));
    let manual = v1::ActivateTerminalRequest { manual: true, ..presence(&a, vec![], vec![]) };
    assert_eq!(refused_as(activate(&operator, manual).await), (Code::PermissionDenied, Reason::RoleForbidden));
    assert!(on_hold(&status(&operator, &cert_a).await), "no refusal lifted anything");

    // The real thing: the hold is lifted, the position recorded as the reference location.
    let done = activate(&operator, presence(&a, good.clone(), se_sign(&key_a, &good))).await.expect("activate");
    assert_eq!((done.method.as_str(), done.certificate_serial.as_str()), ("presence", cert_a.as_str()));
    assert_eq!(status(&operator, &cert_a).await.state, v1::certificate_status::State::Good as i32);
    let list = v1::registry_client::RegistryClient::new(operator.channel.clone())
        .list_activations(
            operator
                .signed(
                    "/hsca.v1.Registry/ListActivations",
                    v1::ListActivationsRequest { request_id: request_id(), serial: a.clone() },
                )
                .expect("s"),
        )
        .await
        .expect("list")
        .into_inner();
    let first = &list.activations[0];
    assert_eq!((first.institution.as_str(), first.latitude, first.longitude), PLACE);

    // Replayed (a new request id, the same statement and signature): the challenge is used up.
    let r = activate(&operator, presence(&a, good.clone(), se_sign(&key_a, &good))).await;
    assert_eq!(refused_as(r), (Code::FailedPrecondition, Reason::ChallengeUnknown));

    // A revoked certificate: no challenge, and one handed out before the revocation is dead.
    let stmt_b = statement(&ch_b.challenge, &b, &cert_b);
    let revoke = v1::RevokeCertificateRequest {
        request_id: request_id(),
        certificate_serial: cert_b.clone(),
        reason: v1::RevocationReason::KeyCompromise as i32,
        ..Default::default()
    };
    v1::admin_client::AdminClient::new(admin.channel.clone())
        .revoke_certificate(admin.signed("/hsca.v1.Admin/RevokeCertificate", revoke).expect("s"))
        .await
        .expect("revoke");
    assert_eq!(refused(challenge(&operator, &b).await), (Code::FailedPrecondition, Reason::WrongState));
    let r = activate(&operator, presence(&b, stmt_b.clone(), se_sign(&key_b, &stmt_b))).await;
    assert_eq!(refused_as(r), (Code::FailedPrecondition, Reason::WrongState));
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_activation_hold_is_lifted_and_only_by_an_activation() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let (_server, admin, station, operator) = held_ca(&dir, 300).await;
    let (key, t, cert) = provisioned(&station, 3).await;
    let mut adm = v1::admin_client::AdminClient::new(admin.channel.clone());

    // An administrator (or monitor) cannot lift the activation hold with UnrevokeCertificate.
    let unrevoke = v1::UnrevokeCertificateRequest { request_id: request_id(), certificate_serial: cert.clone() };
    let r = adm.unrevoke_certificate(admin.signed("/hsca.v1.Admin/UnrevokeCertificate", unrevoke).expect("s")).await;
    assert_eq!(refused(r), (Code::FailedPrecondition, Reason::CertificateOnHold));

    // An administrator's hold placed over it takes it over: no activation lifts that one.
    let hold = v1::RevokeCertificateRequest {
        request_id: request_id(),
        certificate_serial: cert.clone(),
        reason: v1::RevocationReason::CertificateHold as i32,
        ..Default::default()
    };
    adm.revoke_certificate(admin.signed("/hsca.v1.Admin/RevokeCertificate", hold).expect("s")).await.expect("hold");
    let ch = challenge(&operator, &t).await.expect("challenge");
    let st = statement(&ch.challenge, &t, &cert);
    let r = activate(&operator, presence(&t, st.clone(), se_sign(&key, &st))).await;
    assert_eq!(refused(r), (Code::FailedPrecondition, Reason::CertificateOnHold));
    let manual = v1::ActivateTerminalRequest { manual: true, ..presence(&t, vec![], vec![]) };
    assert_eq!(refused(activate(&admin, manual).await), (Code::FailedPrecondition, Reason::CertificateOnHold));
    assert!(on_hold(&status(&operator, &cert).await), "still the administrator's hold");

    // The manual override (an administrator's, audited as activate_manual) lifts an activation hold.
    let (_key2, t2, cert2) = provisioned(&station, 4).await;
    let manual = v1::ActivateTerminalRequest { manual: true, ..presence(&t2, vec![], vec![]) };
    let done = activate(&admin, manual).await.expect("manual override");
    assert_eq!(done.method, "manual");
    assert_eq!(status(&operator, &cert2).await.state, v1::certificate_status::State::Good as i32);
    let audit = v1::ListAuditRequest { request_id: request_id(), last: 20, verify: false, ..Default::default() };
    let entries =
        adm.list_audit(admin.signed("/hsca.v1.Admin/ListAudit", audit).expect("s")).await.expect("audit").into_inner();
    assert!(
        entries.entries.iter().any(|e| e.action == "activate_manual" && e.target == t2 && e.outcome == "ok"),
        "{:?}",
        entries.entries
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_challenge_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let (_server, _admin, station, operator) = held_ca(&dir, 1).await;
    let (key, t, cert) = provisioned(&station, 5).await;
    let ch = challenge(&operator, &t).await.expect("challenge");
    // Past its 1 s lifetime (the expiry is a clock comparison, not a race).
    std::thread::sleep(std::time::Duration::from_millis(1_300));
    let st = statement(&ch.challenge, &t, &cert);
    let r = activate(&operator, presence(&t, st.clone(), se_sign(&key, &st))).await;
    assert_eq!(refused(r), (Code::FailedPrecondition, Reason::ChallengeExpired));
    assert!(on_hold(&status(&operator, &cert).await));
}

async fn activation_log(
    c: &Client,
    after_seq: u64,
    limit: u32,
) -> Result<v1::ListActivationsAfterResponse, tonic::Status> {
    let req = v1::ListActivationsAfterRequest { request_id: request_id(), after_seq, limit };
    v1::registry_client::RegistryClient::new(c.channel.clone())
        .list_activations_after(c.signed("/hsca.v1.Registry/ListActivationsAfter", req).expect("s"))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_monitor_reads_the_activation_log_after_a_cursor_and_a_station_or_a_bad_cursor_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let (_server, admin, station, _operator) = held_ca(&dir, 300).await;
    let (monitor, _) = principal(&dir, &admin, "fleet-1", "monitor", &[]).await;
    let empty = activation_log(&monitor, 0, 10).await.expect("empty log");
    assert_eq!((empty.entries.len(), empty.head), (0, 0));
    let mut terminals = Vec::new();
    for n in [5, 6] {
        let (_key, t, _cert) = provisioned(&station, n).await;
        let manual = v1::ActivateTerminalRequest { manual: true, ..presence(&t, vec![], vec![]) };
        activate(&admin, manual).await.expect("manual activation");
        terminals.push(t);
    }
    let first = activation_log(&monitor, 0, 1).await.expect("page 1");
    assert_eq!(first.head, 2);
    let e = &first.entries;
    assert_eq!(e.len(), 1);
    let a = e[0].activation.clone().expect("activation");
    assert_eq!((e[0].seq, a.terminal_serial.as_str(), a.method.as_str()), (1, terminals[0].as_str(), "manual"));
    assert_eq!((a.institution.as_str(), a.latitude, a.longitude), PLACE);
    let rest = activation_log(&monitor, 1, 1000).await.expect("page 2");
    let seen: Vec<(u64, String)> =
        rest.entries.iter().map(|e| (e.seq, e.activation.clone().expect("a").terminal_serial)).collect();
    assert_eq!(seen, [(2, terminals[1].clone())]);
    assert!(activation_log(&monitor, 2, 10).await.expect("caught up").entries.is_empty());

    // Not a station's to read; a limit outside 1..=1000 or a cursor past the head is refused.
    assert_eq!(refused(activation_log(&station, 0, 10).await), (Code::PermissionDenied, Reason::RoleForbidden));
    for (after, limit, why) in [(0, 0, "limit must be"), (0, 1001, "limit must be"), (3, 10, "beyond")] {
        let s = activation_log(&monitor, after, limit).await.expect_err("refused");
        assert_eq!(refused::<()>(Err(s.clone())), (Code::InvalidArgument, Reason::BadRequest), "{after} {limit}");
        assert!(s.message().contains(why), "{}", s.message());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_past_the_challenge_limit_is_refused_until_one_is_used() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let (_server, admin, station, operator) = held_ca_with(&dir, 300, 2).await;
    let (key, t, _cert) = provisioned(&station, 7).await;
    let first = challenge(&operator, &t).await.expect("1st");
    challenge(&operator, &t).await.expect("2nd");
    let over = challenge(&operator, &t).await.expect_err("3rd is past the limit");
    assert_eq!(refused::<()>(Err(over.clone())), (Code::ResourceExhausted, Reason::ChallengeLimit));
    assert!(over.message().contains("operator-1") && over.message().contains('2'), "{}", over.message());
    // The limit is the operator's, not the terminal's: another operator still gets one.
    let (other, _) = principal(&dir, &admin, "operator-2", "operator", &[]).await;
    challenge(&other, &t).await.expect("another operator");
    // Using one frees a place.
    let st = statement(&first.challenge, &t, &first.certificate_serial);
    activate(&operator, presence(&t, st.clone(), se_sign(&key, &st))).await.expect("activate");
    challenge(&operator, &t).await.expect("after using one");
    assert_eq!(
        refused(challenge(&operator, &t).await),
        (Code::ResourceExhausted, Reason::ChallengeLimit),
        "full again"
    );
}
