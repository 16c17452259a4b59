//! The real `ca-server` on a PostgreSQL registry: `migrate` (schema and the copy of the redb
//! registry `init` made), `serve` refusing an unknown schema, and two instances — each with its
//! own copy of the softtoken token — issuing from one database.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// `ca-server migrate --from` the redb registry `init` made into the configured PostgreSQL one.
fn migrate_from_init(dir: &Path) {
    let out = Command::new(EXE)
        .args(["migrate", "--config"])
        .arg(dir.join("ca-server.toml"))
        .arg("--from")
        .arg(dir.join("registry.redb"))
        .output()
        .expect("migrate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("audit chain verified"));
}

/// Instance B: a copy of A's directory (token, keys, configuration) on other ports, instance 2.
/// Returns B's HTTP port.
fn copy_instance(dir_a: &Path, dir_b: &Path, grpc_a: u16, http_a: u16) -> u16 {
    assert!(Command::new("cp").arg("-a").arg(dir_a).arg(dir_b).status().expect("cp").success());
    let (grpc_b, http_b) = (free_port(), free_port());
    rewrite(
        dir_b,
        &[
            (format!("127.0.0.1:{grpc_a}"), format!("127.0.0.1:{grpc_b}")),
            (format!("127.0.0.1:{http_a}"), format!("127.0.0.1:{http_b}")),
        ],
    );
    rewrite(dir_b, &[(dir_a.display().to_string(), dir_b.display().to_string())]);
    let config_b = dir_b.join("ca-server.toml");
    let text = std::fs::read_to_string(&config_b).expect("read");
    std::fs::write(&config_b, text.replace("instance = 1", "instance = 2")).expect("write");
    http_b
}

/// Two instances on one PostgreSQL server, not yet serving: A made by `init`, then
/// `configure`d, pointed at the server and migrated into it; B a copy of A ([`copy_instance`]).
/// The server and the directories live as long as this does.
struct TwoInstances {
    _pg: PgServer,
    _tmp: tempfile::TempDir,
    dir_a: PathBuf,
    dir_b: PathBuf,
    http_a: u16,
    http_b: u16,
}

fn two_instances(configure: impl FnOnce(&Path)) -> TwoInstances {
    let pg = PgServer::start().expect("PostgreSQL test server");
    let tmp = tempfile::tempdir().expect("tmp");
    let dir_a = tmp.path().join("a");
    let (grpc_a, http_a) = init(&dir_a);
    configure(&dir_a);
    use_postgres(&dir_a, &pg.url());
    migrate_from_init(&dir_a);
    let dir_b = tmp.path().join("b");
    let http_b = copy_instance(&dir_a, &dir_b, grpc_a, http_a);
    TwoInstances { _pg: pg, _tmp: tmp, dir_a, dir_b, http_a, http_b }
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
    migrate_from_init(&dir_a);
    let dir_b = tmp.path().join("b");
    let http_b = copy_instance(&dir_a, &dir_b, grpc_a, http_a);

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

    // Revoked on A: B's OCSP responder, which cached "good", says revoked within a poll of the
    // shared registry (250 ms; the bound here is generous, the answer cache would hold 30 s+).
    let pem = tmp.path().join("second.pem");
    std::fs::write(tmp.path().join("second.der"), &second.certificate_der).expect("write");
    openssl(tmp.path(), &["x509", "-inform", "DER", "-in", "second.der", "-out", pem.to_str().expect("p")]);
    let ocsp_b = || {
        let issuing = dir_b.join("certs/issuing.pem");
        let url = format!("http://127.0.0.1:{http_b}/ocsp");
        let (issuing, cert) = (issuing.to_str().expect("p"), pem.to_str().expect("p"));
        openssl(tmp.path(), &["ocsp", "-issuer", issuing, "-cert", cert, "-url", &url, "-no_nonce", "-noverify"])
    };
    assert!(ocsp_b().contains(": good"), "{}", ocsp_b());
    let rv = v1::RevokeCertificateRequest {
        request_id: proto::client::request_id(),
        certificate_serial: second.certificate_serial.clone(),
        terminal_serial: String::new(),
        reason: 1,
        invalidity_ms: 0,
    };
    v1::admin_client::AdminClient::new(admin_a.channel.clone())
        .revoke_certificate(admin_a.signed("/hsca.v1.Admin/RevokeCertificate", rv).expect("sign"))
        .await
        .expect("A revokes B's certificate");
    let revoked_at = Instant::now();
    while !ocsp_b().contains(": revoked") {
        assert!(revoked_at.elapsed() < Duration::from_secs(5), "B still answers: {}", ocsp_b());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("B's OCSP said revoked {} ms after A acknowledged", revoked_at.elapsed().as_millis());

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

/// Client tasks per instance in the load test.
const CLIENTS: usize = 16;

/// One issue for a fresh key: the certificate's serial, or the refusal.
async fn issue_one(c: &proto::client::Client, terminal: &str) -> Result<String, tonic::Status> {
    let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    issue(c, issue_req(terminal, v1::TerminalClass::ClassIi, csr_for(&key, terminal)))
        .await
        .map(|r| r.certificate_serial)
}

/// Whether A (not B) is the one CRL leader, once exactly one of them leads (15 s at most).
async fn a_leads(http_a: u16, http_b: u16) -> bool {
    let started = Instant::now();
    loop {
        match (crl_leader(http_a), crl_leader(http_b)) {
            (Some(true), Some(false)) => return true,
            (Some(false), Some(true)) => return false,
            (Some(true), Some(true)) => panic!("two CRL leaders"),
            _ => assert!(started.elapsed() < Duration::from_secs(15), "no CRL leader"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The issuing CA an instance in `dir` signs under.
fn issuer_of(dir: &Path) -> pki::IssuerInfo {
    let issuing =
        pki::pem::certificates_from_pem(&std::fs::read_to_string(dir.join("certs/issuing.pem")).expect("pem"))
            .expect("issuing")
            .remove(0);
    pki::IssuerInfo::from_certificate(&issuing, SignerId::default()).expect("issuer")
}

/// `hsca_crl_leader` from an instance's /metrics (None when it does not answer).
fn crl_leader(http: u16) -> Option<bool> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).ok()?;
    use std::io::{Read, Write};
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines().find_map(|l| l.strip_prefix("hsca_crl_leader ")).map(|v| v.trim() == "1")
}

/// Issues terminals `first..` one after another until `stop`, or until the instance fails it
/// (then the error's code): every acknowledged (terminal, certificate serial).
async fn issue_until(
    c: Arc<proto::client::Client>,
    first: u32,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> (Vec<(String, String)>, Option<Code>) {
    let mut done = Vec::new();
    for n in first.. {
        if stop.load(Ordering::Relaxed) {
            return (done, None);
        }
        let terminal = serial(n);
        match issue_one(&c, &terminal).await {
            Ok(cert) => {
                done.push((terminal, cert));
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => return (done, Some(status.code())),
        }
    }
    (done, None)
}

/// The acceptance test of several instances: two `ca-server`s on one PostgreSQL, 16 clients
/// each (each its own principal and connection). Distinct terminals: all issued, no serial twice.
/// The same terminals raced on both: exactly one active certificate each. The CRL leader
/// SIGKILLed mid-run: every acknowledged certificate is in the database, the survivor keeps
/// issuing and takes the leadership.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_with_16_clients_each_race_and_survive_a_sigkill() {
    let TwoInstances { _pg: pg, _tmp, dir_a, dir_b, http_a, http_b } = two_instances(|_| {});
    let mut servers = [Some(Server::start(&dir_a, http_a)), Some(Server::start(&dir_b, http_b))];
    let https = [http_a, http_b];
    let admin_a = admin(&dir_a).await;
    let mut clients: [Vec<Arc<proto::client::Client>>; 2] = [Vec::new(), Vec::new()];
    for (side, dir) in [&dir_a, &dir_b].into_iter().enumerate() {
        for i in 0..CLIENTS {
            let name = format!("station-{side}-{i}");
            clients[side].push(Arc::new(principal(dir, &admin_a, &name, "station", &["HSTM"]).await.0));
        }
    }
    // Every acknowledged (terminal, certificate serial), from every phase.
    let mut acknowledged = Vec::new();

    // Distinct terminals, 4 per client: every one issued, each serial once, with its instance's prefix.
    let mut tasks = Vec::new();
    for (side, list) in clients.iter().enumerate() {
        for (i, c) in list.iter().enumerate() {
            let c = c.clone();
            let base = 1000 + (side * CLIENTS + i) as u32 * 4;
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for n in base..base + 4 {
                    out.push((side, serial(n), issue_one(&c, &serial(n)).await.expect("distinct terminal issued")));
                }
                out
            }));
        }
    }
    let mut distinct = 0;
    for t in tasks {
        for (side, terminal, cert) in t.await.expect("task") {
            assert!(cert.starts_with(["01", "02"][side]), "instance {} serial {cert}", side + 1);
            acknowledged.push((terminal, cert));
            distinct += 1;
        }
    }
    assert_eq!(distinct, 2 * CLIENTS * 4);

    // The same 32 terminals raced on both instances at once: exactly one wins each.
    let mut tasks = Vec::new();
    for t in 0..2 * CLIENTS as u32 {
        for side in &clients {
            let c = side[t as usize % CLIENTS].clone();
            tasks.push(tokio::spawn(async move { (t, issue_one(&c, &serial(5000 + t)).await) }));
        }
    }
    let mut winners = std::collections::BTreeMap::new();
    for task in tasks {
        let (t, result) = task.await.expect("task");
        match result {
            Ok(cert) => {
                assert!(winners.insert(t, cert.clone()).is_none(), "terminal {t} certified twice");
                acknowledged.push((serial(5000 + t), cert));
            }
            Err(status) => assert_eq!(
                (status.code(), proto::reason(&status)),
                (Code::FailedPrecondition, Some(Reason::AlreadyHasActiveCertificate)),
                "{status:?}"
            ),
        }
    }
    assert_eq!(winners.len(), 2 * CLIENTS, "every raced terminal has one winner");

    // Exactly one instance leads CRL generation.
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let l = [crl_leader(http_a), crl_leader(http_b)];
        assert!(l != [Some(true), Some(true)], "two CRL leaders");
        if let Some(side) = l.iter().position(|x| *x == Some(true)) {
            break side;
        }
        assert!(Instant::now() < deadline, "no CRL leader: {l:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let survivor = 1 - leader;

    // Everyone issues; the leader is SIGKILLed mid-run.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let mut running: [Vec<_>; 2] = [Vec::new(), Vec::new()];
    for side in 0..2 {
        for (i, c) in clients[side].iter().enumerate() {
            let first = 10_000 + (side * CLIENTS + i) as u32 * 1000;
            running[side].push(tokio::spawn(issue_until(c.clone(), first, stop.clone(), acked[side].clone())));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked[leader].load(Ordering::Relaxed) < 32 || acked[survivor].load(Ordering::Relaxed) < 32 {
        assert!(Instant::now() < deadline, "issuance under load stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    servers[leader].take().expect("leader").kill();
    let at_kill = acked[survivor].load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked[survivor].load(Ordering::Relaxed) < at_kill + 64 || crl_leader(https[survivor]) != Some(true) {
        assert!(
            Instant::now() < deadline,
            "survivor issued {} after the kill; leader: {:?}",
            acked[survivor].load(Ordering::Relaxed) - at_kill,
            crl_leader(https[survivor])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let before_kill_phase = acknowledged.len();
    for (side, tasks) in running.iter_mut().enumerate() {
        for task in tasks.drain(..) {
            let (done, error) = task.await.expect("task");
            if side == survivor {
                assert_eq!(error, None, "the survivor failed a client");
            } else {
                assert!(error.is_some(), "a client of the killed instance saw no failure");
            }
            acknowledged.extend(done);
        }
    }
    assert!(acknowledged.len() - before_kill_phase >= 2 * 32 + 64);
    servers[survivor].take().expect("survivor").terminate();

    // Every acknowledged certificate is in the database, as its terminal's one active certificate.
    let reg = registry::Registry::open_postgres(&pg.url()).expect("open");
    let mut serials = std::collections::BTreeSet::new();
    for (terminal, cert) in &acknowledged {
        assert!(serials.insert(cert.clone()), "serial {cert} issued twice");
        assert!(reg.certificate(cert).expect("read").is_some(), "acknowledged {cert} lost");
        let t = reg.terminal(terminal).expect("read").expect("terminal");
        assert_eq!(t.active_cert.as_deref(), Some(cert.as_str()), "{terminal}");
    }
    reg.verify_audit_chain().expect("one audit chain for both instances");
}

/// A request `station` signed that its role may not make: a failure counted against it.
async fn forbidden_call(station: &proto::client::Client, to: &tonic::transport::Channel) -> (Code, Reason) {
    let req = v1::ListPrincipalsRequest { request_id: proto::client::request_id() };
    let signed = station.signed("/hsca.v1.Admin/ListPrincipals", req).expect("sign");
    refused(v1::admin_client::AdminClient::new(to.clone()).list_principals(signed).await)
}

/// A request `station` may make: counts nothing when served.
async fn chain_call(station: &proto::client::Client, to: &tonic::transport::Channel) -> Result<(), tonic::Status> {
    let req = v1::GetCaChainRequest { request_id: proto::client::request_id() };
    let signed = station.signed("/hsca.v1.CertificateAuthority/GetCaChain", req).expect("sign");
    v1::certificate_authority_client::CertificateAuthorityClient::new(to.clone()).get_ca_chain(signed).await.map(|_| ())
}

/// An unsigned request: a failure counted against the address (127.0.0.1 for both instances).
async fn unsigned_call(to: &tonic::transport::Channel) -> (Code, Reason) {
    let req = tonic::Request::new(v1::GetCaChainRequest { request_id: proto::client::request_id() });
    refused(v1::certificate_authority_client::CertificateAuthorityClient::new(to.clone()).get_ca_chain(req).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failure_limits_add_up_across_instances_and_both_refuse_a_source_over_the_limit() {
    const FORBIDDEN: (Code, Reason) = (Code::PermissionDenied, Reason::RoleForbidden);
    const UNSIGNED: (Code, Reason) = (Code::Unauthenticated, Reason::MissingSignature);
    const LIMITED: (Code, Reason) = (Code::ResourceExhausted, Reason::RateLimited);
    let TwoInstances { _pg, _tmp, dir_a, dir_b, http_a, http_b } = two_instances(|_| {});
    let roles = std::fs::read_to_string(dir_a.join("policies/roles.toml")).expect("roles.toml");
    assert!(roles.contains("failures_per_minute = 10"), "the limit this test counts to");
    let _a = Server::start(&dir_a, http_a);
    let _b = Server::start(&dir_b, http_b);
    let admin_a = admin(&dir_a).await;
    let admin_b = admin(&dir_b).await;
    let (station, _) = principal(&dir_a, &admin_a, "station-x", "station", &["HSTM"]).await;
    let (on_a, on_b) = (admin_a.channel.clone(), admin_b.channel.clone());

    // 9 failures on A, under the limit of 10 on each instance and together: after several polls
    // of both, B (and A) still serve the principal, and B judges the address's requests on their own.
    for _ in 0..9 {
        assert_eq!(forbidden_call(&station, &on_a).await, FORBIDDEN);
    }
    for _ in 0..8 {
        assert_eq!(unsigned_call(&on_a).await, UNSIGNED);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    chain_call(&station, &on_b).await.expect("B serves a principal under the limit");
    chain_call(&station, &on_a).await.expect("A serves a principal under the limit");
    assert_eq!(unsigned_call(&on_b).await, UNSIGNED, "address at 9 of 10");

    // The 10th failure of each, made on B: neither instance counted 10 itself, yet both refuse.
    assert_eq!(forbidden_call(&station, &on_b).await, FORBIDDEN);
    assert_eq!(unsigned_call(&on_a).await, UNSIGNED);
    let started = Instant::now();
    loop {
        match chain_call(&station, &on_a).await {
            Err(s) if (s.code(), proto::reason(&s).unwrap_or(Reason::Unspecified)) == LIMITED => break,
            Err(s) => panic!("unexpected refusal {s:?}"),
            Ok(()) => assert!(started.elapsed() < Duration::from_secs(5), "A still serves a principal over the limit"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("A refused the principal {} ms after its 10th failure on B", started.elapsed().as_millis());
    let started = Instant::now();
    // Each probe of the address on B is one more failure there: at most 8 (B counted 1 before),
    // spaced, so that B alone never counts 10 (only the shared count can refuse it).
    let mut probes = 0;
    while unsigned_call(&on_b).await != LIMITED {
        probes += 1;
        assert!(probes < 8, "B still judges the address over the limit on its requests");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("B refused the address {} ms after its 10th failure on A", started.elapsed().as_millis());
    assert_eq!(chain_call(&station, &on_b).await.map_err(|s| s.code()), Err(Code::ResourceExhausted));
    // A registered principal's correctly signed request from the same address is still served.
    chain_call(&admin_b, &on_b).await.expect("an admin from the limited address is judged on its signature");
}

/// The CRL `path` an instance serves, checked against the issuing CA's key: (number, revoked
/// serials in hex, DER). None while it serves none.
fn served_crl(http: u16, path: &str, issuer: &pki::IssuerInfo) -> Option<(u64, Vec<String>, Vec<u8>)> {
    let (status, der) = http_get_bytes(http, path);
    if !status.contains(" 200") {
        return None;
    }
    let crl = pki::verify_crl(&der, issuer).expect("a served CRL verifies under the issuing CA");
    Some((crl.number.expect("CRL number"), crl.revoked.iter().map(|(s, _)| s.to_hex()).collect(), der))
}

async fn revoke_on(admin: &proto::client::Client, serial: &str) {
    let rv = v1::RevokeCertificateRequest {
        request_id: proto::client::request_id(),
        certificate_serial: serial.to_owned(),
        terminal_serial: String::new(),
        reason: 1,
        invalidity_ms: 0,
    };
    v1::admin_client::AdminClient::new(admin.channel.clone())
        .revoke_certificate(admin.signed("/hsca.v1.Admin/RevokeCertificate", rv).expect("sign"))
        .await
        .expect("revoke");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_crl_leader_signs_followers_serve_its_bytes_and_numbers_rise_across_a_takeover() {
    let TwoInstances { _pg, _tmp, dir_a, dir_b, http_a, http_b } = two_instances(|_| {});
    let issuer = issuer_of(&dir_a);
    let a = Server::start(&dir_a, http_a);
    let b = Server::start(&dir_b, http_b);
    let a_leads = a_leads(http_a, http_b).await;
    let ((leader, http_l), (follower, dir_f, http_f)) =
        if a_leads { ((a, http_a), (b, &dir_b, http_b)) } else { ((b, http_b), (a, &dir_a, http_a)) };
    let admin_f = admin(dir_f).await;
    let (station, _) = principal(dir_f, &admin_f, "station-1", "station", &["HSTM"]).await;
    // Serials as the CRL prints them.
    let hex = |s: String| pki::CertSerial::from_hex(&s).expect("hex serial").to_hex();
    let first = hex(issue_one(&station, &serial(1)).await.expect("issue"));
    let second = hex(issue_one(&station, &serial(2)).await.expect("issue"));

    // Revoked on the follower: the leader signs, both serve the very same bytes (SM2 signatures
    // are randomised: two signers could not produce equal CRLs).
    revoke_on(&admin_f, &first).await;
    let revoked_at = Instant::now();
    let (number, der) = loop {
        let (l, f) = (served_crl(http_l, "/crl/issuing.crl", &issuer), served_crl(http_f, "/crl/issuing.crl", &issuer));
        if let (Some((nl, listed, der_l)), Some((_, _, der_f))) = (l, f)
            && listed.contains(&first)
            && der_l == der_f
        {
            break (nl, der_l);
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(10), "the follower never served the leader's CRL");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "both instances served CRL {number} {} ms after the follower's revocation",
        revoked_at.elapsed().as_millis()
    );
    assert!(!der.is_empty());
    // The delta too (stored just after the full: a poll may fall in between).
    loop {
        let delta = |http| served_crl(http, "/crl/issuing-delta.crl", &issuer).map(|(n, _, der)| (n, der));
        if let (Some(l), Some(f)) = (delta(http_l), delta(http_f))
            && l == f
        {
            assert!(l.0 > number, "a delta numbered after its full CRL");
            break;
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(10), "the follower never served the leader's delta");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The leader dies: the follower takes the lock within a few polls and signs from then on,
    // numbered above everything the old leader signed.
    leader.kill();
    let killed = Instant::now();
    while crl_leader(http_f) != Some(true) {
        assert!(killed.elapsed() < Duration::from_secs(15), "no takeover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("the follower led {} ms after the leader died", killed.elapsed().as_millis());
    revoke_on(&admin_f, &second).await;
    let revoked_at = Instant::now();
    loop {
        if let Some((n, listed, _)) = served_crl(http_f, "/crl/issuing.crl", &issuer)
            && listed.contains(&second)
        {
            assert!(n > number, "CRL number {n} after the takeover, {number} before");
            assert!(listed.contains(&first));
            break;
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(10), "the new leader never published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(follower);
}

/// The path of the CRL a certificate names (its partition's).
fn crl_path_of(cert_der: &[u8]) -> String {
    let cert: pki::Certificate = der::Decode::from_der(cert_der).expect("der");
    let urls = pki::cert::status_urls(&cert).crl;
    assert_eq!(urls.len(), 1, "{urls:?}");
    let after_scheme = urls[0].strip_prefix("http://").expect("http URL");
    after_scheme[after_scheme.find('/').expect("path")..].to_owned()
}

/// Review finding 1: the leader's own revocation publishes a full CRL from a snapshot that may
/// already hold a follower's revocation; that follower's partition CRL must be remade too, not
/// left until the next scheduled run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_revocation_beside_a_leader_revocation_reaches_its_partition_crl() {
    let TwoInstances { _pg, _tmp, dir_a, dir_b, http_a, http_b } = two_instances(|dir_a| {
        // One certificate per partition: the two revocations of a round never share one.
        let config = dir_a.join("ca-server.toml");
        let text = std::fs::read_to_string(&config).expect("read");
        assert!(text.contains("partition_size = 100000"), "init's partition size");
        std::fs::write(&config, text.replace("partition_size = 100000", "partition_size = 1")).expect("write");
    });
    let issuer = issuer_of(&dir_a);
    let _a = Server::start(&dir_a, http_a);
    let _b = Server::start(&dir_b, http_b);
    let a_leads = a_leads(http_a, http_b).await;
    let ((dir_l, http_l), (dir_f, http_f)) =
        if a_leads { ((&dir_a, http_a), (&dir_b, http_b)) } else { ((&dir_b, http_b), (&dir_a, http_a)) };
    let (admin_l, admin_f) = (admin(dir_l).await, admin(dir_f).await);
    let (station, _) = principal(dir_f, &admin_f, "station-1", "station", &["HSTM"]).await;
    let hex = |s: &str| pki::CertSerial::from_hex(s).expect("hex serial").to_hex();
    const ROUNDS: u32 = 3;
    let mut certs = Vec::new();
    for i in 0..2 * ROUNDS {
        let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
        let terminal = serial(i + 1);
        let r = issue(&station, issue_req(&terminal, v1::TerminalClass::ClassIi, csr_for(&key, &terminal)))
            .await
            .expect("issue");
        certs.push((hex(&r.certificate_serial), crl_path_of(&r.certificate_der)));
    }
    // The partitions' first CRLs (the leader publishes them when partitions grow).
    tokio::time::sleep(Duration::from_secs(1)).await;
    for round in 0..ROUNDS as usize {
        let (on_follower, path) = &certs[2 * round];
        let (on_leader, other) = &certs[2 * round + 1];
        assert_ne!(path, other, "one certificate per partition");
        // Close in time: the leader's own publication sees the follower's revocation too.
        tokio::join!(revoke_on(&admin_f, on_follower), revoke_on(&admin_l, on_leader));
        let revoked_at = Instant::now();
        loop {
            let listed = |http| served_crl(http, path, &issuer).is_some_and(|(_, l, _)| l.contains(on_follower));
            if listed(http_l) && listed(http_f) {
                break;
            }
            assert!(
                revoked_at.elapsed() < Duration::from_secs(5),
                "round {round}: {path} leaves out the follower's revocation of {on_follower}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "round {round}: {path} listed the follower's revocation {} ms later",
            revoked_at.elapsed().as_millis()
        );
    }
}
