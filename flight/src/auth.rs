//! Logins and bearer tokens on the Flight port.
//!
//! The handshake takes Basic credentials, from the `authorization` header
//! (ADBC, JDBC, pyarrow's `authenticate_basic_token`) or from a
//! `BasicAuth` message in the handshake payload (pyarrow's older basic auth
//! handler), verifies them with the shared [`Verifier`] (throttling and
//! lockout included) and answers with `authorization: Bearer <token>` and the
//! token as payload. Every other call carries that header and is checked
//! against the [`TokenStore`]. Neither passwords nor tokens are logged.

use std::net::IpAddr;

use arrow_flight::{BasicAuth, HandshakeRequest};
use base64::Engine;
use prost::Message;
use tonic::metadata::MetadataMap;
use wattson_ingest::auth::{Principal, Role, TokenError, TokenStore, Verifier};

use crate::error::{Error, Result};

/// The role every data call needs; admins also pass.
pub(crate) const READ_ROLE: Role = Role::Analyst;

/// Name and password from the handshake.
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Credentials from the `authorization: Basic` header, else from the first
/// handshake message's `BasicAuth` payload.
pub(crate) fn credentials(
    metadata: &MetadataMap,
    first: Option<&HandshakeRequest>,
) -> Result<Credentials> {
    if let Some(value) = metadata.get("authorization") {
        let value = value
            .to_str()
            .map_err(|_| Error::Unauthenticated("unreadable authorization header".into()))?;
        let Some(encoded) = strip_scheme(value, "basic") else {
            return Err(Error::Unauthenticated(
                "the handshake needs `authorization: Basic base64(user:password)`".into(),
            ));
        };
        // Go's Flight client (ADBC) sends unpadded base64; others pad.
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = lenient
            .decode(encoded.trim())
            .map_err(|_| Error::Unauthenticated("Basic credentials are not base64".into()))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| Error::Unauthenticated("Basic credentials are not UTF-8".into()))?;
        let (user, password) = text.split_once(':').ok_or_else(|| {
            Error::Unauthenticated("Basic credentials need the form user:password".into())
        })?;
        return Ok(Credentials {
            user: user.to_owned(),
            password: password.to_owned(),
        });
    }
    if let Some(req) = first
        && !req.payload.is_empty()
        && let Ok(basic) = BasicAuth::decode(req.payload.clone())
        && !basic.username.is_empty()
    {
        return Ok(Credentials {
            user: basic.username,
            password: basic.password,
        });
    }
    Err(Error::Unauthenticated(
        "log in with Basic credentials: `authorization: Basic base64(user:password)` in the handshake"
            .into(),
    ))
}

/// Verifies the credentials and issues a token for a person who may read.
pub(crate) async fn login(
    verifier: &Verifier,
    tokens: &TokenStore,
    creds: &Credentials,
    peer: IpAddr,
) -> Result<String> {
    let role = verifier
        .verify_async(&creds.user, &creds.password, Some(peer))
        .await?;
    if !role.is_person() {
        tracing::info!(user = %creds.user, %peer, "flight login refused: device credentials");
        return Err(Error::PermissionDenied(
            "device credentials cannot use Flight; log in as an analyst or admin".into(),
        ));
    }
    if !role.allows(READ_ROLE) {
        tracing::info!(user = %creds.user, role = role.as_str(), "flight login refused: role");
        return Err(Error::PermissionDenied(format!(
            "role {} may not read data over Flight; an analyst or admin may",
            role.as_str()
        )));
    }
    let token = tokens
        .issue(&creds.user)
        .ok_or_else(|| Error::Unavailable("no token could be issued; try again".into()))?;
    tracing::info!(user = %creds.user, role = role.as_str(), %peer, "flight login");
    Ok(token)
}

/// The principal behind the call's bearer token, if its role allows `needed`.
pub(crate) fn authorize(
    tokens: &TokenStore,
    metadata: &MetadataMap,
    needed: Role,
) -> Result<Principal> {
    let value = metadata
        .get("authorization")
        .ok_or(Error::from(TokenError::Missing))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| strip_scheme(v, "bearer"))
        .ok_or(Error::from(TokenError::Malformed))?;
    let principal = tokens.check(token)?;
    if !principal.role.allows(needed) {
        return Err(Error::PermissionDenied(format!(
            "role {} may not do this; it needs {}",
            principal.role.as_str(),
            needed.as_str()
        )));
    }
    Ok(principal)
}

/// The value after an HTTP auth scheme, compared case-insensitively.
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let value = value.trim_start();
    let head = value.get(..scheme.len())?;
    let rest = value.get(scheme.len()..)?;
    (head.eq_ignore_ascii_case(scheme) && rest.starts_with(' ')).then(|| rest.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_are_case_insensitive_and_need_a_space() {
        assert_eq!(strip_scheme("Bearer abc", "bearer"), Some("abc"));
        assert_eq!(strip_scheme("bearer  abc ", "bearer"), Some("abc"));
        assert_eq!(strip_scheme("Bearerabc", "bearer"), None);
        assert_eq!(strip_scheme("Basic abc", "bearer"), None);
        assert_eq!(strip_scheme("", "bearer"), None);
    }

    #[test]
    fn basic_credentials_come_from_the_header_or_the_payload() {
        let mut md = MetadataMap::new();
        md.insert("authorization", "Basic dTpwOnE=".parse().unwrap());
        let c = credentials(&md, None).unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("u", "p:q"));
        md.insert("authorization", "Basic dTpwOnE".parse().unwrap());
        let c = credentials(&md, None).unwrap();
        assert_eq!(c.password, "p:q", "unpadded, as Go's client sends it");
        let payload = BasicAuth {
            username: "u".into(),
            password: "pw".into(),
        }
        .encode_to_vec();
        let req = HandshakeRequest {
            protocol_version: 0,
            payload: payload.into(),
        };
        let c = credentials(&MetadataMap::new(), Some(&req)).unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("u", "pw"));
        assert!(matches!(
            credentials(&MetadataMap::new(), None),
            Err(Error::Unauthenticated(_))
        ));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("pw"), "{dbg}");
    }

    static TOKENS: std::sync::LazyLock<(tempfile::TempDir, TokenStore)> =
        std::sync::LazyLock::new(|| {
            let dir = tempfile::tempdir().unwrap();
            let users =
                std::sync::Arc::new(wattson_ingest::auth::UserStore::open(dir.path()).unwrap());
            let tokens = TokenStore::new(users, std::time::Duration::from_secs(60));
            (dir, tokens)
        });

    proptest::proptest! {
        // Headers and handshake payloads come from anyone: any of them gives
        // credentials or UNAUTHENTICATED, and any bearer value a refusal.
        #[test]
        fn any_authorization_header_or_payload_is_answered(
            header in "[ -~]{0,80}",
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let tokens = &TOKENS.1;
            let mut md = MetadataMap::new();
            if let Ok(value) = header.parse() {
                md.insert("authorization", value);
            }
            let req = HandshakeRequest { protocol_version: 0, payload: payload.into() };
            match credentials(&md, Some(&req)) {
                Ok(_) | Err(Error::Unauthenticated(_)) => {}
                Err(other) => proptest::prop_assert!(false, "{other:?}"),
            }
            proptest::prop_assert!(authorize(tokens, &md, Role::Viewer).is_err());
        }
    }
}
