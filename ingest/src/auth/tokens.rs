//! Bearer tokens: what a person gets after one successful password check
//! (the Flight handshake, the dashboard's API login), so later calls skip
//! argon2.
//!
//! A token is `wsn_` and 64 hex digits: 256 bits from the OS's CSPRNG. The
//! server keeps only a BLAKE3 hash of each token, so a memory dump of the
//! table yields nothing usable, and a lookup compares hashes (in constant
//! time), never the token itself. A token dies when it expires, when it is
//! revoked, and when its person is removed, re-created, given another role
//! or a new password (see [`UserStore::person`]). Tokens live in memory: a
//! restart logs everyone out, which is the safe direction.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::TryRngCore;
use rand::rngs::OsRng;
use subtle::ConstantTimeEq;

use super::{Clock, Role, SystemClock, UserStore};

/// What every token starts with, so secret scanners and people recognise it.
pub const TOKEN_PREFIX: &str = "wsn_";

/// Tokens kept at most; beyond it the ones closest to expiry are dropped.
const MAX_TOKENS: usize = 100_000;

/// Who a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: String,
    /// The role now, which is the role at issue (a change kills the token).
    pub role: Role,
}

/// Why a token was refused. The messages are safe to return to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token: log in first (Basic credentials in the handshake)")]
    Missing,
    #[error("malformed bearer token")]
    Malformed,
    #[error("unknown or revoked bearer token: log in again")]
    Unknown,
    #[error("the bearer token expired: log in again")]
    Expired,
    #[error("the token's account was removed or changed: log in again")]
    AccountChanged,
}

#[derive(Debug)]
struct Grant {
    user: String,
    role: Role,
    account: [u8; 32],
    expires: Instant,
}

/// The server's table of live bearer tokens, shared by Flight and the HTTP
/// API.
pub struct TokenStore {
    users: Arc<UserStore>,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    grants: Mutex<HashMap<[u8; 32], Grant>>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("ttl", &self.ttl)
            .field("live", &self.grants.lock().len())
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    /// Tokens valid for `ttl` after issue.
    pub fn new(users: Arc<UserStore>, ttl: Duration) -> Self {
        Self::with_clock(users, ttl, Arc::new(SystemClock))
    }

    /// [`new`](Self::new) on an injected clock, for tests.
    pub fn with_clock(users: Arc<UserStore>, ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            users,
            ttl,
            clock,
            grants: Mutex::new(HashMap::new()),
        }
    }

    /// How long a token lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The user store tokens are checked against.
    pub fn users(&self) -> &Arc<UserStore> {
        &self.users
    }

    /// A new token for `user`, who just proved their password. `None` when
    /// `user` is not a person (devices get no tokens) or the OS has no
    /// randomness to give.
    pub fn issue(&self, user: &str) -> Option<String> {
        let (role, account) = self.users.person(user)?;
        let mut secret = [0u8; 32];
        if let Err(e) = OsRng.try_fill_bytes(&mut secret) {
            tracing::error!(error = %e, "no randomness for a bearer token");
            return None;
        }
        let token = format!("{TOKEN_PREFIX}{}", hex(&secret));
        let now = self.clock.now();
        let mut grants = self.grants.lock();
        if grants.len() >= MAX_TOKENS {
            grants.retain(|_, g| g.expires > now);
            if grants.len() >= MAX_TOKENS {
                let mut by_expiry: Vec<Instant> = grants.values().map(|g| g.expires).collect();
                by_expiry.sort_unstable();
                let cut = by_expiry[by_expiry.len() / 10];
                grants.retain(|_, g| g.expires > cut);
                tracing::warn!("bearer token table full; dropped the tokens closest to expiry");
            }
        }
        grants.insert(
            digest(&token),
            Grant {
                user: user.to_owned(),
                role,
                account,
                expires: now + self.ttl,
            },
        );
        Some(token)
    }

    /// The principal of a live token.
    pub fn check(&self, token: &str) -> Result<Principal, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let well_formed = token.len() == TOKEN_PREFIX.len() + 64
            && token.starts_with(TOKEN_PREFIX)
            && token[TOKEN_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return Err(TokenError::Malformed);
        }
        let key = digest(token);
        let now = self.clock.now();
        let (user, role, account) = {
            let mut grants = self.grants.lock();
            let Some((stored_key, grant)) = grants.get_key_value(&key) else {
                return Err(TokenError::Unknown);
            };
            // The map found it by hash equality; confirm without an early exit.
            if !bool::from(stored_key.ct_eq(&key)) {
                return Err(TokenError::Unknown);
            }
            if grant.expires <= now {
                grants.remove(&key);
                return Err(TokenError::Expired);
            }
            (grant.user.clone(), grant.role, grant.account)
        };
        match self.users.person(&user) {
            Some((now_role, now_account))
                if now_role == role && bool::from(now_account.ct_eq(&account)) =>
            {
                Ok(Principal { user, role })
            }
            _ => {
                self.grants.lock().remove(&key);
                Err(TokenError::AccountChanged)
            }
        }
    }

    /// Ends a token now (logout). Unknown tokens are ignored.
    pub fn revoke(&self, token: &str) {
        self.grants.lock().remove(&digest(token.trim()));
    }

    /// Live tokens, for metrics.
    pub fn len(&self) -> usize {
        self.grants.lock().len()
    }

    /// Whether no token is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn digest(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthPolicy, ManualClock};

    fn setup() -> (
        tempfile::TempDir,
        Arc<UserStore>,
        Arc<ManualClock>,
        TokenStore,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let users = Arc::new(
            UserStore::open_with(dir.path(), AuthPolicy::default().cheap_hashing()).unwrap(),
        );
        users
            .add_user("ada", Role::Analyst, "correct horse battery")
            .unwrap();
        users.add_device("meter1").unwrap();
        let clock = Arc::new(ManualClock::new());
        let tokens =
            TokenStore::with_clock(users.clone(), Duration::from_secs(3600), clock.clone());
        (dir, users, clock, tokens)
    }

    #[test]
    fn a_token_carries_its_person_and_has_256_random_bits() {
        let (_d, _u, _c, tokens) = setup();
        let a = tokens.issue("ada").unwrap();
        let b = tokens.issue("ada").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(
            tokens.check(&a),
            Ok(Principal {
                user: "ada".into(),
                role: Role::Analyst
            })
        );
        assert_eq!(tokens.len(), 2);
    }

    #[test]
    fn devices_and_strangers_get_no_token() {
        let (_d, _u, _c, tokens) = setup();
        assert_eq!(tokens.issue("meter1"), None);
        assert_eq!(tokens.issue("nobody"), None);
    }

    #[test]
    fn bad_tokens_are_told_apart() {
        let (_d, _u, _c, tokens) = setup();
        assert_eq!(tokens.check(""), Err(TokenError::Missing));
        assert_eq!(tokens.check("abc"), Err(TokenError::Malformed));
        let unknown = format!("{TOKEN_PREFIX}{}", "0".repeat(64));
        assert_eq!(tokens.check(&unknown), Err(TokenError::Unknown));
        let upper = format!("{TOKEN_PREFIX}{}", "A".repeat(64));
        assert_eq!(tokens.check(&upper), Err(TokenError::Malformed));
    }

    #[test]
    fn tokens_expire() {
        let (_d, _u, clock, tokens) = setup();
        let t = tokens.issue("ada").unwrap();
        clock.advance(Duration::from_secs(3599));
        assert!(tokens.check(&t).is_ok());
        clock.advance(Duration::from_secs(1));
        assert_eq!(tokens.check(&t), Err(TokenError::Expired));
        assert_eq!(tokens.check(&t), Err(TokenError::Unknown));
    }

    #[test]
    fn removing_or_changing_the_person_kills_their_tokens() {
        let (_d, users, _c, tokens) = setup();
        let t = tokens.issue("ada").unwrap();
        users.set_password("ada", "another long password").unwrap();
        assert_eq!(tokens.check(&t), Err(TokenError::AccountChanged));

        let t = tokens.issue("ada").unwrap();
        users.remove("ada").unwrap();
        assert_eq!(tokens.check(&t), Err(TokenError::AccountChanged));
        users
            .add_user("ada", Role::Analyst, "correct horse battery")
            .unwrap();
        assert_eq!(tokens.check(&t), Err(TokenError::Unknown));
    }

    #[test]
    fn revoke_ends_a_token() {
        let (_d, _u, _c, tokens) = setup();
        let t = tokens.issue("ada").unwrap();
        tokens.revoke(&t);
        assert_eq!(tokens.check(&t), Err(TokenError::Unknown));
    }
}
