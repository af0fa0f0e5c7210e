//! The writer of one partition: a dedicated thread that owns the active segment.
//!
//! Appends arrive over a bounded queue. The thread takes everything queued (up to a
//! byte budget), writes it with one `write`, makes it durable with one `fdatasync`
//! (group commit: concurrent producers share the sync), then publishes the new end
//! offset to readers and answers every producer. A failed write or sync is rolled
//! back (the file truncated to where the batch began) and every producer in the batch
//! gets the error, so nothing is acknowledged that is not on disk.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::segment::{self, Segment};
use super::FsyncPolicy;

/// One producer's append to this partition.
pub struct AppendRequest {
    /// Encoded events.
    pub payloads: Vec<Bytes>,
    /// Receives the offset of the first event, or the error.
    pub reply: oneshot::Sender<Result<u64, String>>,
}

/// State shared between the writer and the readers of a partition.
pub struct PartitionShared {
    /// The partition directory.
    pub dir: PathBuf,
    /// Segments, oldest first; the last is the active one.
    pub segments: RwLock<Vec<Segment>>,
    /// The offset after the last durable record; readers wait on it.
    pub committed: watch::Sender<u64>,
    /// Count of rolled-back appends: a reader that sees it change drops its read-ahead
    /// buffer, which may hold bytes of an append that was undone.
    pub rollbacks: AtomicU64,
}

impl PartitionShared {
    /// The segment holding `offset`, or the first one after it (when `offset` fell
    /// into a gap or was removed by retention). `None` past the end.
    pub fn locate(&self, offset: u64) -> Option<Segment> {
        let segs = self.segments.read().unwrap_or_else(|p| p.into_inner());
        segs.iter().find(|s| s.end > offset).cloned()
    }

    /// The earliest retained offset.
    pub fn earliest(&self) -> u64 {
        let segs = self.segments.read().unwrap_or_else(|p| p.into_inner());
        segs.first().map_or(0, |s| s.base)
    }
}

/// Settings of one writer.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Sync policy.
    pub fsync: FsyncPolicy,
    /// Roll to a new segment past this size.
    pub segment_bytes: u64,
    /// Delete sealed segments whose newest record is older than this.
    pub retention_age: Option<Duration>,
    /// Delete the oldest sealed segments while the partition is larger than this.
    pub retention_bytes: Option<u64>,
}

const BATCH_BYTES: usize = 8 << 20;
const RETENTION_EVERY: Duration = Duration::from_secs(10);

/// Runs the writer until every sender is gone. `file` is the active segment, open
/// for appending.
pub fn run(
    shared: Arc<PartitionShared>,
    settings: WriterSettings,
    mut file: File,
    rx: Receiver<AppendRequest>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut batch: Vec<AppendRequest> = Vec::with_capacity(256);
    let mut last_sync = Instant::now();
    let mut dirty = false;
    let mut poisoned = false;
    let mut last_retention = Instant::now();
    let tick = match settings.fsync {
        FsyncPolicy::Interval(d) => d.min(RETENTION_EVERY),
        _ => RETENTION_EVERY,
    };
    loop {
        match rx.recv_timeout(tick) {
            Ok(first) => batch.push(first),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let mut bytes: usize = batch
            .iter()
            .flat_map(|r| &r.payloads)
            .map(|p| p.len())
            .sum();
        while bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(req) => {
                    bytes += req.payloads.iter().map(|p| p.len()).sum::<usize>();
                    batch.push(req);
                }
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            write_batch(
                &shared,
                &settings,
                &mut file,
                &mut buf,
                &mut batch,
                &mut dirty,
                &mut poisoned,
            );
        }
        if let FsyncPolicy::Interval(d) = settings.fsync {
            if dirty && last_sync.elapsed() >= d {
                if let Err(e) = file.sync_data() {
                    tracing::error!(dir = %shared.dir.display(), error = %e, "periodic fsync failed");
                }
                dirty = false;
                last_sync = Instant::now();
            }
        }
        if last_retention.elapsed() >= RETENTION_EVERY {
            apply_retention(&shared, &settings);
            last_retention = Instant::now();
        }
    }
    if dirty {
        let _ = file.sync_data();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn write_batch(
    shared: &PartitionShared,
    settings: &WriterSettings,
    file: &mut File,
    buf: &mut Vec<u8>,
    batch: &mut Vec<AppendRequest>,
    dirty: &mut bool,
    poisoned: &mut bool,
) {
    if *poisoned {
        for req in batch.drain(..) {
            let _ = req.reply.send(Err(
                "the partition's writer could not undo a failed append; restart needed".into(),
            ));
        }
        return;
    }
    let ts = now_ms();
    let (start_offset, start_bytes, base) = {
        let segs = shared.segments.read().unwrap_or_else(|p| p.into_inner());
        let active = segs.last().map_or((0, 0, 0), |s| (s.end, s.bytes, s.base));
        active
    };
    buf.clear();
    let mut offset = start_offset;
    let mut notes = Vec::with_capacity(batch.len());
    for req in batch.iter() {
        for p in &req.payloads {
            let pos = start_bytes + buf.len() as u64;
            segment::frame(buf, offset, ts, p);
            notes.push((offset, pos, (segment::HEADER + p.len()) as u64));
            offset += 1;
        }
    }
    let result = file.write_all(buf).and_then(|()| match settings.fsync {
        FsyncPolicy::Always => file.sync_data(),
        _ => Ok(()),
    });
    if let Err(e) = result {
        tracing::error!(dir = %shared.dir.display(), error = %e, "append failed; rolling back the batch");
        // Undo a partial write so later appends do not land after garbage: cut the
        // file back and move the write position with it. Readers that may have
        // buffered the undone bytes re-read from disk (`rollbacks`).
        let undone = file
            .set_len(start_bytes)
            .and_then(|()| file.seek(SeekFrom::Start(start_bytes)))
            .and_then(|_| file.sync_data());
        shared.rollbacks.fetch_add(1, Ordering::SeqCst);
        if let Err(e2) = undone {
            tracing::error!(dir = %shared.dir.display(), error = %e2,
                "cannot undo a failed append; this partition refuses appends until restart");
            *poisoned = true;
        }
        let msg = e.to_string();
        for req in batch.drain(..) {
            let _ = req.reply.send(Err(msg.clone()));
        }
        return;
    }
    *dirty = !matches!(settings.fsync, FsyncPolicy::Always);
    let roll = {
        let mut segs = shared.segments.write().unwrap_or_else(|p| p.into_inner());
        if let Some(active) = segs.last_mut() {
            debug_assert_eq!(active.base, base);
            for &(o, pos, len) in &notes {
                active.note(o, pos, len, ts);
            }
            active.bytes >= settings.segment_bytes
        } else {
            false
        }
    };
    shared.committed.send_replace(offset);
    let mut first = start_offset;
    for req in batch.drain(..) {
        let n = req.payloads.len() as u64;
        let _ = req.reply.send(Ok(first));
        first += n;
    }
    if roll {
        match roll_segment(shared, file, offset) {
            // A new segment is when the size limit can first be exceeded.
            Ok(()) => apply_retention(shared, settings),
            Err(e) => {
                tracing::error!(dir = %shared.dir.display(), error = %e, "cannot start a new segment; continuing in the current one")
            }
        }
    }
}

fn roll_segment(shared: &PartitionShared, file: &mut File, next: u64) -> std::io::Result<()> {
    file.sync_data()?;
    let seg = Segment::new(&shared.dir, next);
    let new_file = segment::open_for_append(&seg)?;
    if let Err(e) = segment::sync_dir(&shared.dir) {
        // Do not leave an empty segment behind: on restart it would look like the
        // active one and its base offset would repeat offsets already written.
        drop(new_file);
        let _ = std::fs::remove_file(&seg.path);
        return Err(e);
    }
    *file = new_file;
    let mut segs = shared.segments.write().unwrap_or_else(|p| p.into_inner());
    segs.push(seg);
    Ok(())
}

/// Deletes sealed segments past the age or size limit. Readers holding a deleted
/// file keep reading it (the inode lives until closed); readers that need an offset
/// no longer retained skip to the earliest one, with a warning.
pub fn apply_retention(shared: &PartitionShared, settings: &WriterSettings) {
    let now = now_ms();
    let mut doomed = Vec::new();
    {
        let mut segs = shared.segments.write().unwrap_or_else(|p| p.into_inner());
        let mut total: u64 = segs.iter().map(|s| s.bytes).sum();
        while segs.len() > 1 {
            let oldest = &segs[0];
            let too_old = settings
                .retention_age
                .is_some_and(|age| now - oldest.max_ts_ms > age.as_millis() as i64);
            let too_big = settings.retention_bytes.is_some_and(|max| total > max);
            if !(too_old || too_big) {
                break;
            }
            total -= oldest.bytes;
            doomed.push(segs.remove(0));
        }
    }
    for seg in doomed {
        tracing::info!(
            segment = %seg.path.display(),
            first_offset = seg.base,
            end_offset = seg.end,
            "retention removed a segment"
        );
        if let Err(e) = std::fs::remove_file(&seg.path) {
            tracing::warn!(segment = %seg.path.display(), error = %e, "cannot remove segment");
        }
    }
}
