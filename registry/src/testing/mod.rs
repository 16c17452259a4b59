//! A real PostgreSQL server for tests (feature `test-hooks`): `initdb` + `pg_ctl` in a temp
//! dir, on a free port, with its unix socket in that dir, stopped when the guard drops (also
//! when the test panics). Every test that needs PostgreSQL uses this one harness.
//!
//! Running as root (CI, the developers' machines) the server cannot run as root, so the data
//! directory is given to the `postgres` system user (made by Debian's `postgresql` package) and
//! `initdb`/`pg_ctl` run as that user through `runuser`. The cluster is made once per machine as
//! a template (`$TMPDIR/hsca-pg-template-<version>`) and copied for each server; it trusts local
//! connections and runs with `fsync=off` (tests prove behaviour, not durability on power loss).
//!
//! [`ports`] hands out the ports every test server in the workspace listens on.

pub mod ports;

pub use ports::{free_port, spawn_listening, wait_listening};

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running test server; stopped on drop.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as_postgres: bool,
}

fn pg_bin() -> Result<PathBuf, String> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("no /usr/lib/postgresql ({e}): install Debian's postgresql package"))?
        .filter_map(|d| d.ok().map(|d| d.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin: install postgresql".into())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn postgres_ids() -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id").args([flag, "postgres"]).output().map_err(|e| e.to_string())?;
        String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|_| "no postgres system user".to_string())
    };
    Ok((id("-u")?, id("-g")?))
}

fn run(bin: &Path, as_postgres: bool, tool: &str, args: &[&str]) -> Result<(), String> {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    };
    let out = cmd.args(args).output().map_err(|e| format!("{tool}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn give_to_postgres(path: &Path) -> Result<(), String> {
    let (uid, gid) = postgres_ids()?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", path.display()))
}

/// The template cluster, made once (concurrent makers race to a rename; the loser's is dropped).
fn template(bin: &Path, as_postgres: bool) -> Result<PathBuf, String> {
    let version =
        bin.parent().and_then(|p| p.file_name()).map(|v| v.to_string_lossy().into_owned()).unwrap_or_default();
    let target = std::env::temp_dir().join(format!("hsca-pg-template-{version}"));
    if target.join("PG_VERSION").exists() {
        return Ok(target);
    }
    let making = tempfile::Builder::new().prefix("hsca-pg-making-").tempdir().map_err(|e| e.to_string())?;
    let data = making.path().join("data");
    if as_postgres {
        give_to_postgres(making.path())?;
    }
    let data_s = data.to_string_lossy().into_owned();
    run(bin, as_postgres, "initdb", &["-D", &data_s, "-U", "hsca", "--auth=trust", "--no-sync", "-E", "UTF8"])?;
    if std::fs::rename(&data, &target).is_err() && !target.join("PG_VERSION").exists() {
        return Err(format!("could not place the template at {}", target.display()));
    }
    Ok(target)
}

impl PgServer {
    /// Starts a fresh server (an empty cluster with database `postgres`, user `hsca`).
    pub fn start() -> Result<Self, String> {
        let bin = pg_bin()?;
        let as_postgres = is_root();
        let template = template(&bin, as_postgres)?;
        let dir = tempfile::Builder::new().prefix("hsca-pg-").tempdir().map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        let status = Command::new("cp").arg("-a").arg(&template).arg(&data).status().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err("copying the template cluster failed".into());
        }
        if as_postgres {
            give_to_postgres(dir.path())?;
        }
        let port = free_port();
        let server = Self { dir, bin, port, run_as_postgres: as_postgres };
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            server.dir.path().display()
        );
        let log = server.dir.path().join("server.log");
        run(
            &server.bin,
            as_postgres,
            "pg_ctl",
            &["-D", &data.to_string_lossy(), "-l", &log.to_string_lossy(), "-o", &options, "-w", "-t", "60", "start"],
        )?;
        Ok(server)
    }

    /// The URL of database `postgres` on this server.
    pub fn url(&self) -> String {
        format!("postgres://hsca@127.0.0.1:{}/postgres", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server at once (as a crash would) and starts it again on the same port.
    pub fn restart(&self) -> Result<(), String> {
        self.stop("immediate")?;
        let data = self.dir.path().join("data");
        let options =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.path().display());
        let log = self.dir.path().join("server.log");
        run(
            &self.bin,
            self.run_as_postgres,
            "pg_ctl",
            &["-D", &data.to_string_lossy(), "-l", &log.to_string_lossy(), "-o", &options, "-w", "-t", "60", "start"],
        )
    }

    fn stop(&self, mode: &str) -> Result<(), String> {
        let data = self.dir.path().join("data");
        run(&self.bin, self.run_as_postgres, "pg_ctl", &["-D", &data.to_string_lossy(), "-m", mode, "-w", "stop"])
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
    }
}
