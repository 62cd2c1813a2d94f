//! Login sessions: random ids kept on the server, with idle and absolute
//! timeouts, a CSRF token each, and an end at logout or when the account
//! changes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::TryRngCore;
use rand::rngs::OsRng;
use subtle::ConstantTimeEq;
use wattson_ingest::auth::{Role, UserStore};

use crate::{Error, Result};

/// The session cookie's name.
pub const COOKIE: &str = "wattson_session";

/// Bytes of randomness in a session id and a CSRF token (256 bits).
const ID_BYTES: usize = 32;

/// Sessions beyond this many are refused new logins until old ones expire,
/// so a login flood cannot grow memory without bound.
const MAX_SESSIONS: usize = 100_000;

/// A logged-in person, as a request sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: String,
    pub user: String,
    pub role: Role,
    /// Must accompany every state-changing request of this session.
    pub csrf: String,
}

#[derive(Debug)]
struct Session {
    user: String,
    role: Role,
    /// The account's fingerprint at login; a removed, re-created or
    /// re-passworded account no longer matches and the session ends.
    account: [u8; 32],
    csrf: String,
    created: Instant,
    last_used: Instant,
}

/// Every live session, in memory: a restart logs everybody out, which is
/// the safe direction.
#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    idle: Duration,
    absolute: Duration,
}

/// `bytes` random bytes from the operating system, hex encoded.
pub(crate) fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    OsRng
        .try_fill_bytes(&mut buf)
        .map_err(|e| Error::Random(e.to_string()))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Constant-time string equality, for secrets.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Sessions {
    pub fn new(idle: Duration, absolute: Duration) -> Self {
        Sessions {
            map: Mutex::new(HashMap::new()),
            idle,
            absolute,
        }
    }

    /// Starts a session for a person who just proved their password: always
    /// a fresh id, so an id planted before login is worthless after it.
    pub fn create(&self, users: &UserStore, user: &str, now: Instant) -> Result<SessionInfo> {
        let (role, account) = users
            .person(user)
            .ok_or_else(|| Error::BadRequest("the account no longer exists".into()))?;
        let id = random_hex(ID_BYTES)?;
        let csrf = random_hex(ID_BYTES)?;
        let mut map = self.map.lock();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| !self.expired(s, now));
            if map.len() >= MAX_SESSIONS {
                return Err(Error::Busy(format!(
                    "{MAX_SESSIONS} sessions are open, the most the server keeps; try again in a minute"
                )));
            }
        }
        map.insert(
            id.clone(),
            Session {
                user: user.to_owned(),
                role,
                account,
                csrf: csrf.clone(),
                created: now,
                last_used: now,
            },
        );
        Ok(SessionInfo {
            id,
            user: user.to_owned(),
            role,
            csrf,
        })
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.saturating_duration_since(s.last_used) > self.idle
            || now.saturating_duration_since(s.created) > self.absolute
    }

    /// The session behind `id` if it is still valid; `touch` counts the
    /// request as activity (a live stream's periodic check does not, so an
    /// unattended page still reaches the idle timeout).
    pub fn get(
        &self,
        users: &UserStore,
        id: &str,
        now: Instant,
        touch: bool,
    ) -> Option<SessionInfo> {
        let mut map = self.map.lock();
        let s = map.get_mut(id)?;
        let current = users.person(&s.user);
        if self.expired(s, now) || current.is_none_or(|(_, account)| account != s.account) {
            map.remove(id);
            return None;
        }
        if touch {
            s.last_used = now;
        }
        Some(SessionInfo {
            id: id.to_owned(),
            user: s.user.clone(),
            role: s.role,
            csrf: s.csrf.clone(),
        })
    }

    /// Ends a session (logout): its id is refused from now on.
    pub fn end(&self, id: &str) {
        self.map.lock().remove(id);
    }

    /// Drops expired sessions; called now and then.
    pub fn sweep(&self, now: Instant) {
        self.map.lock().retain(|_, s| !self.expired(s, now));
    }

    /// The absolute timeout, for the cookie's `Max-Age`.
    pub fn absolute(&self) -> Duration {
        self.absolute
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
