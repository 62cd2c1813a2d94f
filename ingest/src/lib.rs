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
//! - [`live`]: the seam through which stored readings and device error
//!   messages reach live subscribers, best effort.
//! - [`mqtt`]: the device-facing MQTT 3.1.1 listener: authenticated meters
//!   publish only under `meters/{id}/`, and a QoS 1 PUBACK is sent only
//!   after the reading is in the fsync'd write-ahead log.
//! - [`router`]: the embedded rumqttd broker that people's MQTT clients
//!   (Home Assistant, Node-RED, the dashboard) subscribe to; it accepts
//!   people only and never feeds the store.

pub mod auth;
mod error;
pub mod live;
mod log_limit;
pub mod mqtt;
pub mod payload;
pub mod router;

pub use error::{Error, Result};
