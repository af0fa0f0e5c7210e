//! Reading one partition of the embedded log.
//!
//! A reader sees only durable records: it never reads past the partition's committed
//! offset. File reads run on the blocking pool, a batch at a time.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use super::segment;
use super::writer::PartitionShared;
use crate::channel::{ChannelError, LogReader, Malformed, Offset, Record};
use crate::config::BrokerId;
use crate::event::codec;

const READ_BUFFER: usize = 64 * 1024;
const BATCH_BYTES: usize = 4 << 20;

/// A segment file read from `pos`, never past `limit`: the active segment holds zeros
/// (allocated ahead) and groups not yet synced after its committed bytes, and a
/// read-ahead buffer must not keep either.
struct Bounded {
    file: File,
    pos: u64,
    limit: u64,
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
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
    file: BufReader<Bounded>,
    /// Offset of the record at the file's current position.
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
    /// The writer's rollback count when the open file was read last.
    rollbacks: u64,
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
                rollbacks: 0,
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
        .map_err(|e| ChannelError::Other(format!("read task failed: {e}")))?;
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
                return Err(ChannelError::Other("partition writer stopped".into()));
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
}

impl State {
    fn io(&self, e: std::io::Error) -> ChannelError {
        ChannelError::Io {
            broker: self.broker.clone(),
            source: e,
        }
    }

    fn open_at(&mut self, offset: u64) -> Result<(), ChannelError> {
        let Some(seg) = self.shared.locate(offset) else {
            self.open = None;
            return Ok(());
        };
        let offset = if seg.base > offset {
            tracing::warn!(
                broker = %self.broker,
                partition = self.partition,
                wanted = offset,
                earliest = seg.base,
                "events before the earliest retained offset were removed by retention; skipping ahead"
            );
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
        let (hint_offset, pos) = seg.seek_hint(offset);
        let file = File::open(&seg.path).map_err(|e| self.io(e))?;
        self.next = offset;
        self.open = Some(Open {
            file: BufReader::with_capacity(
                READ_BUFFER,
                Bounded {
                    file,
                    pos,
                    limit: seg.bytes,
                },
            ),
            at: hint_offset,
            sealed_end,
            base: seg.base,
        });
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
        // `end` was read before this: if an append was undone since the file was last
        // read, the read-ahead buffer may hold its bytes (at offsets a later append
        // reuses), so read from disk again.
        let rollbacks = self
            .shared
            .rollbacks
            .load(std::sync::atomic::Ordering::SeqCst);
        if rollbacks != self.rollbacks {
            self.rollbacks = rollbacks;
            self.open = None;
        }
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
                open.file.get_mut().limit = bytes;
            }
        }
        let mut bytes = 0usize;
        let mut retried = false;
        while self.next < end && out.len() < max && bytes < BATCH_BYTES {
            if self.reopen_needed() {
                self.open_at(self.next)?;
                if self.open.is_none() {
                    break;
                }
            }
            let Some(open) = self.open.as_mut() else {
                break;
            };

            let header = segment::read_header(&mut open.file).map_err(|e| ChannelError::Io {
                broker: self.broker.clone(),
                source: e,
            })?;
            let Some(h) = header else {
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
                    // Buffered bytes from before a rolled-back write: re-read from disk.
                    retried = true;
                    self.open = None;
                    continue;
                }
                return Err(ChannelError::Other(format!(
                    "broker {} partition {}: corrupt record header at offset {} (found offset {})",
                    self.broker, self.partition, open.at, h.offset
                )));
            }
            let mut payload = vec![0u8; h.len];
            open.file
                .read_exact(&mut payload)
                .map_err(|e| ChannelError::Io {
                    broker: self.broker.clone(),
                    source: e,
                })?;
            open.at += 1;
            if h.offset < self.next {
                continue; // scanning forward from an index entry
            }
            bytes += h.len;
            let payload = Bytes::from(payload);
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
