#![allow(unused, missing_docs, clippy::all)]
use std::path::Path;
use arrow_array::ArrayRef;
use crate::error::Result;
use crate::io::Vfs;
use crate::model::{ChannelType, Month};
#[derive(Debug, Clone)]
pub struct SegmentMeta { pub table: String, pub device: String, pub month: Month, pub min_seq: u64, pub max_seq: u64, pub columns: Vec<(String, ChannelType)> }
#[derive(Debug, Clone)]
pub struct WriteOptions { pub block_rows: usize, pub zstd_level: i32 }
pub fn write_segment(vfs: &dyn Vfs, final_path: &Path, meta: &SegmentMeta, times: &[i64], columns: &[ArrayRef], opts: &WriteOptions) -> Result<u64> { unimplemented!() }
#[derive(Debug, Clone)]
pub struct SegmentReader { }
#[derive(Debug, Clone)]
pub struct BlockMeta { pub rows: u32, pub min_time: i64, pub max_time: i64 }
impl SegmentReader {
    pub fn open(vfs: &dyn Vfs, path: &Path) -> Result<SegmentReader> { unimplemented!() }
    pub fn path(&self) -> &Path { unimplemented!() }
    pub fn meta(&self) -> &SegmentMeta { unimplemented!() }
    pub fn blocks(&self) -> &[BlockMeta] { unimplemented!() }
    pub fn rows(&self) -> u64 { unimplemented!() }
    pub fn file_len(&self) -> u64 { unimplemented!() }
    pub fn read_times(&self, block: usize) -> Result<Vec<i64>> { unimplemented!() }
    pub fn read_column(&self, block: usize, column: usize) -> Result<ArrayRef> { unimplemented!() }
    pub fn verify(&self) -> Result<()> { unimplemented!() }
}
