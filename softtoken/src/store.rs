//! The token on disk: one JSON file, replaced atomically, with private objects sealed.
//!
//! Key hierarchy: a random 32-byte master key seals the private objects (SM4-CBC + HMAC-SM3).
//! The master key itself is stored twice, sealed under PBKDF2-HMAC-SM3(SO PIN) and under
//! PBKDF2-HMAC-SM3(user PIN): a wrong PIN cannot unseal it (and that is how a PIN is checked),
//! and the SO can set a new user PIN without losing objects. Public objects (public keys,
//! certificates) are stored in clear so they are visible before login, as PKCS#11 requires.
//!
//! Writes go to `token.json.tmp`, are fsynced, renamed over `token.json`, and the directory is
//! fsynced: after a crash the file is the old one or the new one, never a torn mix.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, CryptoError};
use crate::object::Object;

/// A PIN's record: salt, iteration count, and the master key sealed under the PIN's key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PinRecord {
    /// PBKDF2 salt, hex.
    pub salt: String,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// The master key sealed under the PIN-derived key, hex.
    pub sealed_master: String,
    /// Consecutive wrong attempts.
    pub failures: u32,
}

/// Everything persisted about the token.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TokenFile {
    /// Format version.
    pub version: u32,
    /// Token label (≤ 32 bytes).
    pub label: String,
    /// Token serial number (16 hex characters).
    pub serial: String,
    /// SO PIN; `None` until `C_InitToken`.
    pub so: Option<PinRecord>,
    /// User PIN; `None` until `C_InitPIN`.
    pub user: Option<PinRecord>,
    /// Public token objects by handle.
    pub public_objects: Vec<(u64, Object)>,
    /// Private token objects, sealed under the master key: hex of seal(JSON of `[(handle, Object)]`).
    pub private_objects: Option<String>,
    /// Next object handle to hand out.
    pub next_handle: u64,
    /// Bumped by every write: tells a process whether its view of the token is stale.
    #[serde(default)]
    pub generation: u64,
}

const FILE: &str = "token.json";
const TMP: &str = "token.json.tmp";
const LOCK: &str = ".lock";

/// Why the store could not be read or written.
#[derive(Debug)]
pub enum StoreError {
    /// File-system error.
    Io(std::io::Error),
    /// The file does not parse.
    Corrupt(String),
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Reads the token file, or an empty (uninitialised) token if there is none.
pub fn load(dir: &Path) -> Result<TokenFile, StoreError> {
    fs::create_dir_all(dir)?;
    let lock = lock_file(dir)?;
    lock.lock_shared()?;
    let result = read(dir);
    lock.unlock()?;
    result
}

/// The identity of `token.json` (inode, modification time, size): it changes with every write,
/// since each write renames a new file over the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp(u64, i64, i64, u64);

/// The current [`Stamp`] of the token file, `None` when there is none.
#[cfg(unix)]
pub fn stamp(dir: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(dir.join(FILE)).ok()?;
    Some(Stamp(m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
}

/// The current [`Stamp`] of the token file, `None` when there is none.
#[cfg(not(unix))]
pub fn stamp(dir: &Path) -> Option<Stamp> {
    let m = fs::metadata(dir.join(FILE)).ok()?;
    Some(Stamp(0, 0, 0, m.len()))
}

fn read(dir: &Path) -> Result<TokenFile, StoreError> {
    let path = dir.join(FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(TokenFile { version: 1, next_handle: 1, ..Default::default() })
        }
        Err(e) => Err(e.into()),
    }
}

/// Read-modify-write under the token's exclusive file lock, so that writers in other processes
/// (and threads) neither overwrite each other's changes nor act on a stale copy. `f` sees the file
/// as it is on disk now and answers `(result, changed)`; the file is written (with its generation
/// bumped) only when `f` succeeds and says it changed something. Returns `f`'s answer and the file
/// as it stands afterwards. The lock is a `flock`, so it also orders threads of one process.
pub fn update<T, E>(
    dir: &Path,
    f: impl FnOnce(&mut TokenFile) -> Result<(T, bool), E>,
) -> Result<Result<(T, TokenFile), E>, StoreError> {
    fs::create_dir_all(dir)?;
    let lock = lock_file(dir)?;
    lock.lock()?;
    let mut file = read(dir)?;
    let (value, changed) = match f(&mut file) {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    if changed {
        file.generation += 1;
        write(dir, &file)?;
    }
    lock.unlock()?;
    Ok(Ok((value, file)))
}

/// Replaces the token file atomically and durably.
pub fn save(dir: &Path, file: &TokenFile) -> Result<(), StoreError> {
    fs::create_dir_all(dir)?;
    let lock = lock_file(dir)?;
    lock.lock()?;
    write(dir, file)?;
    lock.unlock()?;
    Ok(())
}

/// Write, fsync, rename, fsync the directory; the caller holds the exclusive lock.
fn write(dir: &Path, file: &TokenFile) -> Result<(), StoreError> {
    let bytes = Zeroizing::new(serde_json::to_vec_pretty(file).map_err(|e| StoreError::Corrupt(e.to_string()))?);
    let tmp = dir.join(TMP);
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        set_owner_only(&f)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(FILE))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn lock_file(dir: &Path) -> Result<File, StoreError> {
    Ok(OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK))?)
}

#[cfg(unix)]
fn set_owner_only(f: &File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn set_owner_only(_: &File) -> std::io::Result<()> {
    Ok(())
}

/// A new PIN record sealing `master`.
pub fn pin_record(pin: &[u8], master: &[u8], iterations: u32) -> Result<PinRecord, CryptoError> {
    let mut salt = [0u8; 16];
    crypto::random(&mut salt)?;
    let kek = crypto::pin_key(pin, &salt, iterations)?;
    Ok(PinRecord {
        salt: hex::encode(salt),
        iterations,
        sealed_master: hex::encode(crypto::seal(&kek[..], master)?),
        failures: 0,
    })
}

/// Unseals the master key with `pin`; `Err(Invalid)` for a wrong PIN.
pub fn unseal_master(record: &PinRecord, pin: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let salt = hex::decode(&record.salt).map_err(|_| CryptoError::Invalid)?;
    let sealed = hex::decode(&record.sealed_master).map_err(|_| CryptoError::Invalid)?;
    let kek = crypto::pin_key(pin, &salt, record.iterations)?;
    crypto::open(&kek[..], &sealed)
}

/// Seals private objects under the master key.
pub fn seal_objects(master: &[u8], objects: &[(u64, &Object)]) -> Result<String, CryptoError> {
    let json = Zeroizing::new(serde_json::to_vec(objects).map_err(|_| CryptoError::Invalid)?);
    Ok(hex::encode(crypto::seal(master, &json)?))
}

/// Opens sealed private objects.
pub fn open_objects(master: &[u8], sealed_hex: &str) -> Result<Vec<(u64, Object)>, CryptoError> {
    let sealed = hex::decode(sealed_hex).map_err(|_| CryptoError::Invalid)?;
    let json = crypto::open(master, &sealed)?;
    serde_json::from_slice(&json).map_err(|_| CryptoError::Invalid)
}
