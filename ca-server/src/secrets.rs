//! Secrets at rest (issue 11 §5): like ssh with a private key, `serve` refuses a PIN or key file
//! that its group or other users could read or write, naming the file and the fix.

use std::path::{Path, PathBuf};

/// A secret file's permissions are too open, or it cannot be inspected.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// Group or other users have access.
    #[error(
        "{what} {path} is accessible by group or others (mode {mode:04o}); refusing to use it: run `chmod 600 {path}`"
    )]
    TooOpen {
        /// What the file holds (e.g. "the HSM PIN file").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file could not be inspected.
    #[error("{what} {path}: {source}")]
    Io {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Refuses `path` unless only its owner may read or write it (mode 0600 or 0400).
pub fn check_private_file(path: &Path, what: &'static str) -> Result<(), SecretFileError> {
    let meta = std::fs::metadata(path).map_err(|source| SecretFileError::Io { what, path: path.to_owned(), source })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretFileError::TooOpen { what, path: path.to_owned(), mode });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn group_or_world_access_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("pin");
        std::fs::write(&f, "1234").expect("write");
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false), (0o620, false), (0o644, false)]
        {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let r = check_private_file(&f, "the HSM PIN file");
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
            if let Err(e) = r {
                let msg = e.to_string();
                assert!(msg.contains(&f.display().to_string()) && msg.contains("chmod 600"), "{msg}");
            }
        }
        let missing = check_private_file(&dir.path().join("absent"), "the TLS key");
        assert!(matches!(missing, Err(SecretFileError::Io { .. })));
    }
}
