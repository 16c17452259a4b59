//! Role `monitor` (the fleet service's principal) against the real `ca-server`: it may place and
//! lift holds and revoke for keyCompromise, of terminal certificates only — and nothing else.

use hsm::backend::memory::SoftwareSm2Key;
use pki::SignerId;
use proto::client::{Client, request_id};
use proto::v1::{self, Reason, RevocationReason};
use tonic::Code;

mod common;
use common::*;

async fn revoke(c: &Client, serial: &str, reason: RevocationReason) -> Result<v1::CertificateStatus, tonic::Status> {
    let m = v1::RevokeCertificateRequest {
        request_id: request_id(),
        certificate_serial: serial.into(),
        terminal_serial: String::new(),
        reason: reason as i32,
        invalidity_ms: 0,
    };
    v1::admin_client::AdminClient::new(c.channel.clone())
        .revoke_certificate(c.signed("/hsca.v1.Admin/RevokeCertificate", m).expect("sign"))
        .await
        .map(|r| r.into_inner())
}

async fn unrevoke(c: &Client, serial: &str) -> Result<v1::CertificateStatus, tonic::Status> {
    let m = v1::UnrevokeCertificateRequest { request_id: request_id(), certificate_serial: serial.into() };
    v1::admin_client::AdminClient::new(c.channel.clone())
        .unrevoke_certificate(c.signed("/hsca.v1.Admin/UnrevokeCertificate", m).expect("sign"))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_may_hold_lift_and_revoke_for_key_compromise_only() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ca");
    let (_, http) = init(&dir);
    let _server = Server::start(&dir, http);
    let admin = admin(&dir).await;
    let (station, station_cert) = principal(&dir, &admin, "station-1", "station", &["HSTM"]).await;
    let (monitor, _) = principal(&dir, &admin, "fleet-1", "monitor", &[]).await;
    let mut terminals = Vec::new();
    for n in 0..2 {
        let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
        let s = serial(n);
        let resp = issue(&station, issue_req(&s, v1::TerminalClass::ClassIi, csr_for(&key, &s))).await.expect("issued");
        terminals.push(resp.certificate_serial);
    }
    let (t0, t1) = (&terminals[0], &terminals[1]);

    // Hold, lift, and revoke for key compromise: allowed.
    let held = revoke(&monitor, t0, RevocationReason::CertificateHold).await.expect("hold");
    assert_eq!(held.state, v1::certificate_status::State::Revoked as i32);
    let lifted = unrevoke(&monitor, t0).await.expect("lift");
    assert_eq!(lifted.state, v1::certificate_status::State::Good as i32);
    let revoked = revoke(&monitor, t1, RevocationReason::KeyCompromise).await.expect("keyCompromise");
    assert_eq!(revoked.reason, RevocationReason::KeyCompromise as i32);

    // Any other reason, or a principal's certificate: refused with ROLE_FORBIDDEN.
    for reason in [
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::AffiliationChanged,
        RevocationReason::PrivilegeWithdrawn,
        RevocationReason::Unspecified,
    ] {
        assert_eq!(
            refused(revoke(&monitor, t0, reason).await),
            (Code::PermissionDenied, Reason::RoleForbidden),
            "{reason:?}"
        );
    }
    for reason in [RevocationReason::KeyCompromise, RevocationReason::CertificateHold] {
        assert_eq!(
            refused(revoke(&monitor, &station_cert, reason).await),
            (Code::PermissionDenied, Reason::RoleForbidden),
            "a station's certificate, {reason:?}"
        );
    }
    // A hold an admin put on a station cannot be lifted by the monitor either.
    revoke(&admin, &station_cert, RevocationReason::CertificateHold).await.expect("admin holds the station");
    assert_eq!(refused(unrevoke(&monitor, &station_cert).await), (Code::PermissionDenied, Reason::RoleForbidden));

    // Every other mutating or listing method: refused by the roles policy.
    let forbidden = (Code::PermissionDenied, Reason::RoleForbidden);
    let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    let s = serial(9);
    let issue_as_monitor = issue(&monitor, issue_req(&s, v1::TerminalClass::ClassIi, csr_for(&key, &s))).await;
    assert_eq!(refused(issue_as_monitor), forbidden);
    let mut adm = v1::admin_client::AdminClient::new(monitor.channel.clone());
    let audit = v1::ListAuditRequest { request_id: request_id(), last: 1, verify: false, ..Default::default() };
    assert_eq!(refused(adm.list_audit(monitor.signed("/hsca.v1.Admin/ListAudit", audit).expect("s")).await), forbidden);
    // Reading the log by actor (or target) is authorised as the tail is; one of the two at most.
    let by_actor =
        || v1::ListAuditRequest { request_id: request_id(), last: 1, actor: "fleet-1".into(), ..Default::default() };
    let r = adm.list_audit(monitor.signed("/hsca.v1.Admin/ListAudit", by_actor()).expect("s")).await;
    assert_eq!(refused(r), forbidden);
    let mut as_admin = v1::admin_client::AdminClient::new(admin.channel.clone());
    let found = as_admin
        .list_audit(admin.signed("/hsca.v1.Admin/ListAudit", by_actor()).expect("s"))
        .await
        .expect("an admin reads it")
        .into_inner();
    assert_eq!(found.entries.iter().map(|e| e.actor.as_str()).collect::<Vec<_>>(), ["fleet-1"], "{found:?}");
    let both = v1::ListAuditRequest { target: "station-1".into(), ..by_actor() };
    let r = as_admin.list_audit(admin.signed("/hsca.v1.Admin/ListAudit", both).expect("s")).await;
    assert_eq!(refused(r), (Code::InvalidArgument, Reason::BadRequest));
    let bulk = v1::RequestBulkRevocationRequest {
        request_id: request_id(),
        manufacturer: "HSTM".into(),
        reason: RevocationReason::KeyCompromise as i32,
        ..Default::default()
    };
    let r = adm.request_bulk_revocation(monitor.signed("/hsca.v1.Admin/RequestBulkRevocation", bulk).expect("s")).await;
    assert_eq!(refused(r), forbidden);
    let dis = v1::DisablePrincipalRequest { request_id: request_id(), name: "station-1".into() };
    let r = adm.disable_principal(monitor.signed("/hsca.v1.Admin/DisablePrincipal", dis).expect("s")).await;
    assert_eq!(refused(r), forbidden);
    // The principal list is for administrators only.
    let list = v1::ListPrincipalsRequest { request_id: request_id() };
    let r = adm.list_principals(monitor.signed("/hsca.v1.Admin/ListPrincipals", list).expect("s")).await;
    assert_eq!(refused(r), forbidden);
    let mut reg = v1::registry_client::RegistryClient::new(monitor.channel.clone());
    let act = v1::ListActivationsRequest { request_id: request_id(), ..Default::default() };
    let r = reg.list_activations(monitor.signed("/hsca.v1.Registry/ListActivations", act).expect("s")).await;
    assert_eq!(refused(r), forbidden);
    let r = principal_answer(&dir, &monitor, "intruder", "admin", &[]).await;
    assert_eq!(refused(r.map(|(_, a)| a)), forbidden);
}
