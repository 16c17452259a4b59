//! What the station's end-to-end tests share: the real binaries next to `provisioner`, free
//! ports, and child processes killed when a test ends (or panics).
// Each test file uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

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

/// `ca-server serve --config CONFIG`, once it listens on its gRPC port `grpc`.
pub fn serve_ca(config: &Path, grpc: u16) -> Killed {
    let mut serve = Command::new(sibling("ca-server"));
    serve.args(["serve", "--config"]).arg(config);
    Killed(registry::testing::spawn_listening(&mut serve, grpc).unwrap_or_else(|e| panic!("{e}")))
}
