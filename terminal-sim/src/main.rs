//! `terminal-sim`: placeholder until issue #5 lands; see this crate's README for what it will hold.

fn main() -> std::process::ExitCode {
    eprintln!("terminal-sim: not built yet (issue #5); see terminal-sim/README.md");
    std::process::ExitCode::from(2)
}
