//! `cactl`: placeholder until issue #4 lands; see this crate's README for what it will hold.

fn main() -> std::process::ExitCode {
    eprintln!("cactl: not built yet (issue #4); see cli/README.md");
    std::process::ExitCode::from(2)
}
