//! What the station's end-to-end tests share: the real binaries next to `provisioner`, free
//! ports, and child processes killed when a test ends (or panics).
// Each test file uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The station binary under test.
pub const PROVISIONER: &str = env!("CARGO_BIN_EXE_provisioner");

/// A binary built beside `provisioner`.
pub fn sibling(name: &str) -> PathBuf {
    let p = Path::new(PROVISIONER).with_file_name(name);
    assert!(p.exists(), "{} not built: run `cargo build --workspace --bins`", p.display());
    p
}

/// A free local TCP port.
pub use registry::testing::free_port as port;

/// A finished command's stdout and stderr.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A child process killed and reaped on drop.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ca-server serve --config CONFIG`, once its gRPC port `grpc` accepts connections.
pub fn serve_ca(config: &Path, grpc: u16) -> Killed {
    let mut child = Command::new(sibling("ca-server"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let listening = registry::testing::wait_listening(&mut child, grpc, Duration::from_secs(30));
    let server = Killed(child);
    if let Err(e) = listening {
        panic!("ca-server: {e}");
    }
    server
}
