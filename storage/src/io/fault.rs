//! Placeholder until the fault-injecting file system lands.
//!
//! TEMPORARY STUB (branch `seg`): `io.rs` re-exports `FaultFs` and `FaultPlan`,
//! so the crate did not compile with an empty file. These empty types only
//! make the crate build; when merging, take the other branch's `fault.rs`.

/// Stub; replaced by the real fault-injecting file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FaultFs;

/// Stub; replaced by the real fault plan.
#[derive(Debug, Default, Clone, Copy)]
pub struct FaultPlan;
