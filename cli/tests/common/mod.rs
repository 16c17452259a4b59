//! Helpers shared by the tests that drive the real `cactl` and `ca-server` binaries.
#![allow(dead_code)]

#[cfg(unix)]
pub mod pty;
pub mod webdriver;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

pub const CACTL: &str = env!("CARGO_BIN_EXE_cactl");

pub fn ca_server() -> PathBuf {
    let p = Path::new(CACTL).with_file_name("ca-server");
    assert!(p.exists(), "{} not built: run `cargo build -p ca-server` (cargo test --workspace does)", p.display());
    p
}

pub use registry::testing::free_port as port;

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn")
}

pub fn cactl(args: &[&str]) -> Output {
    run(Command::new(CACTL).args(args))
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

pub struct Serving(pub Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CA made by `ca-server init` in `dir/ca` and served; gRPC and HTTP ports.
pub struct RunningCa {
    pub dir: PathBuf,
    pub grpc: u16,
    pub http: u16,
    pub server: Option<Serving>,
}

impl RunningCa {
    pub fn init(dir: &Path) -> Self {
        Self::init_with(dir, |_| {})
    }

    /// `init`, then `edit` the server configuration, then serve.
    pub fn init_with(dir: &Path, edit: impl FnOnce(&mut String)) -> Self {
        let ca = dir.join("ca");
        let (grpc, http) = (port(), port());
        let init = run(Command::new(ca_server()).args(["init", "--data-dir"]).arg(&ca).args([
            "--grpc",
            &format!("127.0.0.1:{grpc}"),
            "--http",
            &format!("127.0.0.1:{http}"),
        ]));
        assert!(init.status.success(), "{}", text(&init));
        let config = ca.join("ca-server.toml");
        let mut toml = std::fs::read_to_string(&config).expect("config");
        edit(&mut toml);
        std::fs::write(&config, toml).expect("config");
        let mut c = RunningCa { dir: ca, grpc, http, server: None };
        c.start();
        c
    }

    /// Starts `serve` and waits until it listens on its HTTP port.
    pub fn start(&mut self) {
        let mut cmd = Command::new(ca_server());
        cmd.args(["serve", "--config"]).arg(self.dir.join("ca-server.toml"));
        self.start_with(cmd);
    }

    /// Starts `cmd` (a `ca-server serve` command line) and waits until it listens on its HTTP port.
    pub fn start_with(&mut self, mut cmd: Command) {
        let child = registry::testing::spawn_listening(&mut cmd, self.http).unwrap_or_else(|e| panic!("{e}"));
        self.server = Some(Serving(child));
    }

    /// SIGTERM and wait (a graceful stop).
    pub fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = Command::new("kill").args(["-TERM", &s.0.id().to_string()]).status();
            let _ = s.0.wait();
        }
    }

    /// `cactl --config <admin>` with `args`.
    pub fn admin(&self, args: &[&str]) -> Output {
        run(Command::new(CACTL).arg("--config").arg(self.dir.join("cactl.toml")).args(args))
    }

    /// `cactl principal add` as the admin: a `role` principal `name` (bound to `makers` for a
    /// station) written to `dir/name`; returns that directory and cactl's output.
    pub fn add_principal(&self, dir: &Path, role: &str, name: &str, makers: &[&str]) -> (PathBuf, Output) {
        let out_dir = dir.join(name);
        let mut args =
            vec!["principal", "add", "--role", role, "--name", name, "--out", out_dir.to_str().expect("utf8")];
        let joined = makers.join(",");
        if !makers.is_empty() {
            args.extend(["--manufacturers", joined.as_str()]);
        }
        let out = self.admin(&args);
        assert!(out.status.success(), "{}", text(&out));
        (out_dir, out)
    }

    /// GET `path` on the HTTP side: (header, body).
    pub fn get(&self, path: &str) -> (String, Vec<u8>) {
        self.http_request(&format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").into_bytes())
    }

    /// POST `body` to `path`: (header, body).
    pub fn post(&self, path: &str, body: &[u8]) -> (String, Vec<u8>) {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/ocsp-request\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.http_request(&req)
    }

    /// Sends a raw HTTP request: (header, body).
    pub fn request_with(&self, raw: &str) -> (String, Vec<u8>) {
        self.http_request(raw.as_bytes())
    }

    fn http_request(&self, req: &[u8]) -> (String, Vec<u8>) {
        http(self.http, req)
    }
}

/// Sends a raw HTTP/1.1 request (with `Connection: close`) to 127.0.0.1:`port`: (header, body).
pub fn http(port: u16, req: &[u8]) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    s.write_all(req).expect("write");
    // Up to Content-Length when there is one: some servers (chromedriver) keep the connection open.
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..split]).into_owned();
            let length = head.lines().find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            });
            if let Some(n) = length.filter(|n| raw.len() >= split + 4 + n) {
                return (head, raw[split + 4..split + 4 + n].to_vec());
            }
        }
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    (head, raw[split + 4..].to_vec())
}

/// A running `cactl console` and the one-time URL it printed.
pub struct Console {
    pub child: Serving,
    pub port: u16,
    pub url: String,
}

impl Console {
    /// Starts `cactl --identity IDENTITY console` on a free loopback port; waits for its URL.
    pub fn start(identity: &Path) -> Self {
        Self::start_with(identity, &[])
    }

    /// `start`, with more `console` arguments (e.g. `--fleet URL --fleet-tls-ca PEM`).
    pub fn start_with(identity: &Path, extra: &[&str]) -> Self {
        use std::io::BufRead;
        let port = port();
        let mut child = Command::new(CACTL)
            .arg("--identity")
            .arg(identity)
            .args(["console", "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("cactl console");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        let child = Serving(child);
        let mut out = std::io::BufReader::new(stdout);
        out.read_line(&mut line).expect("console prints its URL");
        // Keep reading, so the console never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let url = line.split_whitespace().find(|w| w.starts_with("http://")).expect("URL in first line").to_owned();
        assert!(url.starts_with(&format!("http://127.0.0.1:{port}/login?token=")), "{line}");
        Console { child, port, url }
    }

    /// The path and query of the printed URL (`/login?token=…`).
    pub fn login_path(&self) -> String {
        self.url.trim_start_matches(&format!("http://127.0.0.1:{}", self.port)).to_owned()
    }

    /// GET `path` with `extra` header lines: (header, body as text).
    pub fn get(&self, path: &str, extra: &str) -> (String, String) {
        let (h, b) = http(
            self.port,
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n{extra}\r\n", self.port)
                .as_bytes(),
        );
        (h, String::from_utf8_lossy(&b).into_owned())
    }

    /// POST a form `body` to `path` with `extra` header lines: (header, body as text).
    pub fn post(&self, path: &str, extra: &str, body: &str) -> (String, String) {
        let (h, b) = http(
            self.port,
            format!(
                "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n{extra}\r\n{body}",
                self.port,
                body.len()
            )
            .as_bytes(),
        );
        (h, String::from_utf8_lossy(&b).into_owned())
    }
}

/// Runs openssl in `dir`; (success, stdout + stderr).
pub fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let o = run(Command::new("openssl").args(args).current_dir(dir));
    (o.status.success(), text(&o))
}

/// A terminal issued by [`issue`]: its serial, PEM file name (in the test dir) and certificate serial.
pub struct Terminal {
    pub serial: &'static str,
    pub pem: String,
    pub cert_serial: String,
}

/// Makes an SM2 key and CSR for `serial` with OpenSSL in `d` and issues it as `station` (in lot `lot`).
pub fn issue(ca: &RunningCa, d: &Path, station: &Path, serial: &'static str, lot: &str) -> Terminal {
    let key = format!("{serial}.key");
    let csr = format!("{serial}.csr");
    let pem = format!("{serial}.pem");
    assert!(openssl(d, &["genpkey", "-algorithm", "SM2", "-out", &key]).0);
    let subj = format!("/CN={serial}/serialNumber={serial}");
    let (ok, out) = openssl(
        d,
        &["req", "-new", "-key", &key, "-sm3", "-sigopt", "distid:1234567812345678", "-subj", &subj, "-out", &csr],
    );
    assert!(ok, "{out}");
    let o = std::process::Command::new(CACTL)
        .current_dir(d)
        .arg("--identity")
        .arg(station.join("identity.toml"))
        .args(["issue", "--csr", &csr, "--serial", serial, "--class", "II", "--out", &pem, "--lot", lot])
        .output()
        .expect("cactl issue");
    assert!(o.status.success(), "{}", text(&o));
    let cert = pki::pem::certificate_from_pem(&std::fs::read_to_string(d.join(&pem)).expect("pem")).expect("cert");
    let _ = ca;
    Terminal { serial, pem, cert_serial: pki::CertSerial::of(&cert).expect("serial").to_hex() }
}

/// A binary built beside `cactl` (fleet-server, terminal-sim).
pub fn sibling(name: &str) -> PathBuf {
    let p = Path::new(CACTL).with_file_name(name);
    assert!(
        p.exists(),
        "{} not built: cargo build -p fleet -p terminal-sim (cargo test --workspace does)",
        p.display()
    );
    p
}

/// Replaces the first `from` in the file at `path` with `to`.
pub fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    assert!(text.contains(from), "{from}");
    std::fs::write(path, text.replacen(from, to, 1)).expect("write");
}

/// A `fleet-server` made by `init` in `dir/fleet` with the CA identity of a monitor principal,
/// relocation sustained over 2 heartbeats (not 3), and served.
pub struct RunningFleet {
    pub server: Serving,
    /// Its gRPC URL.
    pub url: String,
    /// Its TLS CA (PEM file).
    pub tls_ca: PathBuf,
}

impl RunningFleet {
    pub fn start(dir: &Path, monitor: &Path) -> Self {
        let (grpc, http) = (port(), port());
        let fleet_dir = dir.join("fleet");
        let init = run(Command::new(sibling("fleet-server"))
            .args(["init", "--data-dir"])
            .arg(&fleet_dir)
            .arg("--ca-identity")
            .arg(monitor.join("identity.toml"))
            .args(["--grpc", &format!("127.0.0.1:{grpc}"), "--http", &format!("127.0.0.1:{http}")]));
        assert!(init.status.success(), "{}", text(&init));
        edit(&fleet_dir.join("policies/fleet.toml"), "sustained_heartbeats = 3", "sustained_heartbeats = 2");
        let mut serve = Command::new(sibling("fleet-server"));
        serve.args(["serve", "--config"]).arg(fleet_dir.join("fleet-server.toml"));
        let server = Serving(registry::testing::spawn_listening(&mut serve, http).unwrap_or_else(|e| panic!("{e}")));
        RunningFleet { server, url: format!("https://127.0.0.1:{grpc}"), tls_ca: fleet_dir.join("tls/ca.pem") }
    }

    /// `--fleet URL --fleet-tls-ca PEM`, for `cactl console` and `cactl alerts`.
    pub fn args(&self) -> Vec<String> {
        vec!["--fleet".into(), self.url.clone(), "--fleet-tls-ca".into(), self.tls_ca.display().to_string()]
    }

    /// `terminal-sim fleet` as `station` with `sim_args` (count, timing, injections), spawned.
    pub fn simulate(&self, station: &Path, sim_args: &[&str]) -> Child {
        Command::new(sibling("terminal-sim"))
            .arg("fleet")
            .arg("--station")
            .arg(station.join("identity.toml"))
            .args(["--fleet", &self.url])
            .arg("--fleet-tls-ca")
            .arg(&self.tls_ca)
            .args(sim_args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("terminal-sim fleet")
    }
}
