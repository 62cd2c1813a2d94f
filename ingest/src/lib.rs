//! Wattson's ingest: who may write, and what they write.
//!
//! - [`auth`]: the user and device store shared by MQTT, Flight and the
//!   dashboard: argon2id password hashes for people, keyed hashes of
//!   high-entropy secrets for devices, roles, and a verifier that keeps
//!   hashing off the async executor.
//! - [`payload`]: meter payloads (JSON object, JSON array, InfluxDB line
//!   protocol) and topic patterns, decoded into store readings; every
//!   rejection carries a reason a device can act on.
//!
//! Not here yet: the embedded rumqttd broker with durable PUBACKs and
//! per-device topic ACLs (see the ingest issue); this crate is what it
//! will build on.

pub mod auth;
mod error;
pub mod live;
pub mod mqtt;
pub mod payload;

pub use error::{Error, Result};
