//! Wattson's storage engine: a durable, columnar, append-only store for
//! energy readings, partitioned by (table, device, month).
//!
//! - [`Store`] is the entry point: [`Store::append`] returns once a batch is
//!   durable, [`Store::scan`] streams Arrow record batches of a consistent
//!   snapshot.
//! - Appends go to the write-ahead log ([`wal`]) with group commit, then into
//!   an in-memory buffer that scans read at once.
//! - When the buffer fills it is sealed into immutable segment files
//!   ([`segment`]): zstd-compressed column blocks with statistics, read through
//!   memory maps. The WAL is trimmed only once those files are durable.
//! - Compaction merges a partition's small segments; retention drops whole
//!   months.
//! - [`Store::open_read_only`] gives a snapshot of a directory that another
//!   process may be writing: no lock, nothing written, writes refused.
//! - All file I/O goes through [`io::Vfs`] and time through [`clock::Clock`],
//!   so tests can inject crashes, I/O errors and time.
//!
//! The byte layout of every file, the commit protocol and what is assumed of
//! the disk are in `docs/storage-format.md`.

mod batch;
mod catalog;
pub mod clock;
pub mod error;
pub mod io;
mod latest;
mod memtable;
mod merge;
pub mod model;
mod scan;
pub mod segment;
mod store;
mod varint;
pub mod wal;

pub use catalog::TableDef;
pub use error::{Error, Result};
pub use latest::LatestReading;
pub use model::{ChannelType, Month, Reading, Value};
pub use scan::{Scan, ScanMetrics, ScanRequest, table_schema};
pub use segment::{BlockCacheStats, default_block_cache_bytes};
pub use store::{AppendReceipt, PartitionInfo, RecoveryEvent, Store, StoreOptions};
