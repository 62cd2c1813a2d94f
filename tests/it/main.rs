//! Wattson's end-to-end tests: one test binary (every binary links the whole
//! stack), one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod dashboard;
mod debian;
mod firmware;
mod flight;
mod mqtt;
mod python;
mod serve;
mod simulate;
mod storage_kill;
