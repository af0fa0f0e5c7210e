//! Reading one partition of the embedded log.
//!
//! A reader sees only durable records: it never reads past the partition's committed
//! offset. File reads run on the blocking pool, a batch at a time.
//!
//! The file is read in chunks of up to [`READ_CHUNK`] bytes, and each record's payload
//! is a slice of its chunk (no allocation or copy per record; the decoded event's
//! strings and data slice it further). The price: an event that is kept (in a lane's
//! queue, or retried) keeps its whole chunk in memory, at most [`READ_CHUNK`] bytes.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use tokio::sync::watch;

use super::segment;
use super::writer::PartitionShared;
use crate::channel::{ChannelError, LogReader, Malformed, Offset, Record, Skipped};
use crate::config::BrokerId;
use crate::event::codec;

/// How much is read from the file at a time (more when one record is larger).
pub(super) const READ_CHUNK: usize = 32 * 1024;
const BATCH_BYTES: usize = 4 << 20;

/// A segment file read from `pos`, never past `limit`: the active segment holds zeros
/// (allocated ahead) and groups not yet synced after its committed bytes, and a
/// read-ahead chunk must not keep either.
struct Bounded {
    file: File,
    pos: u64,
    limit: u64,
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.limit.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(room) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

struct Open {
    file: Bounded,
    /// Bytes read from the file and not yet returned (the start of the chunk that
    /// records are sliced from).
    buf: Bytes,
    /// Offset of the record at the start of `buf`.
    at: u64,
    /// End of this segment if it is sealed (known not to grow).
    sealed_end: Option<u64>,
    base: u64,
}

struct State {
    shared: Arc<PartitionShared>,
    /// Read position in the files (after `buffered`).
    next: u64,
    open: Option<Open>,
    broker: BrokerId,
    partition: u32,
    /// Records read but not yet returned (kept when a read future is dropped).
    buffered: VecDeque<Record>,
    /// Offsets passed over because retention had removed them, not yet reported.
    skipped: Option<Skipped>,
}

/// A reader of one embedded partition. Reads happen on the blocking pool into a
/// buffer inside the shared state, so a `next_batch` future that is dropped mid-read
/// (for example by `select!`) loses nothing: the next call returns those records.
pub struct EmbeddedReader {
    state: Arc<Mutex<State>>,
    committed: watch::Receiver<u64>,
    /// Offset of the next record to return.
    next: u64,
}

impl EmbeddedReader {
    pub(super) fn new(
        shared: Arc<PartitionShared>,
        broker: BrokerId,
        partition: u32,
        next: u64,
        skipped: Option<Skipped>,
    ) -> EmbeddedReader {
        let committed = shared.committed.subscribe();
        EmbeddedReader {
            state: Arc::new(Mutex::new(State {
                shared,
                next,
                open: None,
                broker,
                partition,
                buffered: VecDeque::new(),
                skipped,
            })),
            committed,
            next,
        }
    }

    fn take(&mut self, st: &mut State, max: usize) -> Vec<Record> {
        let n = st.buffered.len().min(max);
        let out: Vec<Record> = st.buffered.drain(..n).collect();
        match out.last() {
            Some(last) => self.next = last.offset + 1,
            // Nothing buffered: the read position is the return position (it may have
            // moved past a retention gap).
            None => self.next = self.next.max(st.next),
        }
        out
    }

    async fn read(&mut self, max: usize, end: u64) -> Result<Vec<Record>, ChannelError> {
        let state = self.state.clone();
        if let Ok(mut st) = state.try_lock() {
            if !st.buffered.is_empty() {
                return Ok(self.take(&mut st, max));
            }
        }
        let state = self.state.clone();
        let filled = tokio::task::spawn_blocking(move || {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            if st.buffered.is_empty() {
                st.fill(max, end)
            } else {
                Ok(())
            }
        })
        .await
        .map_err(|e| ChannelError::Internal(format!("read task failed: {e}")))?;
        let state = self.state.clone();
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let out = self.take(&mut st, max);
        match filled {
            Err(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }
}

#[async_trait]
impl LogReader for EmbeddedReader {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, ChannelError> {
        loop {
            let end = *self.committed.borrow_and_update();
            if end > self.next {
                let batch = self.read(max, end).await?;
                if !batch.is_empty() {
                    return Ok(batch);
                }
                if self.next < end {
                    continue; // skipped over a retention gap
                }
            }
            if self.committed.changed().await.is_err() {
                return Err(ChannelError::Internal("partition writer stopped".into()));
            }
        }
    }

    async fn try_batch(&mut self, max: usize) -> Result<Vec<Record>, ChannelError> {
        let end = *self.committed.borrow_and_update();
        if end > self.next {
            self.read(max, end).await
        } else {
            Ok(Vec::new())
        }
    }

    fn position(&self) -> Offset {
        self.next
    }

    fn take_skipped(&mut self) -> Option<Skipped> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .skipped
            .take()
    }
}

impl Open {
    /// Reads until `buf` holds at least `n` bytes, or to the end of the file. Reads
    /// into a new chunk (moving over the partial record at the end of the old one):
    /// records sliced from the old chunk keep it alive only as long as they live.
    fn fill_to(&mut self, n: usize) -> io::Result<()> {
        while self.buf.len() < n {
            let mut chunk = Vec::with_capacity(READ_CHUNK.max(n));
            chunk.extend_from_slice(&self.buf);
            let room = (chunk.capacity() - chunk.len()) as u64;
            // `read_to_end` reads into the spare capacity without zeroing it first.
            let got = (&mut self.file).take(room).read_to_end(&mut chunk)?;
            if chunk.len() < chunk.capacity() / 2 {
                // Near the end of the log: keep only what was read.
                chunk.shrink_to_fit();
            }
            self.buf = Bytes::from(chunk);
            if got == 0 {
                break;
            }
        }
        Ok(())
    }

    /// The next record header; `Ok(None)` at a clean end of file or a torn header.
    fn header(&mut self) -> io::Result<Option<segment::Header>> {
        self.fill_to(segment::HEADER)?;
        if self.buf.len() < segment::HEADER {
            return Ok(None);
        }
        let header = segment::read_header(&mut &self.buf[..segment::HEADER])?;
        self.buf.advance(segment::HEADER);
        Ok(header)
    }

    /// The `len` bytes after a header, as a slice of the chunk.
    fn payload(&mut self, len: usize) -> io::Result<Bytes> {
        self.fill_to(len)?;
        if self.buf.len() < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "record payload cut short",
            ));
        }
        Ok(self.buf.split_to(len))
    }
}

impl State {
    fn io(&self, e: std::io::Error) -> ChannelError {
        ChannelError::Io {
            broker: self.broker.clone(),
            source: e,
        }
    }

    /// Opens the segment holding `offset` (or the next one). Returns a malformed
    /// record when `offset` falls in a hole between segments: records that recovery
    /// could not walk in a damaged sealed segment.
    fn open_at(&mut self, offset: u64) -> Result<Option<Record>, ChannelError> {
        self.open_exact(offset, None)
    }

    /// Like [`State::open_at`], at a known file position of `offset` when given.
    fn open_exact(&mut self, offset: u64, at: Option<u64>) -> Result<Option<Record>, ChannelError> {
        let Some(seg) = self.shared.locate(offset) else {
            self.open = None;
            return Ok(None);
        };
        let mut hole = None;
        let offset = if seg.base > offset {
            if offset >= self.shared.earliest() {
                hole = Some(self.unreadable(
                    offset,
                    seg.base,
                    "the segment before holds no readable records from here (damaged on disk)",
                ));
            } else {
                // Reported to the dispatcher, which counts and logs it per trigger.
                self.skipped = Some(Skipped::add(self.skipped, Skipped::range(offset, seg.base)));
            }
            seg.base
        } else {
            offset
        };
        let last_base = {
            let segs = self
                .shared
                .segments
                .read()
                .unwrap_or_else(|p| p.into_inner());
            segs.last().map_or(0, |s| s.base)
        };
        let sealed_end = (seg.base != last_base).then_some(seg.end);
        let (hint_offset, pos) = match at {
            Some(pos) => (offset, pos),
            None => seg.seek_hint(offset),
        };
        let file = File::open(&seg.path).map_err(|e| self.io(e))?;
        let file = Bounded {
            file,
            pos,
            limit: seg.bytes,
        };
        self.next = offset;
        self.open = Some(Open {
            file,
            buf: Bytes::new(),
            at: hint_offset,
            sealed_end,
            base: seg.base,
        });
        Ok(hole)
    }

    /// A malformed record standing for the unreadable offsets `from..to`, logged at
    /// ERROR; the dispatcher stores it once in the dead-letter log.
    fn unreadable(&self, from: u64, to: u64, why: &str) -> Record {
        let reason = format!(
            "broker {} partition {}: records {from}..{} are unreadable: {why}",
            self.broker,
            self.partition,
            to.saturating_sub(1)
        );
        tracing::error!(broker = %self.broker, partition = self.partition, from, to, "{reason}; reading goes on after them");
        Record {
            offset: from,
            event: Err(Malformed { reason, data: None }),
        }
    }

    /// Where reading can resume after damage at `offset` in the segment starting at
    /// `base`: the next index entry of that segment (a record known to start there),
    /// else the start of the next segment, else the end of the committed records
    /// (the active segment). Returns the offset and, within the same segment, its
    /// file position.
    fn resync_after(&self, base: u64, offset: u64) -> (u64, Option<u64>) {
        let segs = self
            .shared
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let Some(i) = segs.iter().position(|s| s.base == base) else {
            return (offset + 1, None);
        };
        let seg = &segs[i];
        if let Some(&(o, pos)) = seg.index.iter().find(|&&(o, _)| o > offset) {
            return (o, Some(pos));
        }
        match segs.get(i + 1) {
            Some(next) => (next.base, None),
            None => (seg.end.max(offset + 1), Some(seg.bytes)),
        }
    }

    /// Reports `from..` up to the resync point as unreadable and reopens there.
    fn skip_damage(
        &mut self,
        out: &mut Vec<Record>,
        from: u64,
        base: u64,
        why: &str,
    ) -> Result<(), ChannelError> {
        let (to, pos) = self.resync_after(base, from);
        out.push(self.unreadable(from, to, why));
        match pos {
            // The same segment, at a position a record is known to start at (for
            // the active segment, where the writer appends next).
            Some(pos) => {
                if let Some(hole) = self.open_exact(to, Some(pos))? {
                    out.push(hole);
                }
            }
            None => self.open = None,
        }
        self.next = to;
        Ok(())
    }

    fn reopen_needed(&self) -> bool {
        match &self.open {
            None => true,
            Some(o) => o.sealed_end.is_some_and(|end| self.next >= end) || o.at > self.next,
        }
    }

    /// Reads up to `max` records below `end` into `buffered` (keeping what was read
    /// before an error).
    fn fill(&mut self, max: usize, end: u64) -> Result<(), ChannelError> {
        let mut out = Vec::new();
        let result = self.read_into(&mut out, max, end);
        self.buffered.extend(out);
        result
    }

    fn read_into(
        &mut self,
        out: &mut Vec<Record>,
        max: usize,
        end: u64,
    ) -> Result<(), ChannelError> {
        if let Some(open) = self.open.as_mut().filter(|o| o.sealed_end.is_none()) {
            // The segment was active when opened: read up to what is committed now.
            if let Some(bytes) = self.shared.segment_bytes(open.base) {
                open.file.limit = bytes;
            }
        }
        let mut bytes = 0usize;
        let mut retried = false;
        while self.next < end && out.len() < max && bytes < BATCH_BYTES {
            if self.reopen_needed() {
                if let Some(hole) = self.open_at(self.next)? {
                    out.push(hole);
                }
                if self.open.is_none() {
                    break;
                }
            }
            let Some(open) = self.open.as_mut() else {
                break;
            };
            let header = open.header().map_err(|e| ChannelError::Io {
                broker: self.broker.clone(),
                source: e,
            })?;
            let Some(h) = header else {
                if open.sealed_end.is_some_and(|e| self.next < e) {
                    // A sealed segment's file ends before its records do: cut short
                    // on disk.
                    let why = format!("segment file ends before record {}", open.at);
                    let (from, base) = (open.at.max(self.next), open.base);
                    self.skip_damage(out, from, base, &why)?;
                    continue;
                }
                // End of this file: the segment was sealed after we opened it.
                let base = open.base;
                let segs_next = self.shared.locate(self.next);
                match segs_next {
                    Some(s) if s.base != base => {
                        self.open = None;
                        continue;
                    }
                    _ => break, // not written yet (cannot happen below `end`)
                }
            };
            if h.len > segment::MAX_PAYLOAD || h.offset != open.at {
                if !retried {
                    // Not the record expected here: read it from disk once more before
                    // calling the log corrupt (the chunk holds committed bytes only, so
                    // this is damage, not a race with the writer).
                    retried = true;
                    self.open = None;
                    continue;
                }
                // Damage: report the records up to the next place a record is known to
                // start, and go on from there (contract 4: corrupt bytes on disk never
                // stop a partition).
                let why = format!(
                    "corrupt record header at offset {} (found offset {}, length {})",
                    open.at, h.offset, h.len
                );
                let (from, base) = (open.at.max(self.next), open.base);
                self.skip_damage(out, from, base, &why)?;
                retried = false;
                continue;
            }
            let payload = match open.payload(h.len) {
                Ok(p) => p,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    // A length pointing past the committed bytes: damage too.
                    let why = format!("record at offset {} cut short: {e}", open.at);
                    let (from, base) = (open.at.max(self.next), open.base);
                    self.skip_damage(out, from, base, &why)?;
                    continue;
                }
                Err(e) => {
                    return Err(ChannelError::Io {
                        broker: self.broker.clone(),
                        source: e,
                    })
                }
            };
            open.at += 1;
            if h.offset < self.next {
                continue; // scanning forward from an index entry
            }
            bytes += h.len;
            let event = if segment::checksum(h.offset, h.ts_ms, &payload) != h.crc {
                Err(Malformed {
                    reason: format!(
                        "broker {} partition {} offset {}: checksum mismatch",
                        self.broker, self.partition, h.offset
                    ),
                    data: Some(payload),
                })
            } else {
                codec::decode(&payload).map_err(|e| Malformed {
                    reason: format!(
                        "broker {} partition {} offset {}: {e}",
                        self.broker, self.partition, h.offset
                    ),
                    data: Some(payload.clone()),
                })
            };
            out.push(Record {
                offset: h.offset,
                event,
            });
            self.next = h.offset + 1;
        }
        Ok(())
    }
}
