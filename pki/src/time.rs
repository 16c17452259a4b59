//! Conversions between `SystemTime` and X.509 `Time`, at whole seconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::DateTime;
use x509_cert::time::Time;

/// A time that cannot be written in a certificate (before 1970 or after 9999).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("time {0:?} cannot be encoded in X.509")]
pub struct TimeError(pub SystemTime);

/// Truncates to whole seconds, which is all X.509 keeps.
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5).
pub fn to_x509(t: SystemTime) -> Result<Time, TimeError> {
    let since = t.duration_since(UNIX_EPOCH).map_err(|_| TimeError(t))?;
    let dt = DateTime::from_unix_duration(Duration::from_secs(since.as_secs())).map_err(|_| TimeError(t))?;
    Ok(Time::from(dt))
}

/// The instant an X.509 time names.
pub fn from_x509(t: &Time) -> SystemTime {
    t.to_system_time()
}
