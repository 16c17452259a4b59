//! Where the token lives and how it behaves.
//!
//! `SOFTTOKEN_CONF` names a TOML file (like SoftHSM's `SOFTHSM2_CONF`):
//!
//! ```toml
//! directory = "/var/lib/hsca/token"   # required
//! max_pin_attempts = 5                # wrong PINs before the PIN locks (default 5)
//! kdf_iterations = 100000             # PBKDF2-HMAC-SM3 iterations per PIN check (default 100000)
//! ```
//!
//! Without it, `SOFTTOKEN_DIR` names the directory and the defaults apply.

use std::path::PathBuf;

use serde::Deserialize;

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
    100_000
}

impl Config {
    /// Reads `SOFTTOKEN_CONF` or `SOFTTOKEN_DIR`.
    pub fn from_env() -> Result<Self, String> {
        if let Some(path) = std::env::var_os("SOFTTOKEN_CONF") {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                format!("softtoken: cannot read SOFTTOKEN_CONF {}: {e}", PathBuf::from(&path).display())
            })?;
            let cfg: Self = toml::from_str(&text).map_err(|e| format!("softtoken: SOFTTOKEN_CONF: {e}"))?;
            return cfg.checked();
        }
        if let Some(dir) = std::env::var_os("SOFTTOKEN_DIR") {
            return Self {
                directory: dir.into(),
                max_pin_attempts: default_attempts(),
                kdf_iterations: default_iterations(),
            }
            .checked();
        }
        Err("softtoken: set SOFTTOKEN_CONF (a TOML file) or SOFTTOKEN_DIR (the token directory)".into())
    }

    fn checked(self) -> Result<Self, String> {
        if self.max_pin_attempts == 0 || self.kdf_iterations == 0 {
            return Err("softtoken: max_pin_attempts and kdf_iterations must be at least 1".into());
        }
        Ok(self)
    }
}
