#![allow(unused, missing_docs, clippy::all)]
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use crate::error::Result;
use crate::io::Vfs;
#[derive(Debug, Clone, Default)]
pub struct WalOptions { pub segment_bytes: u64, pub group_commit_window: Duration, pub max_batch_bytes: usize, pub quarantine_dir: Option<PathBuf> }
#[derive(Debug, Clone, PartialEq)]
pub enum RecoveryEvent { TornTail { file: PathBuf, offset: u64, discarded_bytes: u64 } }
#[derive(Debug, Clone, Default)]
pub struct WalStats { pub appends: u64, pub commits: u64, pub bytes: u64 }
#[derive(Debug)]
pub struct Wal<T: Send + 'static> { t: std::marker::PhantomData<std::sync::Mutex<T>> }
impl<T: Send + 'static> Wal<T> {
    pub fn open(vfs: Arc<dyn Vfs>, dir: PathBuf, opts: WalOptions, min_next_seq: u64, replay: &mut dyn FnMut(u64, &[u8]) -> Result<()>, on_commit: Box<dyn FnMut(Vec<(u64, T)>) + Send>) -> Result<(Wal<T>, Vec<RecoveryEvent>)> { unimplemented!() }
    pub fn append(&self, payload: Vec<u8>, item: T) -> Result<u64> { unimplemented!() }
    pub fn rotate_with<R>(&self, f: impl FnOnce(u64) -> R) -> Result<R> { unimplemented!() }
    pub fn trim(&self, upto: u64) -> Result<()> { unimplemented!() }
    pub fn last_committed_seq(&self) -> u64 { unimplemented!() }
    pub fn stats(&self) -> WalStats { unimplemented!() }
    pub fn close(&self) -> Result<()> { unimplemented!() }
}
