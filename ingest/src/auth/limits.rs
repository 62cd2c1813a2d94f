//! Brute-force limits: per-account lockout and per-address throttling, and
//! the clock they run on.
//!
//! Both tables live in memory only. A restart forgets them, which is the
//! usual trade-off: persisting them would add a write per failed login, and
//! an attacker gains at most one more round of attempts per restart.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::AuthError;

/// A monotonic clock. Injected so tests can move time instead of sleeping.
pub trait Clock: fmt::Debug + Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// A clock standing at the current instant.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        *self.offset.lock() += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + *self.offset.lock()
    }
}

/// Limits on login attempts, and the hashing cost for new passwords.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    /// Consecutive failures after which an account is locked (OWASP: at
    /// most 100).
    pub max_failures: u32,
    /// How long a lockout lasts. When it ends the count starts again at
    /// zero.
    pub lockout: Duration,
    /// Failed attempts an address may make in a burst.
    pub addr_burst: u32,
    /// One more failed attempt is allowed per address every `addr_refill`.
    pub addr_refill: Duration,
    /// The clock for lockouts and throttling.
    pub clock: Arc<dyn Clock>,
    /// argon2id cost for new password hashes. Private so production code
    /// cannot go below the crate default (m=19456 KiB, t=2, p=1).
    pub(crate) argon2_params: argon2::Params,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        Self {
            max_failures: 100,
            lockout: Duration::from_secs(15 * 60),
            addr_burst: 30,
            addr_refill: Duration::from_secs(1),
            clock: Arc::new(SystemClock),
            argon2_params: argon2::Params::default(),
        }
    }
}

impl AuthPolicy {
    /// Cheap argon2 parameters so unit tests can hash many times in a debug
    /// build. Never available outside tests.
    #[cfg(test)]
    pub(crate) fn cheap_hashing(mut self) -> Self {
        if let Ok(p) = argon2::Params::new(8, 1, 1, None) {
            self.argon2_params = p;
        }
        self
    }
}

/// Entries either table keeps before it prunes; bounds memory when an
/// attacker sprays names or addresses.
const TABLE_CAP: usize = 100_000;

/// Consecutive failures per account name (known or not, so a lockout does
/// not reveal which names exist).
#[derive(Debug)]
pub(crate) struct Lockouts {
    max_failures: u32,
    lockout: Duration,
    accounts: Mutex<HashMap<String, Failures>>,
}

#[derive(Debug)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
}

impl Lockouts {
    pub(crate) fn new(policy: &AuthPolicy) -> Self {
        Self {
            max_failures: policy.max_failures.max(1),
            lockout: policy.lockout,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses while the account is locked; forgets an expired lockout.
    pub(crate) fn check(&self, name: &str, now: Instant) -> Result<(), AuthError> {
        let mut accounts = self.accounts.lock();
        let Some(f) = accounts.get(name) else {
            return Ok(());
        };
        match f.locked_until {
            Some(until) if until > now => Err(AuthError::LockedOut {
                retry_after: until - now,
            }),
            Some(_) => {
                accounts.remove(name);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a failure; returns true when this one started a lockout.
    pub(crate) fn record_failure(&self, name: &str, now: Instant) -> bool {
        let mut accounts = self.accounts.lock();
        if accounts.len() >= TABLE_CAP && !accounts.contains_key(name) {
            // Keep only live lockouts. Losing partial counts lets an
            // attacker with many addresses reset them, but the address
            // throttle makes that slow, and memory stays bounded.
            accounts.retain(|_, f| f.locked_until.is_some_and(|t| t > now));
            if accounts.len() >= TABLE_CAP {
                return false;
            }
        }
        let f = accounts.entry(name.to_owned()).or_insert(Failures {
            count: 0,
            locked_until: None,
        });
        f.count = f.count.saturating_add(1);
        if f.count >= self.max_failures && f.locked_until.is_none() {
            f.locked_until = Some(now + self.lockout);
            return true;
        }
        false
    }

    /// A success ends the streak of failures.
    pub(crate) fn record_success(&self, name: &str) {
        self.accounts.lock().remove(name);
    }
}

/// A token bucket per source address. A token is taken before any hashing
/// and given back when the login succeeds, so only failures drain it: a
/// thousand meters behind one NAT address can all log in, while one address
/// guessing passwords is held to `addr_burst`, then one try per
/// `addr_refill`.
#[derive(Debug)]
pub(crate) struct AddrThrottle {
    burst: f64,
    refill: Duration,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Shared by every new address while the table is full of active buckets,
/// so a flood from many addresses is throttled as one.
const OVERFLOW_KEY: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// The source of logins from a listener that cannot tell its clients'
/// addresses apart (rumqttd's auth hook is given none). They are throttled
/// per account name instead (see [`throttle_source`]). No client ever has
/// this address.
pub const UNKNOWN_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// The throttle bucket of a login from `addr` as `name`. For
/// [`UNKNOWN_SOURCE`] that is a bucket per name (a hash of it in 0.0.0.0/8,
/// where no client is): guessing one account's password through that
/// listener is held to the per-address rate, and one guesser cannot shut
/// every other subscriber out, as a single shared bucket would.
pub(crate) fn throttle_source(addr: IpAddr, name: &str) -> IpAddr {
    if addr != UNKNOWN_SOURCE {
        return addr;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.to_lowercase().hash(&mut h);
    let [a, b, c, ..] = h.finish().to_le_bytes();
    IpAddr::V4(Ipv4Addr::new(0, a, b, c))
}

impl AddrThrottle {
    pub(crate) fn new(policy: &AuthPolicy) -> Self {
        Self {
            burst: f64::from(policy.addr_burst.max(1)),
            refill: policy.addr_refill.max(Duration::from_millis(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, b: Bucket, now: Instant) -> Bucket {
        let earned =
            now.saturating_duration_since(b.updated).as_secs_f64() / self.refill.as_secs_f64();
        Bucket {
            tokens: (b.tokens + earned).min(self.burst),
            updated: now,
        }
    }

    /// Takes one token for `addr`, or refuses. `None` (a local caller) is
    /// never throttled.
    pub(crate) fn take(&self, addr: Option<IpAddr>, now: Instant) -> Result<(), AuthError> {
        let Some(addr) = addr else { return Ok(()) };
        let mut key = throttle_key(addr);
        let mut buckets = self.buckets.lock();
        if buckets.len() >= TABLE_CAP && !buckets.contains_key(&key) {
            // A full bucket is the same as no entry at all.
            buckets.retain(|_, b| self.refilled(*b, now).tokens < self.burst);
            if buckets.len() >= TABLE_CAP {
                key = OVERFLOW_KEY;
            }
        }
        let fresh = Bucket {
            tokens: self.burst,
            updated: now,
        };
        let b = buckets.entry(key).or_insert(fresh);
        *b = self.refilled(*b, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(AuthError::Throttled)
        }
    }

    /// Gives back the token of a successful login.
    pub(crate) fn refund(&self, addr: Option<IpAddr>) {
        let Some(addr) = addr else { return };
        if let Some(b) = self.buckets.lock().get_mut(&throttle_key(addr)) {
            b.tokens = (b.tokens + 1.0).min(self.burst);
        }
    }
}

/// IPv4 addresses (also when mapped into IPv6) count one by one; IPv6 counts
/// per /64, because one host usually has a whole /64 to pick from.
fn throttle_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}
