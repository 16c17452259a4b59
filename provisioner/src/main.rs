//! `provisioner`: placeholder until issue #5 lands; see this crate's README for what it will hold.

fn main() -> std::process::ExitCode {
    eprintln!("provisioner: not built yet (issue #5); see provisioner/README.md");
    std::process::ExitCode::from(2)
}
