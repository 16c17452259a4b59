//! `ca-server`: placeholder until issue #4 lands; see this crate's README for what it will hold.

fn main() -> std::process::ExitCode {
    eprintln!("ca-server: not built yet (issue #4); see ca-server/README.md");
    std::process::ExitCode::from(2)
}
