//! The real `ca-server` on a PostgreSQL registry: `migrate` (schema and the copy of the redb
//! registry `init` made), `serve` refusing an unknown schema, and two instances — each with its
//! own copy of the softtoken token — issuing from one database.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hsm::backend::memory::SoftwareSm2Key;
use pki::SignerId;
use proto::v1::{self, Reason};
use registry::testing::PgServer;
use tonic::Code;

mod common;
use common::*;

/// Points every configuration and identity file under `dir` at new ports (and the registry at
/// `url`).
fn rewrite(dir: &Path, from: &[(String, String)]) {
    let out = Command::new("grep").args(["-rl", "--include=*.toml", "127.0.0.1"]).arg(dir).output().expect("grep");
    for file in String::from_utf8_lossy(&out.stdout).lines() {
        let mut text = std::fs::read_to_string(file).expect("read");
        for (a, b) in from {
            text = text.replace(a.as_str(), b);
        }
        std::fs::write(file, text).expect("write");
    }
}

fn use_postgres(dir: &Path, url: &str) {
    let path = dir.join("ca-server.toml");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains("path = \"registry.redb\""), "init's registry line");
    let registry = format!("url = \"{url}\"\ninstance = 1");
    std::fs::write(&path, text.replace("path = \"registry.redb\"", &registry)).expect("write");
}

/// `serve` must exit with an error (it would otherwise run until killed).
fn serve_fails(dir: &Path) -> String {
    let mut child = Command::new(EXE)
        .args(["serve", "--config"])
        .arg(dir.join("ca-server.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(!status.success());
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err).expect("read");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started on an unmigrated registry");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_serve_one_postgresql_registry() {
    let pg = PgServer::start().expect("PostgreSQL test server");
    let tmp = tempfile::tempdir().expect("tmp");
    let dir_a = tmp.path().join("a");
    let (grpc_a, http_a) = init(&dir_a);
    use_postgres(&dir_a, &pg.url());

    let err = serve_fails(&dir_a);
    assert!(err.contains("schema version 0"), "{err}");
    let out = Command::new(EXE)
        .args(["migrate", "--config"])
        .arg(dir_a.join("ca-server.toml"))
        .arg("--from")
        .arg(dir_a.join("registry.redb"))
        .output()
        .expect("migrate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("audit chain verified"));

    // Instance B: a copy of A's directory (token, keys, configuration) on other ports.
    let dir_b = tmp.path().join("b");
    assert!(Command::new("cp").arg("-a").arg(&dir_a).arg(&dir_b).status().expect("cp").success());
    let (grpc_b, http_b) = (free_port(), free_port());
    rewrite(
        &dir_b,
        &[
            (format!("127.0.0.1:{grpc_a}"), format!("127.0.0.1:{grpc_b}")),
            (format!("127.0.0.1:{http_a}"), format!("127.0.0.1:{http_b}")),
        ],
    );
    rewrite(&dir_b, &[(dir_a.display().to_string(), dir_b.display().to_string())]);
    let config_b = dir_b.join("ca-server.toml");
    let text = std::fs::read_to_string(&config_b).expect("read");
    std::fs::write(&config_b, text.replace("instance = 1", "instance = 2")).expect("write");

    let a = Server::start(&dir_a, http_a);
    let b = Server::start(&dir_b, http_b);
    assert!(http_get(http_b, "/readyz").contains("ready"));
    let admin_a = admin(&dir_a).await;
    let admin_b = admin(&dir_b).await;
    let (station_a, _) = principal(&dir_a, &admin_a, "station-a", "station", &["HSTM"]).await;
    // Principals are shared: B knows station-a, and refuses it a second time.
    let again = principal_answer(&dir_b, &admin_b, "station-a", "station", &["HSTM"]).await;
    assert_eq!(refused(again.map(|_| ())).0, Code::AlreadyExists);
    let (station_b, station_b_cert) = principal(&dir_b, &admin_b, "station-b", "station", &["HSTM"]).await;

    let s1 = serial(1);
    let k1 = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    let first = issue(&station_a, issue_req(&s1, v1::TerminalClass::ClassIi, csr_for(&k1, &s1))).await.expect("on A");
    // The same terminal on B: one active certificate, whichever instance asks.
    let k2 = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    assert_eq!(
        refused(issue(&station_b, issue_req(&s1, v1::TerminalClass::ClassIi, csr_for(&k2, &s1))).await),
        (Code::FailedPrecondition, Reason::AlreadyHasActiveCertificate)
    );
    // A's key for another terminal on B: the clone defence spans instances.
    let s2 = serial(2);
    assert_eq!(
        refused(issue(&station_b, issue_req(&s2, v1::TerminalClass::ClassIi, csr_for(&k1, &s2))).await),
        (Code::FailedPrecondition, Reason::PublicKeyInUse)
    );
    let second = issue(&station_b, issue_req(&s2, v1::TerminalClass::ClassIi, csr_for(&k2, &s2))).await.expect("on B");
    // A request signed once and spent on A is refused when replayed on B: nonces are shared.
    let s5 = serial(5);
    let k5 = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    let (meta, _, body) = station_a
        .signed(
            "/hsca.v1.CertificateAuthority/IssueTerminalCertificate",
            issue_req(&s5, v1::TerminalClass::ClassIi, csr_for(&k5, &s5)),
        )
        .expect("sign")
        .into_parts();
    let send = |channel: &tonic::transport::Channel| {
        let request = tonic::Request::from_parts(meta.clone(), tonic::Extensions::default(), body.clone());
        let mut client = v1::certificate_authority_client::CertificateAuthorityClient::new(channel.clone());
        async move { client.issue_terminal_certificate(request).await }
    };
    send(&station_a.channel).await.expect("first use, on A");
    assert_eq!(refused(send(&station_b.channel).await), (Code::Unauthenticated, Reason::ReplayedNonce));
    // Each instance's serials carry its number: they cannot collide.
    assert!(first.certificate_serial.starts_with("01"), "{}", first.certificate_serial);
    assert!(second.certificate_serial.starts_with("02"), "{}", second.certificate_serial);

    // Revoked on A, refused on B at its next call.
    let rv = v1::RevokeCertificateRequest {
        request_id: proto::client::request_id(),
        certificate_serial: station_b_cert,
        terminal_serial: String::new(),
        reason: 1,
        invalidity_ms: 0,
    };
    v1::admin_client::AdminClient::new(admin_a.channel.clone())
        .revoke_certificate(admin_a.signed("/hsca.v1.Admin/RevokeCertificate", rv).expect("sign"))
        .await
        .expect("A revokes station-b");
    let s3 = serial(3);
    let k3 = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    assert_eq!(
        refused(issue(&station_b, issue_req(&s3, v1::TerminalClass::ClassIi, csr_for(&k3, &s3))).await).1,
        Reason::CallerRevoked
    );

    // PostgreSQL restarted under the running instances: calls fail UNAVAILABLE, then issuance
    // resumes without restarting ca-server.
    pg.restart().expect("restart PostgreSQL");
    let mut unavailable = 0;
    let mut resumed = false;
    for n in 10..30u32 {
        let s = serial(n);
        let k = SoftwareSm2Key::generate(SignerId::default()).expect("key");
        match issue(&station_a, issue_req(&s, v1::TerminalClass::ClassIi, csr_for(&k, &s))).await {
            Ok(_) => {
                resumed = true;
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                unavailable += 1;
            }
        }
    }
    assert!(resumed, "issuance resumed after {unavailable} UNAVAILABLE answers");

    a.terminate();
    b.terminate();
    let reg = registry::Registry::open_postgres(&pg.url()).expect("open");
    assert!(reg.certificate(&first.certificate_serial).expect("read").is_some());
    assert!(reg.certificate(&second.certificate_serial).expect("read").is_some());
    reg.verify_audit_chain().expect("one audit chain for both instances");
}
