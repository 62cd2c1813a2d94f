//! Who may connect to the live broker: people from the user store, never
//! devices, never anonymous, never with a reserved client id.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttd::ServerSettings;

use crate::auth::{UNKNOWN_SOURCE, Verifier};
use crate::log_limit::LogLimiter;

/// Client ids Wattson uses for its own links. A remote client with the same
/// id as a local link would kick that link out of the router.
const RESERVED_PREFIX: &str = "wattson-";

/// Logins seen by the handler.
#[derive(Debug, Default)]
pub(super) struct LoginCounters {
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl LoginCounters {
    pub(super) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub(super) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Installs the auth handler on the listener's settings.
pub(super) fn install(
    server: &mut ServerSettings,
    verifier: Verifier,
    counters: Arc<LoginCounters>,
) {
    let refusals = Arc::new(LogLimiter::new(Duration::from_secs(60)));
    server.set_auth_handler(
        move |client_id: String, username: String, password: String| {
            let verifier = verifier.clone();
            let counters = Arc::clone(&counters);
            let refusals = Arc::clone(&refusals);
            async move {
                let verdict = decide(&verifier, &client_id, &username, &password).await;
                match verdict {
                    Ok(()) => {
                        counters.accepted.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(client_id, username, "live subscriber logged in");
                        true
                    }
                    Err(reason) => {
                        counters.refused.fetch_add(1, Ordering::Relaxed);
                        // Never the password: only who and why. Loud once a
                        // minute per name, so a guesser cannot flood the log.
                        if refusals.allow(&username) {
                            tracing::warn!(
                                client_id,
                                username,
                                reason,
                                "live subscriber login refused"
                            );
                        } else {
                            tracing::debug!(
                                client_id,
                                username,
                                reason,
                                "live subscriber login refused"
                            );
                        }
                        false
                    }
                }
            }
        },
    );
}

/// Whether this client id may not be used by a remote client.
pub(super) fn reserved_client_id(client_id: &str) -> bool {
    client_id.is_empty()
        || client_id
            .get(..RESERVED_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX))
}

async fn decide(
    verifier: &Verifier,
    client_id: &str,
    username: &str,
    password: &str,
) -> Result<(), String> {
    // Checked before hashing: a reserved id costs no argon2 work. Empty ids
    // are refused because rumqttd would assign a random one, and two
    // sessions of one person are then indistinguishable in the logs.
    if reserved_client_id(client_id) {
        return Err(format!(
            "client id must be non-empty and must not start with `{RESERVED_PREFIX}`"
        ));
    }
    // The auth hook is not given the peer address: the throttle then keeps
    // a bucket per account name (and per-account lockout applies).
    match verifier
        .verify_async(username, password, Some(UNKNOWN_SOURCE))
        .await
    {
        Ok(role) if role.is_person() => Ok(()),
        Ok(_) => Err("device credentials are for the device listener, not for subscribing".into()),
        Err(e) => Err(e.to_string()),
    }
}
