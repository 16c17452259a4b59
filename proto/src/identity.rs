//! Identity files: everything a client (cactl, a station) needs to call the CA — server URL, TLS
//! CA, pinned PKI root, its SM2 certificate and its passphrase-protected key — named in one TOML
//! file, so `--identity FILE` is all a tool needs. Relative paths are relative to that file.
//!
//! The passphrase comes from the file the identity names (mode 0600), else `HSCA_KEY_PASSPHRASE`,
//! else a prompt supplied by the caller — never from argv.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The environment variable that may hold a key passphrase.
pub const PASSPHRASE_ENV: &str = "HSCA_KEY_PASSPHRASE";

/// An identity file's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// Principal name.
    pub name: String,
    /// Role (station, operator, admin, auditor).
    pub role: String,
    /// gRPC URL, e.g. `https://127.0.0.1:7443`.
    pub server: String,
    /// The CA certificate of the server's TLS certificate (PEM).
    pub tls_ca: PathBuf,
    /// The pinned PKI root (PEM): chains from the CA are checked against it.
    pub pki_root: PathBuf,
    /// This principal's SM2 certificate (PEM).
    pub certificate: PathBuf,
    /// Its private key: encrypted PKCS#8 (PEM).
    pub key: PathBuf,
    /// A 0600 file holding the key's passphrase, if any.
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
}

/// An identity with its paths resolved.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The file's content.
    pub file: IdentityFile,
    /// The directory relative paths start from.
    pub base: PathBuf,
}

/// Why an identity could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The identity file is not valid TOML of the right shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// No passphrase from the file, the environment or a prompt.
    #[error("no key passphrase: name a passphrase_file, set {PASSPHRASE_ENV}, or run interactively")]
    NoPassphrase,
    /// The passphrase file is readable by others.
    #[error("{0} must not be readable by group or others (chmod 600)")]
    LoosePermissions(PathBuf),
    /// The key could not be decrypted.
    #[error(transparent)]
    Key(#[from] hsm::HsmError),
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Io { path: path.to_owned(), source })
}

impl Identity {
    /// Reads an identity file.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let text = read(path)?;
        let file: IdentityFile = toml::from_str(&text)
            .map_err(|e| IdentityError::Parse { path: path.to_owned(), message: e.to_string() })?;
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        Ok(Self { file, base })
    }

    /// A path named by the file, resolved.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() { p.to_owned() } else { self.base.join(p) }
    }

    /// The certificate's DER.
    pub fn certificate_der(&self) -> Result<Vec<u8>, IdentityError> {
        let path = self.path(&self.file.certificate);
        let pem = read(&path)?;
        let (_, der) = der_pem(&pem).map_err(|message| IdentityError::Parse { path, message })?;
        Ok(der)
    }

    /// Text of a PEM file the identity names.
    pub fn read_named(&self, p: &Path) -> Result<String, IdentityError> {
        read(&self.path(p))
    }

    /// The passphrase: from the named 0600 file, else the environment, else `prompt`.
    pub fn passphrase(&self, prompt: impl FnOnce() -> Option<String>) -> Result<Zeroizing<String>, IdentityError> {
        if let Some(f) = &self.file.passphrase_file {
            let path = self.path(f);
            check_private(&path)?;
            return Ok(Zeroizing::new(read(&path)?.trim_end_matches(['\n', '\r']).to_owned()));
        }
        if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
            return Ok(Zeroizing::new(p));
        }
        prompt().map(Zeroizing::new).ok_or(IdentityError::NoPassphrase)
    }

    /// Decrypts the private key.
    pub fn signer(&self, passphrase: &str) -> Result<hsm::backend::memory::SoftwareSm2Key, IdentityError> {
        let pem = Zeroizing::new(read(&self.path(&self.file.key))?);
        Ok(hsm::backend::file::decrypt(&pem, passphrase.as_bytes(), Default::default())?)
    }
}

fn der_pem(pem: &str) -> Result<(String, Vec<u8>), String> {
    let (label, der) = ::der::pem::decode_vec(pem.trim().as_bytes()).map_err(|e| e.to_string())?;
    Ok((label.to_owned(), der))
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| IdentityError::Io { path: path.to_owned(), source })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(IdentityError::LoosePermissions(path.to_owned()));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> Result<(), IdentityError> {
    Ok(())
}

/// Writes `contents` to a new file readable only by its owner.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Asks for the key passphrase on the terminal (stderr prompt, stdin answer, not echoed); `None`
/// when stdin is not a terminal, so scripts fail with a clear "no passphrase" instead of hanging.
pub fn prompt_passphrase() -> Option<String> {
    read_hidden("key passphrase: ").ok().map(|p| p.as_str().to_owned())
}

/// Why a new passphrase could not be read at the prompt.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// Stdin is not a terminal.
    #[error("--passphrase prompt needs a terminal on stdin (use a passphrase file or {PASSPHRASE_ENV} in scripts)")]
    NotATerminal,
    /// The terminal could not be read or set up.
    #[error("reading the passphrase: {0}")]
    Io(#[from] std::io::Error),
    /// The two entries differ.
    #[error("the passphrases do not match")]
    Mismatch,
    /// Too short.
    #[error("the passphrase must have at least {MIN_PASSPHRASE} characters")]
    TooShort,
}

/// Shortest passphrase accepted at the prompt.
pub const MIN_PASSPHRASE: usize = 8;

/// Asks twice, without echo, for a new key passphrase; both must match.
pub fn prompt_new_passphrase(what: &str) -> Result<Zeroizing<String>, PromptError> {
    let first = read_hidden(&format!("new passphrase for {what}: "))?;
    if first.chars().count() < MIN_PASSPHRASE {
        return Err(PromptError::TooShort);
    }
    let second = read_hidden("again: ")?;
    if first != second {
        return Err(PromptError::Mismatch);
    }
    Ok(first)
}

/// Prints `prompt` on stderr and reads one line from the terminal on stdin with echo off; the
/// terminal's settings are restored on every path out.
#[cfg(unix)]
fn read_hidden(prompt: &str) -> Result<Zeroizing<String>, PromptError> {
    use std::io::{BufRead, IsTerminal, Write};
    use std::os::fd::AsRawFd;

    /// Puts the saved settings back when dropped.
    struct Restore(i32, libc::termios);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: fd 0 stays open for the process's life; the struct came from tcgetattr.
            unsafe { libc::tcsetattr(self.0, libc::TCSANOW, &self.1) };
        }
    }

    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(PromptError::NotATerminal);
    }
    let fd = stdin.as_raw_fd();
    let mut saved = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: `fd` is an open terminal; tcgetattr fills the struct when it returns 0.
    if unsafe { libc::tcgetattr(fd, saved.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: initialised by the successful tcgetattr above.
    let saved = unsafe { saved.assume_init() };
    let mut quiet = saved;
    // No echo of what is typed, but the Enter still moves to the next line.
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: as above; `quiet` is a valid termios derived from the current one.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let _restore = Restore(fd, saved);
    let mut err = std::io::stderr();
    err.write_all(prompt.as_bytes())?;
    err.flush()?;
    // Room reserved up front, so the passphrase is not left behind in a reallocated buffer.
    let mut line = Zeroizing::new(String::with_capacity(1024));
    stdin.lock().read_line(&mut line)?;
    let end = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(end);
    Ok(line)
}

#[cfg(not(unix))]
fn read_hidden(_prompt: &str) -> Result<Zeroizing<String>, PromptError> {
    Err(PromptError::NotATerminal)
}
