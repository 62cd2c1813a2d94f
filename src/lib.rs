//! Wiring of the wattson binary.
//!
//! The binary's pieces that do not belong in a library crate of their own
//! live here, so that the CLI (`main.rs`), the criterion benches and the
//! integration tests share one implementation:
//!
//! - [`bench`] runs `wattson bench storage|ingest|query|flight|dashboard`,
//!   each measuring the real path (release builds for real figures).
//! - [`demo`] runs `wattson demo`: the server plus simulated meters.
//! - [`serve`] runs `wattson serve` and holds its configuration.
//! - [`simdata`] generates realistic meter readings in the seed system's
//!   shape, for `wattson simulate`, `wattson bench` and tests.
//! - [`simulate`] runs `wattson simulate`: virtual meters built on the
//!   firmware core (`wattson-firmware`), publishing over real MQTT.
//! - [`import`] turns CSV and Parquet files into [`Reading`]s in bounded
//!   chunks, for `wattson import`.
//! - [`sql`] runs `wattson sql`.
//! - [`export`] writes the Arrow record batches of a scan as CSV or Parquet,
//!   for `wattson export`.
//!
//! [`Reading`]: wattson_storage::model::Reading

pub mod bench;
pub mod demo;
pub mod export;
pub mod import;
pub mod serve;
pub mod simdata;
pub mod simulate;
pub mod sql;
