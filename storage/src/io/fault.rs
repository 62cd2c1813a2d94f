//! Placeholder until the fault-injecting file system lands.
