//! Helpers shared by the end-to-end tests: the real `ca-server` binary started on free ports,
//! clients acting as its principals, and requests built as a station builds them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use hsm::backend::memory::SoftwareSm2Key;
use pki::SignerId;
use proto::client::{Client, request_id};
use proto::identity::{Identity, IdentityFile};
use proto::v1::{self, Reason};
use tonic::Code;

pub const EXE: &str = env!("CARGO_BIN_EXE_ca-server");

pub use registry::testing::free_port;

pub struct Server {
    pub child: Child,
    pub dir: PathBuf,
}

impl Server {
    pub fn start(dir: &Path, http: u16) -> Self {
        Self::start_with(dir, http, &[])
    }

    /// `serve` with `flags` too; returns once this child (not another process) listens on `http`.
    pub fn start_with(dir: &Path, http: u16, flags: &[&str]) -> Self {
        let mut serve = Command::new(EXE);
        serve.arg("serve").args(flags).arg("--config").arg(dir.join("ca-server.toml"));
        let child = registry::testing::spawn_listening(&mut serve, http).unwrap_or_else(|e| panic!("{e}"));
        Self { child, dir: dir.to_owned() }
    }

    /// Stops the server as an operator does (SIGTERM: it finishes and flushes), and waits.
    pub fn terminate(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

pub fn init(dir: &Path) -> (u16, u16) {
    let (grpc, http) = (free_port(), free_port());
    let out = Command::new(EXE)
        .args(["init", "--data-dir"])
        .arg(dir)
        .args(["--grpc", &format!("127.0.0.1:{grpc}"), "--http", &format!("127.0.0.1:{http}")])
        .output()
        .expect("ca-server init");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (grpc, http)
}

pub async fn admin(dir: &Path) -> Client {
    admin_named(dir, "admin").await
}

/// A client acting as the admin identity `init` made in `identities/NAME`.
pub async fn admin_named(dir: &Path, name: &str) -> Client {
    let id = Identity::load(&dir.join(format!("identities/{name}/identity.toml"))).expect("admin identity");
    let pass = id.passphrase(|| None).expect("passphrase file");
    Client::connect(&id, None, Box::new(id.signer(&pass).expect("key"))).await.expect("connect")
}

/// Adds a principal through the Admin service and returns a client acting as it.
pub async fn principal(dir: &Path, admin: &Client, name: &str, role: &str, makers: &[&str]) -> (Client, String) {
    let (client, resp) = principal_answer(dir, admin, name, role, makers).await.expect("issue principal");
    (client, resp.certificate_serial)
}

/// Adds a principal; the client acting as it and the whole answer, or the refusal.
pub async fn principal_answer(
    dir: &Path,
    admin: &Client,
    name: &str,
    role: &str,
    makers: &[&str],
) -> Result<(Client, v1::IssuePrincipalResponse), tonic::Status> {
    let key = SoftwareSm2Key::generate(SignerId::default()).expect("key");
    let subject: pki::Name = format!("CN={name}").parse().expect("name");
    let info = pki::csr::build_csr_info(&subject, key.sm2_public_key()).expect("info");
    let sig = hsm::Signer::sign(&key, &info).expect("sign");
    let csr = pki::csr::assemble_csr(&info, sig.as_der(), &SignerId::default()).expect("csr");
    let msg = v1::IssuePrincipalRequest {
        request_id: request_id(),
        name: name.into(),
        role: role.into(),
        csr_der: csr,
        manufacturers: makers.iter().map(|s| s.to_string()).collect(),
    };
    let resp = v1::admin_client::AdminClient::new(admin.channel.clone())
        .issue_principal(admin.signed("/hsca.v1.Admin/IssuePrincipal", msg).expect("sign"))
        .await?
        .into_inner();
    let pdir = dir.join(format!("principal-{name}"));
    std::fs::create_dir_all(&pdir).expect("mkdir");
    std::fs::write(pdir.join("cert.pem"), pki::pem::der_to_pem("CERTIFICATE", &resp.certificate_der).expect("pem"))
        .expect("w");
    let admin_dir = dir.join("identities/admin");
    let file = IdentityFile {
        name: name.into(),
        role: role.into(),
        server: Identity::load(&admin_dir.join("identity.toml")).expect("id").file.server,
        tls_ca: admin_dir.join("tls-ca.pem"),
        pki_root: admin_dir.join("root.pem"),
        certificate: pdir.join("cert.pem"),
        key: pdir.join("unused.key"),
        passphrase_file: None,
    };
    let id = Identity { file, base: pdir.clone() };
    Ok((Client::connect(&id, None, Box::new(key)).await.expect("connect"), resp))
}

pub fn serial(n: u32) -> String {
    let body = format!("HSTM012611{n:05}");
    let check = pki::serial::CheckAlgorithm::Iso7064Mod37_36.compute(&body).expect("check");
    format!("{body}{check}")
}

pub fn csr_for(key: &SoftwareSm2Key, serial: &str) -> Vec<u8> {
    let subject: pki::Name = format!("CN={serial},serialNumber={serial}").parse().expect("name");
    let info = pki::csr::build_csr_info(&subject, key.sm2_public_key()).expect("info");
    let sig = hsm::Signer::sign(key, &info).expect("sign");
    pki::csr::assemble_csr(&info, sig.as_der(), &SignerId::default()).expect("csr")
}

pub fn issue_req(serial: &str, class: v1::TerminalClass, csr: Vec<u8>) -> v1::IssueTerminalCertificateRequest {
    v1::IssueTerminalCertificateRequest {
        request_id: request_id(),
        terminal_serial: serial.into(),
        class: class as i32,
        model: String::new(),
        csr_der: csr,
        reissue: false,
        lot: "L1".into(),
    }
}

pub async fn issue(
    c: &Client,
    req: v1::IssueTerminalCertificateRequest,
) -> Result<v1::IssueTerminalCertificateResponse, tonic::Status> {
    let signed = c.signed("/hsca.v1.CertificateAuthority/IssueTerminalCertificate", req).expect("sign");
    v1::certificate_authority_client::CertificateAuthorityClient::new(c.channel.clone())
        .issue_terminal_certificate(signed)
        .await
        .map(|r| r.into_inner())
}

pub fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, Reason) {
    let s = r.expect_err("must be refused");
    (s.code(), proto::reason(&s).unwrap_or(Reason::Unspecified))
}

pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out =
        Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (scripts/test.sh installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The registry backend an end-to-end test runs on (`on_both_backends!` runs a test on each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The redb file `init` made (the default).
    Redb,
    /// A PostgreSQL server of the test's own.
    Postgres,
}

/// The registry a test's CA uses; keeps its PostgreSQL server running while it lives.
pub struct Store {
    /// The test's PostgreSQL server, on that backend.
    pub pg: Option<registry::testing::PgServer>,
    path: PathBuf,
}

impl Store {
    /// Opens the registry directly (the server must be stopped for redb).
    pub fn open(&self) -> registry::Registry {
        match &self.pg {
            Some(pg) => registry::Registry::open_postgres(&pg.url()).expect("open the PostgreSQL registry"),
            None => registry::Registry::open(&self.path).expect("open the redb registry"),
        }
    }
}

/// Puts the CA that `init` just made in `dir` on `backend`: for PostgreSQL, a server of the
/// test's own, `[registry] url` in the configuration, `ca-server migrate --from` the redb
/// registry `init` made, which is then deleted (so nothing can still read it by mistake).
pub fn use_backend(backend: Backend, dir: &Path) -> Store {
    let path = dir.join("registry.redb");
    if backend == Backend::Redb {
        return Store { pg: None, path };
    }
    let pg = registry::testing::PgServer::start().expect("PostgreSQL test server");
    let config = dir.join("ca-server.toml");
    let text = std::fs::read_to_string(&config).expect("read");
    assert!(text.contains("path = \"registry.redb\""), "init's registry line");
    let url = format!("url = \"{}\"\ninstance = 1", pg.url());
    std::fs::write(&config, text.replace("path = \"registry.redb\"", &url)).expect("write");
    let out = Command::new(EXE)
        .args(["migrate", "--config"])
        .arg(&config)
        .arg("--from")
        .arg(&path)
        .output()
        .expect("ca-server migrate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_file(&path).expect("remove the migrated redb file");
    Store { pg: Some(pg), path }
}

/// Runs each named `async fn(Backend)` as two tests, `name::redb` and `name::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn redb() {
                super::$name(super::Backend::Redb).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    )*};
}

/// GET `path`: the status line and the body's bytes (empty when nothing answers).
pub fn http_get_bytes(port: u16, path: &str) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return (String::new(), Vec::new()) };
    if write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_err() {
        return (String::new(), Vec::new());
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").map_or(out.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&out[..split]);
    (head.lines().next().unwrap_or_default().to_owned(), out[split..].to_vec())
}
