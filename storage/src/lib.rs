//! Wattson's storage engine: a durable, columnar, append-only store for
//! energy readings, partitioned by (table, device, month).
//!
//! - [`Store`] is the entry point: [`Store::append`] returns once a batch is
//!   durable, [`Store::scan`] streams Arrow record batches.
//! - Appends go to the write-ahead log ([`wal`]) with group commit, then into
//!   an in-memory buffer that scans read at once.
//! - When the buffer fills it is sealed into immutable segment files
//!   ([`segment`]): zstd-compressed column blocks with statistics, read through
//!   memory maps. The WAL is trimmed only once those files are durable.
//! - Compaction merges a partition's small segments; retention drops whole
//!   months.
//! - All file I/O goes through [`io::Vfs`] and time through [`clock::Clock`],
//!   so tests can inject crashes, I/O errors and time.
//!
//! The byte layout of every file is in `docs/storage-format.md`.

pub mod clock;
pub mod error;
pub mod io;
pub mod model;
pub mod segment;
pub mod wal;

pub use error::{Error, Result};
pub use model::{ChannelType, Month, Reading, Value};
