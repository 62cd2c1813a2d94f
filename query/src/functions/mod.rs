//! Wattson's SQL functions for energy data.
//!
//! - [`energy`]: `energy_kwh`, `energy_coverage`, `twa` and
//!   `counter_delta`, aggregates that weight readings by the time between
//!   them.

pub mod energy;
