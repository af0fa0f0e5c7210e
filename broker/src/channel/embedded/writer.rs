//! The writer of one partition: a dedicated thread that owns the active segment.
//!
//! Appends arrive over a bounded queue. The thread takes everything queued (up to a
//! byte budget), writes it as one group with one positional `write`, makes it durable
//! with one `fdatasync` (group commit: concurrent producers share the sync), then
//! publishes the new end offset to readers and answers every producer.
//!
//! The active segment is extended with zeros ahead of its records ([`PREALLOCATE`]),
//! so a group's sync has no file size to write; sealed segments are cut to their
//! records and recovery treats a zero tail as free space.
//!
//! A failed write or sync fails the whole group and the file is cut back to where the
//! group began (readers never read past committed records, so none has seen it), so
//! nothing is acknowledged that is not on disk and offsets stay dense. If
//! the file cannot be cut back, the partition refuses appends until restart.
//!
//! Syncs are not overlapped: with several `fdatasync`s of one open file in flight, a
//! write-back error is reported to only one of them, and another could acknowledge
//! the lost pages (and on this machine's disk overlapping did not pay;
//! docs/benchmarks.md).

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::checkpoints::{Checkpoints, Floor};
use super::file::{Opener, SegmentFile};
use super::segment::{self, Segment};
use super::FsyncPolicy;

/// One producer's append to this partition.
pub struct AppendRequest {
    /// Encoded events.
    pub payloads: Vec<Bytes>,
    /// Triggerfish's own append (a reply, a redrive): let through when the partition
    /// is held at its size limit, so a trigger storing a reply can never wait on
    /// its own checkpoint.
    pub own: bool,
    /// Receives the offset of the first event, or the error.
    pub reply: oneshot::Sender<Result<u64, AppendError>>,
}

/// Why an append was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendError {
    /// Writing or syncing failed (the group was undone), or the partition is poisoned.
    Failed(String),
    /// The partition is at `--retention-bytes` and its oldest segment is not yet
    /// passed by a live trigger: retry once it is delivered.
    Held(Floor),
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppendError::Failed(why) => f.write_str(why),
            AppendError::Held(floor) => write!(
                f,
                "the partition is at its retention limit and {} has not passed offset {}",
                floor.holder, floor.offset
            ),
        }
    }
}

/// State shared between the writer and the readers of a partition.
pub struct PartitionShared {
    /// The partition directory.
    pub dir: PathBuf,
    /// Segments, oldest first; the last is the active one.
    pub segments: RwLock<Vec<Segment>>,
    /// The offset after the last durable record; readers wait on it. Readers never
    /// read past the committed records' bytes ([`PartitionShared::segment_bytes`]), so
    /// an append that is cut back was never in a reader's buffer.
    pub committed: watch::Sender<u64>,
}

impl PartitionShared {
    /// The segment holding `offset`, or the first one after it (when `offset` fell
    /// into a gap or was removed by retention). `None` past the end.
    pub fn locate(&self, offset: u64) -> Option<Segment> {
        let segs = self.segments.read().unwrap_or_else(|p| p.into_inner());
        segs.iter().find(|s| s.end > offset).cloned()
    }

    /// The bytes of committed records in the segment starting at `base`.
    pub fn segment_bytes(&self, base: u64) -> Option<u64> {
        let segs = self.segments.read().unwrap_or_else(|p| p.into_inner());
        segs.iter().rev().find(|s| s.base == base).map(|s| s.bytes)
    }

    /// The earliest retained offset.
    pub fn earliest(&self) -> u64 {
        let segs = self.segments.read().unwrap_or_else(|p| p.into_inner());
        segs.first().map_or(0, |s| s.base)
    }
}

/// Settings of one writer.
#[derive(Clone)]
pub struct WriterSettings {
    /// This partition's number (its index in the checkpoints).
    pub partition: usize,
    /// The broker's checkpoints: retention deletes only what every live one passed.
    pub holds: Arc<Checkpoints>,
    /// Delete by the limits even what live triggers have not passed (Kafka-like;
    /// `--retention-delete-undelivered`). Every such deletion is logged at ERROR per
    /// trigger, and the readers report the offsets they pass over.
    pub delete_undelivered: bool,
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
/// The active segment is extended with zeros this much at a time, ahead of the
/// records. A sync of a write inside the file's current size has no inode to write
/// (no size change): on the development VM's disk that makes a group's `fdatasync`
/// about twice as fast (docs/benchmarks.md). Sealed segments are cut to their records,
/// and recovery treats a zero tail as free space, not as a torn write.
const PREALLOCATE: u64 = 1 << 20;
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
const RETENTION_EVERY: Duration = Duration::from_secs(10);
/// While held at the size limit, how often an append re-checks whether the holder
/// has moved on (each check reads every live checkpoint).
pub(super) const HELD_RECHECK: Duration = Duration::from_millis(100);
/// While held, how often the ERROR naming the holder is repeated.
const HELD_LOG_EVERY: Duration = Duration::from_secs(30);
const POISONED: &str = "the partition's writer could not undo a failed append; restart needed";
/// Why appends are refused after a failed periodic sync.
const SYNC_LOST: &str = "a periodic fsync of the partition failed, so acknowledged events may not be on disk; the partition refuses appends until restart (recovery keeps what the disk holds)";

/// The writer thread's state.
struct Writer {
    shared: Arc<PartitionShared>,
    settings: WriterSettings,
    open: Opener,
    file: Arc<dyn SegmentFile>,
    /// Offset of the next record and the byte position it goes to.
    next: u64,
    pos: u64,
    /// The active segment's size: records up to `pos`, zeros after.
    allocated: u64,
    /// A zero-fill failed (say, the disk is full): none for this segment.
    no_preallocation: bool,
    buf: Vec<u8>,
    /// (offset, position, framed length) of each record of the group being written.
    notes: Vec<(u64, u64, u64)>,
    /// Who to answer, with the offset of their first event.
    replies: Vec<(oneshot::Sender<Result<u64, AppendError>>, u64)>,
    /// Written but not synced (policies other than `always`).
    dirty: bool,
    /// A failed append could not be undone: refuse everything.
    poisoned: Option<&'static str>,
    /// At the size limit with the oldest segment undelivered: producer appends are
    /// refused until the holder passes it.
    held: Option<Held>,
}

/// The writer's held state.
struct Held {
    floor: Floor,
    /// When the floor was last read.
    checked: Instant,
    /// When the ERROR naming the holder was last logged.
    logged: Instant,
}

/// Runs the writer until every sender is gone. `file` is the active segment (the last
/// of `shared.segments`); `open` opens the next ones.
pub fn run(
    shared: Arc<PartitionShared>,
    settings: WriterSettings,
    open: Opener,
    file: Arc<dyn SegmentFile>,
    rx: Receiver<AppendRequest>,
) {
    let (next, pos) = {
        let segs = shared.segments.read().unwrap_or_else(|p| p.into_inner());
        segs.last().map_or((0, 0), |s| (s.end, s.bytes))
    };
    let mut w = Writer {
        shared,
        settings,
        open,
        file,
        next,
        pos,
        allocated: pos,
        no_preallocation: false,
        buf: Vec::new(),
        notes: Vec::new(),
        replies: Vec::new(),
        dirty: false,
        poisoned: None,
        held: None,
    };
    let mut batch: Vec<AppendRequest> = Vec::with_capacity(256);
    let mut last_sync = Instant::now();
    let mut last_retention = Instant::now();
    let tick = match w.settings.fsync {
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
            w.write_batch(&mut batch);
        }
        if let FsyncPolicy::Interval(d) = w.settings.fsync {
            if w.dirty && last_sync.elapsed() >= d {
                // Linux reports a write-back error once: a later sync would succeed
                // over pages that never reached the disk. What was acknowledged
                // since the last good sync may be lost, so, as after a group sync
                // that cannot be undone, nothing more is accepted until a restart
                // recovers the partition from what the disk really holds.
                if let Err(e) = w.file.sync_data() {
                    tracing::error!(dir = %w.shared.dir.display(), error = %e,
                        "periodic fsync failed; the partition refuses appends until restart");
                    w.poisoned = Some(SYNC_LOST);
                }
                w.dirty = false;
                last_sync = Instant::now();
            }
        }
        if last_retention.elapsed() >= RETENTION_EVERY {
            w.retain();
            last_retention = Instant::now();
        }
    }
    if w.allocated > w.pos && w.poisoned.is_none() {
        // Leave the file holding its records only (recovery would also cut the zeros).
        if w.file.set_len(w.pos).is_ok() {
            w.dirty = true;
        }
    }
    if w.dirty {
        let _ = w.file.sync_data();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Writer {
    /// Applies retention and enters or leaves the held state.
    fn retain(&mut self) {
        let held = apply_retention(&self.shared, &self.settings);
        let now = Instant::now();
        match (held, self.held.take()) {
            (Some(floor), None) => {
                tracing::error!(dir = %self.shared.dir.display(), holder = %floor.holder, checkpoint = floor.offset,
                    limit = self.settings.retention_bytes.unwrap_or(0),
                    "partition is at --retention-bytes and its oldest segment is not yet delivered: appends are refused (503) until the holder passes it");
                self.held = Some(Held {
                    floor,
                    checked: now,
                    logged: now,
                });
            }
            (Some(floor), Some(before)) => {
                let mut logged = before.logged;
                if now.duration_since(logged) >= HELD_LOG_EVERY {
                    tracing::error!(dir = %self.shared.dir.display(), holder = %floor.holder, checkpoint = floor.offset,
                        "partition still at --retention-bytes; appends refused until the holder passes its oldest segment");
                    logged = now;
                }
                self.held = Some(Held {
                    floor,
                    checked: now,
                    logged,
                });
            }
            (None, Some(before)) => {
                tracing::info!(dir = %self.shared.dir.display(), holder = %before.floor.holder,
                    "partition is below --retention-bytes again; appends accepted");
            }
            (None, None) => {}
        }
    }

    fn write_batch(&mut self, batch: &mut Vec<AppendRequest>) {
        if let Some(why) = self.poisoned {
            for req in batch.drain(..) {
                let _ = req.reply.send(Err(AppendError::Failed(why.into())));
            }
            return;
        }
        if self
            .held
            .as_ref()
            .is_some_and(|h| h.checked.elapsed() >= HELD_RECHECK)
        {
            self.retain();
        }
        if let Some(Held { floor, .. }) = &self.held {
            // Producers wait; Triggerfish's own appends go on (see `AppendRequest::own`).
            let (own, refused): (Vec<_>, Vec<_>) = batch.drain(..).partition(|r| r.own);
            for req in refused {
                let _ = req.reply.send(Err(AppendError::Held(floor.clone())));
            }
            *batch = own;
            if batch.is_empty() {
                return;
            }
        }
        let ts = now_ms();
        self.buf.clear();
        self.notes.clear();
        let mut offset = self.next;
        for req in batch.drain(..) {
            self.replies.push((req.reply, offset));
            for p in &req.payloads {
                let pos = self.pos + self.buf.len() as u64;
                segment::frame(&mut self.buf, offset, ts, p);
                self.notes
                    .push((offset, pos, (segment::HEADER + p.len()) as u64));
                offset += 1;
            }
        }
        let end = self.pos + self.buf.len() as u64;
        let always = matches!(self.settings.fsync, FsyncPolicy::Always);
        let result = self.file.write_all_at(&self.buf, self.pos).and_then(|()| {
            // The zeros go out in the same sync as the records.
            self.preallocate(end);
            if always {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = result {
            tracing::error!(dir = %self.shared.dir.display(), error = %e, "append failed; rolling back the group");
            // Cut back first: a producer retrying at once finds the file clean.
            self.cut_back();
            let msg = e.to_string();
            for (tx, _) in self.replies.drain(..) {
                let _ = tx.send(Err(AppendError::Failed(msg.clone())));
            }
            return;
        }
        self.dirty = !always;
        self.pos = end;
        self.next = offset;
        {
            let mut segs = self
                .shared
                .segments
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(active) = segs.last_mut() {
                for &(o, pos, len) in &self.notes {
                    active.note(o, pos, len, ts);
                }
            }
        }
        self.shared.committed.send_replace(self.next);
        for (tx, first) in self.replies.drain(..) {
            let _ = tx.send(Ok(first));
        }
        if self.pos >= self.settings.segment_bytes {
            match self.roll_segment() {
                // A new segment is when the size limit can first be exceeded.
                Ok(()) => self.retain(),
                Err(e) => {
                    tracing::error!(dir = %self.shared.dir.display(), error = %e, "cannot start a new segment; continuing in the current one")
                }
            }
        }
    }

    /// Extends the file with zeros past `end` when the records reach its size. A
    /// failure (a full disk, say) only turns preallocation off for this segment: the
    /// records themselves were written.
    fn preallocate(&mut self, end: u64) {
        if end <= self.allocated
            || self.no_preallocation
            || matches!(self.settings.fsync, FsyncPolicy::Never)
        {
            return;
        }
        // Never past the segment size: the segment rolls there.
        let target = (end + PREALLOCATE / 2)
            .next_multiple_of(PREALLOCATE)
            .min(self.settings.segment_bytes)
            .max(end);
        let mut at = end.max(self.allocated);
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64);
            if let Err(e) = self.file.write_all_at(&ZEROS[..n as usize], at) {
                tracing::warn!(dir = %self.shared.dir.display(), error = %e,
                    "cannot allocate segment space ahead; appending without it");
                self.no_preallocation = true;
                self.allocated = end;
                return;
            }
            at += n;
        }
        self.allocated = target;
    }

    /// Cuts the active segment back to the end of the last acknowledged group, where
    /// the failed group began.
    fn cut_back(&mut self) {
        let undone = self
            .file
            .set_len(self.pos)
            .and_then(|()| self.file.sync_data());
        match undone {
            Ok(()) => self.allocated = self.pos,
            Err(e) => {
                tracing::error!(dir = %self.shared.dir.display(), error = %e,
                    "cannot undo a failed append; this partition refuses appends until restart");
                self.poisoned = Some(POISONED);
            }
        }
    }

    /// Seals the active segment and starts the next.
    fn roll_segment(&mut self) -> std::io::Result<()> {
        if self.allocated > self.pos {
            self.file.set_len(self.pos)?;
            self.allocated = self.pos;
        }
        self.file.sync_data()?;
        let seg = Segment::new(&self.shared.dir, self.next);
        let new_file = (self.open)(&seg)?;
        if let Err(e) = segment::sync_dir(&self.shared.dir) {
            // Do not leave an empty segment behind: on restart it would look like the
            // active one and its base offset would repeat offsets already written.
            drop(new_file);
            let _ = std::fs::remove_file(&seg.path);
            return Err(e);
        }
        self.file = new_file;
        self.pos = 0;
        self.allocated = 0;
        self.no_preallocation = false;
        self.dirty = false;
        let mut segs = self
            .shared
            .segments
            .write()
            .unwrap_or_else(|p| p.into_inner());
        segs.push(seg);
        Ok(())
    }
}

/// Deletes sealed segments past the age or size limit that every live checkpoint
/// has passed (all of them with `delete_undelivered`). Readers holding a deleted
/// file keep reading it (the inode lives until closed); readers that need an offset
/// no longer retained skip to the earliest one and report what they skipped
/// ([`crate::channel::LogReader::take_skipped`]).
///
/// Returns the floor that keeps the partition over `retention_bytes`, if one does:
/// the writer then refuses producer appends. The active segment is never deleted,
/// so a partition can exceed the limit by up to one segment.
pub fn apply_retention(shared: &PartitionShared, settings: &WriterSettings) -> Option<Floor> {
    if settings.retention_age.is_none() && settings.retention_bytes.is_none() {
        return None;
    }
    let now = now_ms();
    // Read before the segments are locked (never both locks at once).
    let floor = settings.holds.floor(settings.partition);
    let mut doomed = Vec::new();
    let mut held = None;
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
            let undelivered = floor.as_ref().filter(|f| f.offset < oldest.end);
            if let (Some(f), false) = (undelivered, settings.delete_undelivered) {
                if too_big {
                    held = Some(f.clone());
                }
                break;
            }
            total -= oldest.bytes;
            doomed.push(segs.remove(0));
        }
    }
    for seg in doomed {
        if settings.delete_undelivered {
            for (holder, at) in settings.holds.behind(settings.partition, seg.end) {
                tracing::error!(segment = %seg.path.display(), trigger = %holder, from = at.max(seg.base), to = seg.end,
                    "retention (--retention-delete-undelivered) deleted events this trigger has not received");
            }
        }
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
    held
}
