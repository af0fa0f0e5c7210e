//! The writer's file seam: what the writer does to a segment file, behind a trait, so
//! that tests can make writes and syncs fail (or stall) where they choose and check
//! that nothing unsynced is acknowledged.
//!
//! The writer writes at explicit positions (the records, then zeros allocated ahead
//! of them), so nothing depends on a file cursor, and every method takes `&self`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::segment::{self, Segment};

/// One open segment file, as the writer uses it.
pub trait SegmentFile: Send + Sync {
    /// Writes all of `buf` at byte position `pos`.
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// `fdatasync`: on success every byte written before the call is durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Cuts (or extends) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

impl SegmentFile for File {
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, pos)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

/// Opens (creating) the file of a segment for writing.
pub type Opener = Arc<dyn Fn(&Segment) -> io::Result<Arc<dyn SegmentFile>> + Send + Sync>;

/// The opener of real segment files.
pub fn disk() -> Opener {
    Arc::new(|seg: &Segment| {
        let f: Arc<dyn SegmentFile> = Arc::new(segment::open_for_write(seg)?);
        Ok(f)
    })
}
