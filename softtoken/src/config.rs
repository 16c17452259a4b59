//! Where the token lives and how it behaves.
//!
//! `SOFTTOKEN_CONF` names a TOML file (like SoftHSM's `SOFTHSM2_CONF`):
//!
//! ```toml
//! directory = "/var/lib/hsca/token"   # required
//! max_pin_attempts = 5                # wrong PINs before the PIN locks (default 5)
//! kdf_iterations = 100000             # PBKDF2-HMAC-SM3 iterations per PIN check (default and minimum 100000)
//! ```
//!
//! Without it, `SOFTTOKEN_DIR` names the directory and the defaults apply. Without either, the
//! module reads [`SYSTEM_CONF`] if it exists, else keeps its token in
//! `$XDG_DATA_HOME/softtoken` (default `~/.local/share/softtoken`), and says on stderr which it
//! chose and why.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The configuration file read when neither `SOFTTOKEN_CONF` nor `SOFTTOKEN_DIR` is set.
pub const SYSTEM_CONF: &str = "/etc/softtoken.toml";

/// The fewest PBKDF2 iterations a PIN may be hashed with: fewer makes guessing a stolen
/// `token.json` offline cheap.
pub const MIN_KDF_ITERATIONS: u32 = 100_000;

/// Token settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory holding `token.json`.
    pub directory: PathBuf,
    /// Consecutive wrong PINs before `CKF_USER_PIN_LOCKED` (or `CKF_SO_PIN_LOCKED`).
    #[serde(default = "default_attempts")]
    pub max_pin_attempts: u32,
    /// PBKDF2 iterations when deriving the key that unwraps the master key.
    #[serde(default = "default_iterations")]
    pub kdf_iterations: u32,
}

fn default_attempts() -> u32 {
    5
}

fn default_iterations() -> u32 {
    MIN_KDF_ITERATIONS
}

impl Config {
    /// Settings with the defaults for token directory `directory`.
    pub fn with_directory(directory: PathBuf) -> Self {
        Self { directory, max_pin_attempts: default_attempts(), kdf_iterations: default_iterations() }
    }

    /// Reads `SOFTTOKEN_CONF` or `SOFTTOKEN_DIR`, else the documented defaults. The second value
    /// is a note for stderr when a default was taken (what was missing, what is used instead).
    pub fn from_env() -> Result<(Self, Option<String>), String> {
        if let Some(path) = std::env::var_os("SOFTTOKEN_CONF") {
            return Ok((Self::from_file(Path::new(&path), "SOFTTOKEN_CONF")?, None));
        }
        if let Some(dir) = std::env::var_os("SOFTTOKEN_DIR") {
            return Ok((Self::with_directory(dir.into()).checked()?, None));
        }
        let system = Path::new(SYSTEM_CONF);
        if system.exists() {
            let note = format!("softtoken: SOFTTOKEN_CONF and SOFTTOKEN_DIR are not set; using {SYSTEM_CONF}");
            return Ok((Self::from_file(system, SYSTEM_CONF)?, Some(note)));
        }
        let data = std::env::var_os("XDG_DATA_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| Path::new(&h).join(".local/share")))
            .ok_or_else(|| {
                format!(
                    "softtoken: no configuration: SOFTTOKEN_CONF (a TOML file) and SOFTTOKEN_DIR (the token \
                     directory) are not set, {SYSTEM_CONF} does not exist, and neither XDG_DATA_HOME nor HOME \
                     is set for the default ~/.local/share/softtoken"
                )
            })?;
        let dir = data.join("softtoken");
        let note = format!(
            "softtoken: SOFTTOKEN_CONF and SOFTTOKEN_DIR are not set and {SYSTEM_CONF} does not exist; \
             using the token directory {}",
            dir.display()
        );
        Ok((Self::with_directory(dir).checked()?, Some(note)))
    }

    fn from_file(path: &Path, what: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("softtoken: cannot read {what} {}: {e}", path.display()))?;
        let cfg: Self = toml::from_str(&text).map_err(|e| format!("softtoken: {}: {e}", path.display()))?;
        cfg.checked()
    }

    /// Refuses settings that weaken the token.
    pub fn checked(self) -> Result<Self, String> {
        if self.max_pin_attempts == 0 {
            return Err("softtoken: max_pin_attempts must be at least 1".into());
        }
        if self.kdf_iterations < MIN_KDF_ITERATIONS {
            return Err(format!(
                "softtoken: kdf_iterations = {} is below the minimum {MIN_KDF_ITERATIONS}",
                self.kdf_iterations
            ));
        }
        Ok(self)
    }
}
