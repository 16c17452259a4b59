//! The console's own gate: a one-time token in the printed URL becomes a session cookie; every
//! state-changing request also carries the session's CSRF token. Nothing here authorises a CA
//! action — the CA does that, on the identity's signature.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sm3::Digest;
use zeroize::Zeroizing;

use super::text::Lang;

/// A session unused this long is closed (an unattended browser stops acting for the identity).
pub const IDLE: Duration = Duration::from_secs(30 * 60);

/// The session cookie's name.
pub const COOKIE: &str = "hsca_console";

/// 32 random bytes as hex: tokens, session ids, CSRF tokens.
pub fn random_token() -> anyhow::Result<Zeroizing<String>> {
    let mut b = Zeroizing::new([0u8; 32]);
    crate::getrandom_fill(b.as_mut())?;
    Ok(Zeroizing::new(hex::encode(b.as_ref())))
}

/// Compared as SM3 digests so the time taken tells nothing about how much of a guess matched.
fn same(a: &str, b: &str) -> bool {
    sm3::Sm3::digest(a.as_bytes()) == sm3::Sm3::digest(b.as_bytes())
}

/// One browser's session.
#[derive(Clone)]
pub struct Session {
    /// The token every state-changing form must carry.
    pub csrf: String,
    /// The language pages are drawn in.
    pub lang: Lang,
    /// When it was last used.
    last_seen: Instant,
}

/// Why a login was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginRefused {
    /// The token was used before: one URL opens one session.
    Used,
    /// Not the token cactl printed.
    Wrong,
}

struct Inner {
    /// The one-time token, until it is used.
    login_token: Option<Zeroizing<String>>,
    sessions: HashMap<String, Session>,
}

/// The login token and the open sessions.
pub struct Sessions(Mutex<Inner>);

impl Sessions {
    /// Sessions that one `token` may open (once).
    pub fn new(token: Zeroizing<String>) -> Self {
        Self(Mutex::new(Inner { login_token: Some(token), sessions: HashMap::new() }))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind, still consistent.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Trades the one-time token for a new session id.
    pub fn login(&self, token: &str) -> Result<anyhow::Result<Zeroizing<String>>, LoginRefused> {
        let mut inner = self.inner();
        let Some(expected) = inner.login_token.as_ref() else { return Err(LoginRefused::Used) };
        if !same(expected, token) {
            return Err(LoginRefused::Wrong);
        }
        inner.login_token = None;
        let open =
            || -> anyhow::Result<(Zeroizing<String>, Zeroizing<String>)> { Ok((random_token()?, random_token()?)) };
        Ok(open().map(|(id, csrf)| {
            inner
                .sessions
                .insert(id.to_string(), Session { csrf: csrf.to_string(), lang: Lang::Zh, last_seen: Instant::now() });
            id
        }))
    }

    /// The session a cookie header names, if it is open.
    pub fn find(&self, cookie_header: &str) -> Option<(String, Session)> {
        self.find_at(cookie_header, Instant::now())
    }

    /// [`Self::find`] at `now`: a session idle for [`IDLE`] is closed instead.
    fn find_at(&self, cookie_header: &str, now: Instant) -> Option<(String, Session)> {
        let id = cookie_header
            .split(';')
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == COOKIE)
            .map(|(_, v)| v.trim())?;
        let mut inner = self.inner();
        let key = inner.sessions.keys().find(|k| same(k, id))?.clone();
        let session = inner.sessions.get_mut(&key)?;
        if now.saturating_duration_since(session.last_seen) > IDLE {
            inner.sessions.remove(&key);
            return None;
        }
        session.last_seen = now;
        let session = session.clone();
        Some((key, session))
    }

    /// Switches a session's language.
    pub fn set_lang(&self, id: &str, lang: Lang) {
        if let Some(s) = self.inner().sessions.get_mut(id) {
            s.lang = lang;
        }
    }

    /// Ends a session.
    pub fn logout(&self, id: &str) {
        self.inner().sessions.remove(id);
    }
}

/// The `csrf` field of an `application/x-www-form-urlencoded` body, if it is the session's.
pub fn csrf_matches(body: &[u8], session: &Session) -> bool {
    let Ok(text) = std::str::from_utf8(body) else { return false };
    text.split('&').filter_map(|p| p.split_once('=')).any(|(k, v)| k == "csrf" && same(v, &session.csrf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_one_session_once_which_closes_when_idle() {
        let s = Sessions::new(Zeroizing::new("abc".into()));
        assert_eq!(s.login("abd").err(), Some(LoginRefused::Wrong));
        let id = s.login("abc").expect("first use").expect("random");
        assert_eq!(s.login("abc").err(), Some(LoginRefused::Used));
        let (found, session) = s.find(&format!("other=1; {COOKIE}={}", id.as_str())).expect("session");
        assert_eq!(found, id.as_str());
        assert!(s.find(&format!("{COOKIE}=00")).is_none());
        assert!(csrf_matches(format!("a=1&csrf={}", session.csrf).as_bytes(), &session));
        assert!(!csrf_matches(b"a=1&csrf=00", &session));
        assert!(!csrf_matches(b"a=1", &session));
        let later = Instant::now() + IDLE / 2;
        assert!(s.find_at(&format!("{COOKIE}={}", id.as_str()), later).is_some(), "used within IDLE");
        let idle = later + IDLE + Duration::from_secs(1);
        assert!(s.find_at(&format!("{COOKIE}={}", id.as_str()), idle).is_none(), "idle too long");
        assert!(s.find(&format!("{COOKIE}={}", id.as_str())).is_none(), "and closed for good");
        let s = Sessions::new(Zeroizing::new("t".into()));
        let id = s.login("t").expect("first use").expect("random");
        let (found, _) = s.find(&format!("{COOKIE}={}", id.as_str())).expect("session");
        s.logout(&found);
        assert!(s.find(&format!("{COOKIE}={}", id.as_str())).is_none());
    }
}
