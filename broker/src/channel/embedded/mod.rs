//! The embedded channel: a durable, partitioned, append-only log on local disk, so that
//! `triggerfish serve` needs no other process.
//!
//! Layout under the data directory:
//!
//! ```text
//! LOCK                                  held while a process uses the directory
//! brokers/<namespace>/<broker>/
//!     p0/00000000000000000000.seg ...   segments of partition 0 (see `segment`)
//!     p1/...
//!     checkpoints/<trigger>.json         next offset per partition (null: none yet)
//! ```
//!
//! Each partition has one writer thread ([`writer`]) doing group commit, and any number
//! of readers ([`reader`]). Why not an embedded database: the workload is append,
//! sequential read, and whole-segment deletion for retention. A log of segment files
//! does exactly that with one write and one `fdatasync` per group of appends and no
//! compaction or write amplification, and lets readers follow the tail without polling.

mod checkpoints;
mod file;
mod reader;
#[cfg(test)]
mod reader_tests;
pub mod segment;
mod writer;
#[cfg(test)]
mod writer_tests;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::{
    partition_for, BrokerLog, ChannelError, CheckpointUpdate, EventLog, LogKind, LogReader, Offset,
    Skipped, StartAt,
};
use crate::config::BrokerId;
use crate::event::{codec, Event};
use checkpoints::Checkpoints;
pub use reader::EmbeddedReader;
use writer::{AppendError, AppendRequest, PartitionShared, WriterSettings};

/// When appends are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` before acknowledging, shared by all appends in a group (default).
    Always,
    /// Acknowledge after `write`; sync at this interval. A machine crash can lose up
    /// to one interval of acknowledged events (a process crash loses nothing).
    Interval(Duration),
    /// Never sync explicitly; the OS decides.
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" | "none" => Ok(FsyncPolicy::Never),
            other => match other.strip_prefix("interval:") {
                Some(d) => crate::config::parse_duration(d)
                    .or_else(|_| humantime_ms(d))
                    .map(FsyncPolicy::Interval),
                None => Err(format!(
                    "'{other}' is not an fsync policy: use always, never, or interval:<duration> (e.g. interval:100ms or interval:PT1S)"
                )),
            },
        }
    }
}

fn humantime_ms(s: &str) -> Result<Duration, String> {
    let bad = || format!("'{s}' is not a duration such as 100ms, 2s or PT1S");
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().map(Duration::from_millis).map_err(|_| bad());
    }
    if let Some(secs) = s.strip_suffix('s') {
        return secs.parse().map(Duration::from_secs).map_err(|_| bad());
    }
    Err(bad())
}

/// Settings of the embedded log.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Partitions per broker (fixed when a broker is first created).
    pub partitions: u32,
    /// Sync policy.
    pub fsync: FsyncPolicy,
    /// Segment size before rolling.
    pub segment_bytes: u64,
    /// Retention by age of a segment's newest event.
    pub retention_age: Option<Duration>,
    /// Retention by partition size. When a partition reaches it and its oldest
    /// segment is not yet delivered to every trigger, producers get 503 (unless
    /// `delete_undelivered`).
    pub retention_bytes: Option<u64>,
    /// Delete by age and size even what triggers have not received (Kafka-like).
    pub delete_undelivered: bool,
    /// Appends queued per partition before producers get "full" (HTTP 503).
    pub queue_depth: usize,
    /// Largest encoded event accepted.
    pub max_event_bytes: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            partitions: 1,
            fsync: FsyncPolicy::Always,
            segment_bytes: 128 << 20,
            retention_age: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_bytes: Some(4 << 30),
            delete_undelivered: false,
            queue_depth: 4096,
            max_event_bytes: 16 << 20,
        }
    }
}

/// The embedded log: one directory, any number of brokers.
pub struct EmbeddedLog {
    root: PathBuf,
    opts: EmbeddedOptions,
    /// Open logs by broker; `true` marks a dead-letter log.
    brokers: Mutex<HashMap<(BrokerId, LogKind), Arc<EmbeddedBroker>>>,
    _lock: File,
}

impl EmbeddedLog {
    /// Opens (creating) a data directory and takes its lock, so that two processes
    /// cannot write the same log.
    pub fn open(root: &Path, opts: EmbeddedOptions) -> Result<EmbeddedLog, ChannelError> {
        let io = |e: std::io::Error, what: &str| ChannelError::Unreachable {
            reason: format!("{what} {}: {e}", root.display()),
        };
        std::fs::create_dir_all(root.join("brokers"))
            .map_err(|e| io(e, "cannot create data directory"))?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("LOCK"))
            .map_err(|e| io(e, "cannot open lock file in"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(ChannelError::InUse {
                    path: root.to_path_buf(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io(e, "cannot lock data directory"))
            }
        }
        Ok(EmbeddedLog {
            root: root.to_path_buf(),
            opts,
            brokers: Mutex::new(HashMap::new()),
            _lock: lock,
        })
    }

    fn open_blocking(
        &self,
        broker: &BrokerId,
        kind: LogKind,
    ) -> Result<Arc<EmbeddedBroker>, ChannelError> {
        let mut brokers = self.brokers.lock().unwrap_or_else(|p| p.into_inner());
        let key = (broker.clone(), kind);
        if let Some(b) = brokers.get(&key) {
            return Ok(b.clone());
        }
        let mut dir = self
            .root
            .join("brokers")
            .join(&broker.namespace)
            .join(&broker.name);
        let mut opts = self.opts.clone();
        opts.partitions = kind.partitions(opts.partitions);
        if kind == LogKind::DeadLetters {
            dir = dir.join("dead-letters");
        }
        if kind.never_expires() {
            // `triggerfish dlq` bounds them.
            opts.retention_bytes = None;
            opts.retention_age = None;
        }
        let b = Arc::new(EmbeddedBroker::open(dir, broker, &opts)?);
        brokers.insert(key, b.clone());
        Ok(b)
    }
}

#[async_trait]
impl EventLog for EmbeddedLog {
    async fn open(
        &self,
        broker: &BrokerId,
        kind: LogKind,
    ) -> Result<Arc<dyn BrokerLog>, ChannelError> {
        // Recovery reads files; it runs once per broker at start-up.
        let b = self.open_blocking(broker, kind)?;
        Ok(b)
    }

    fn describe(&self) -> String {
        format!("embedded log at {}", self.root.display())
    }
}

/// A writer's answer to one append: the offset of its first event, or why it failed.
type Answer = oneshot::Receiver<Result<u64, AppendError>>;

struct Partition {
    tx: SyncSender<AppendRequest>,
    shared: Arc<PartitionShared>,
}

/// One broker's partitions and checkpoints.
pub struct EmbeddedBroker {
    id: BrokerId,
    dir: PathBuf,
    partitions: Vec<Partition>,
    next_partition: std::sync::atomic::AtomicU32,
    max_event_bytes: usize,
    /// The size limit of a partition (for the error naming it).
    retention_bytes: Option<u64>,
    /// The sync policy: checkpoints asked to be durable are synced unless `never`.
    fsync: FsyncPolicy,
    /// Checkpoints as last loaded or stored, and which hold retention back (shared
    /// with the partition writers).
    checkpoints: Arc<Checkpoints>,
    /// Serialises the read-merge-write of checkpoint files.
    store_lock: tokio::sync::Mutex<()>,
}

impl EmbeddedBroker {
    fn open(
        dir: PathBuf,
        id: &BrokerId,
        opts: &EmbeddedOptions,
    ) -> Result<EmbeddedBroker, ChannelError> {
        let io = |e: std::io::Error| ChannelError::Io {
            broker: id.clone(),
            source: e,
        };
        std::fs::create_dir_all(dir.join("checkpoints")).map_err(io)?;
        // An existing broker keeps the partition count it was created with.
        let mut count = 0u32;
        while dir.join(format!("p{count}")).is_dir() {
            count += 1;
        }
        if count == 0 {
            count = opts.partitions.max(1);
        } else if count != opts.partitions {
            tracing::info!(broker = %id, partitions = count, "broker keeps the partition count it was created with");
        }
        let holds = Arc::new(Checkpoints::default());
        let settings = WriterSettings {
            partition: 0,
            holds: holds.clone(),
            delete_undelivered: opts.delete_undelivered,
            fsync: opts.fsync,
            segment_bytes: opts.segment_bytes,
            retention_age: opts.retention_age,
            retention_bytes: opts.retention_bytes,
        };
        let mut partitions = Vec::with_capacity(count as usize);
        for p in 0..count {
            let pdir = dir.join(format!("p{p}"));
            std::fs::create_dir_all(&pdir).map_err(io)?;
            let open = file::disk();
            let (segments, file) = recover_partition(&pdir, id, p, &open).map_err(io)?;
            let end = segments.last().map_or(0, |s| s.end);
            let (committed, _) = watch::channel(end);
            let shared = Arc::new(PartitionShared {
                dir: pdir,
                segments: RwLock::new(segments),
                committed,
            });
            let (tx, rx) = sync_channel(opts.queue_depth.max(1));
            let thread_shared = shared.clone();
            let thread_settings = WriterSettings {
                partition: p as usize,
                ..settings.clone()
            };
            std::thread::Builder::new()
                .name(format!("tf-log-{}-{}-p{p}", id.namespace, id.name))
                .spawn(move || writer::run(thread_shared, thread_settings, open, file, rx))
                .map_err(io)?;
            partitions.push(Partition { tx, shared });
        }
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(EmbeddedBroker {
            id: id.clone(),
            dir,
            partitions,
            next_partition: std::sync::atomic::AtomicU32::new(0),
            max_event_bytes: opts.max_event_bytes,
            retention_bytes: opts.retention_bytes,
            fsync: opts.fsync,
            checkpoints: holds,
            store_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn checkpoint_path(&self, trigger: &str) -> PathBuf {
        self.dir.join("checkpoints").join(format!("{trigger}.json"))
    }

    fn io(&self, e: std::io::Error) -> ChannelError {
        ChannelError::Io {
            broker: self.id.clone(),
            source: e,
        }
    }

    /// An event as stored, within the size limit.
    fn encode(&self, e: &Event) -> Result<Bytes, ChannelError> {
        let payload = codec::to_bytes(e);
        if payload.len() > self.max_event_bytes {
            return Err(ChannelError::TooLarge {
                size: payload.len(),
                limit: self.max_event_bytes,
            });
        }
        Ok(payload)
    }

    /// Queues an append for partition `p`'s writer.
    fn send(&self, p: u32, payloads: Vec<Bytes>, own: bool) -> Result<Answer, ChannelError> {
        let (reply, rx) = oneshot::channel();
        match self.partitions[p as usize].tx.try_send(AppendRequest {
            payloads,
            own,
            reply,
        }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(ChannelError::Full {
                broker: self.id.clone(),
            }),
            Err(TrySendError::Disconnected(_)) => Err(self.writer_stopped()),
        }
    }

    /// Waits for a writer's answer: the append is durable, or it failed.
    async fn wait(&self, p: u32, rx: Answer) -> Result<(), ChannelError> {
        match rx.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(AppendError::Failed(reason))) => Err(ChannelError::Unavailable {
                broker: self.id.clone(),
                reason,
            }),
            Ok(Err(AppendError::Held(floor))) => Err(ChannelError::RetentionFull {
                broker: self.id.clone(),
                partition: p,
                trigger: floor.holder,
                checkpoint: floor.offset,
                limit: self.retention_bytes.unwrap_or(0),
            }),
            Err(_) => Err(self.writer_stopped()),
        }
    }

    fn writer_stopped(&self) -> ChannelError {
        ChannelError::Unavailable {
            broker: self.id.clone(),
            reason: "partition writer stopped".into(),
        }
    }

    fn partition(&self, p: u32) -> Result<&Partition, ChannelError> {
        self.partitions
            .get(p as usize)
            .ok_or_else(|| ChannelError::NoPartition {
                broker: self.id.clone(),
                partition: p,
            })
    }
}

fn recover_partition(
    dir: &Path,
    id: &BrokerId,
    p: u32,
    open: &file::Opener,
) -> std::io::Result<(Vec<segment::Segment>, Arc<dyn file::SegmentFile>)> {
    let bases = segment::list(dir)?;
    let mut segments = Vec::with_capacity(bases.len().max(1));
    let last = bases.len().saturating_sub(1);
    for (i, base) in bases.iter().enumerate() {
        let (seg, cut) = segment::recover(dir, *base, i == last)?;
        // A sealed segment is walked by its headers; one whose walk stops before the
        // next segment begins is damaged. Its unreadable records are reported (and
        // dead-lettered once) when read, and reading goes on at the next segment.
        if let Some(next) = bases.get(i + 1).filter(|&&n| seg.end < n) {
            tracing::error!(broker = %id, partition = p, segment = %seg.path.display(), from = seg.end, to = next,
                "sealed segment is damaged: its records from this offset on cannot be read");
        }
        if cut > 0 {
            tracing::warn!(broker = %id, partition = p, segment = %seg.path.display(), bytes = cut,
                "truncated an incomplete write at the end of the log (never acknowledged)");
        }
        segments.push(seg);
    }
    if segments.is_empty() {
        segments.push(segment::Segment::new(dir, 0));
        segment::sync_dir(dir)?;
    }
    let active = segments
        .last()
        .ok_or_else(|| std::io::Error::other("no active segment"))?;
    let file = open(active)?;
    Ok((segments, file))
}

impl EmbeddedBroker {
    /// Appends producer events, or Triggerfish's own (`own`, let through when a
    /// partition is held at its size limit).
    async fn append_to(&self, events: &[Event], own: bool) -> Result<(), ChannelError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let n = self.partitions.len() as u32;
        // Events without a partition key: one partition per request, round-robin, so a
        // batch lands in one partition and is written in one group.
        let fallback = self
            .next_partition
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p0 = partition_for(first, n, fallback);
        if n == 1 || events.iter().all(|e| partition_for(e, n, fallback) == p0) {
            // The usual case: one request to one partition's writer.
            let mut payloads = Vec::with_capacity(events.len());
            for e in events {
                payloads.push(self.encode(e)?);
            }
            return self.wait(p0, self.send(p0, payloads, own)?).await;
        }
        let mut per_partition: Vec<Vec<Bytes>> = vec![Vec::new(); n as usize];
        for e in events {
            per_partition[partition_for(e, n, fallback) as usize].push(self.encode(e)?);
        }
        let mut waits = Vec::with_capacity(per_partition.len());
        for (p, payloads) in per_partition.into_iter().enumerate() {
            if !payloads.is_empty() {
                waits.push((p as u32, self.send(p as u32, payloads, own)?));
            }
        }
        for (p, rx) in waits {
            self.wait(p, rx).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl BrokerLog for EmbeddedBroker {
    fn broker(&self) -> &BrokerId {
        &self.id
    }

    fn partitions(&self) -> u32 {
        self.partitions.len() as u32
    }

    async fn append(&self, events: &[Event]) -> Result<(), ChannelError> {
        self.append_to(events, false).await
    }

    async fn append_own(&self, events: &[Event]) -> Result<(), ChannelError> {
        self.append_to(events, true).await
    }

    async fn retain_for(&self, checkpoints: &[String]) -> Result<(), ChannelError> {
        {
            let _serialised = self.store_lock.lock().await;
            for name in checkpoints {
                self.cached_checkpoint(name)?;
            }
        }
        self.checkpoints.set_live(checkpoints.to_vec());
        tracing::debug!(broker = %self.id, checkpoints = checkpoints.len(), "retention keeps what these checkpoints have not passed");
        Ok(())
    }

    async fn end_offset(&self, partition: u32) -> Result<Offset, ChannelError> {
        Ok(*self.partition(partition)?.shared.committed.borrow())
    }

    async fn reader(
        &self,
        partition: u32,
        start: StartAt,
    ) -> Result<Box<dyn LogReader>, ChannelError> {
        let p = self.partition(partition)?;
        let earliest = p.shared.earliest();
        let (next, skipped) = match start {
            // Never moved up silently: the reader reports what retention removed.
            StartAt::Offset(o) if o < earliest => (earliest, Some(Skipped::range(o, earliest))),
            StartAt::Offset(o) => (o, None),
            StartAt::Earliest => (earliest, None),
            StartAt::End => (*p.shared.committed.borrow(), None),
        };
        Ok(Box::new(EmbeddedReader::new(
            p.shared.clone(),
            self.id.clone(),
            partition,
            next,
            skipped,
        )))
    }

    async fn load_checkpoint(&self, trigger: &str) -> Result<Vec<Option<Offset>>, ChannelError> {
        let _serialised = self.store_lock.lock().await;
        self.cached_checkpoint(trigger)
    }

    async fn store_checkpoint(
        &self,
        trigger: &str,
        updates: &[CheckpointUpdate],
        durable: bool,
    ) -> Result<(), ChannelError> {
        let _serialised = self.store_lock.lock().await;
        let mut offsets = self.cached_checkpoint(trigger)?;
        // One process owns every partition (`AllPartitions`): no epoch to check.
        for u in updates {
            self.partition(u.partition)?;
            offsets[u.partition as usize] = Some(u.offset);
        }
        let path = self.checkpoint_path(trigger);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec(&CheckpointFile {
            offsets: offsets.clone(),
        })
        .map_err(|e| ChannelError::Internal(e.to_string()))?;
        let dir = self.dir.join("checkpoints");
        // With `--fsync never` nothing is synced, checkpoints neither (recovery clamps
        // a checkpoint that got to disk ahead of the log, see `read_checkpoint`).
        let durable = durable && self.fsync != FsyncPolicy::Never;
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = File::create(&tmp)?;
            f.write_all(&body)?;
            if durable {
                f.sync_all()?;
            }
            std::fs::rename(&tmp, &path)?;
            if durable {
                segment::sync_dir(&dir)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ChannelError::Internal(format!("checkpoint task failed: {e}")))?;
        written.map_err(|e| self.io(e))?;
        // Only now may retention act on it: the file holds it.
        self.checkpoints.set(trigger, offsets);
        Ok(())
    }

    /// Writes every new trigger's file, then syncs the file system once (`syncfs`):
    /// ten thousand start checkpoints took 6.7 s synced one by one (issue 15).
    async fn init_checkpoints(
        &self,
        triggers: &[(String, Vec<(u32, Offset)>)],
    ) -> Result<(), ChannelError> {
        let _serialised = self.store_lock.lock().await;
        let mut writes: Vec<(String, Vec<Option<Offset>>, PathBuf, Vec<u8>)> = Vec::new();
        for (name, initial) in triggers {
            let mut offsets = self.cached_checkpoint(name)?;
            let mut missing = false;
            for &(p, o) in initial {
                self.partition(p)?;
                let slot = &mut offsets[p as usize];
                if slot.is_none() {
                    *slot = Some(o);
                    missing = true;
                }
            }
            if missing {
                let body = serde_json::to_vec(&CheckpointFile {
                    offsets: offsets.clone(),
                })
                .map_err(|e| ChannelError::Internal(e.to_string()))?;
                writes.push((name.clone(), offsets, self.checkpoint_path(name), body));
            }
        }
        if writes.is_empty() {
            return Ok(());
        }
        let dir = self.dir.join("checkpoints");
        let sync = self.fsync != FsyncPolicy::Never;
        let files: Vec<(PathBuf, Vec<u8>)> = writes
            .iter_mut()
            .map(|(_, _, path, body)| (std::mem::take(path), std::mem::take(body)))
            .collect();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            for (path, body) in &files {
                let tmp = path.with_extension("json.tmp");
                let mut f = File::create(&tmp)?;
                f.write_all(body)?;
                drop(f);
                std::fs::rename(&tmp, path)?;
            }
            if sync {
                // Every file's data and every rename, in one call.
                let d = File::open(&dir)?;
                rustix::fs::syncfs(&d)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| ChannelError::Internal(format!("checkpoint task failed: {e}")))?;
        written.map_err(|e| self.io(e))?;
        for (name, offsets, _, _) in writes {
            self.checkpoints.set(&name, offsets);
        }
        Ok(())
    }

    async fn delete_checkpoint(&self, trigger: &str) -> Result<(), ChannelError> {
        let _serialised = self.store_lock.lock().await;
        let path = self.checkpoint_path(trigger);
        let dir = self.dir.join("checkpoints");
        let removed = tokio::task::spawn_blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => segment::sync_dir(&dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .await
        .map_err(|e| ChannelError::Internal(format!("checkpoint task failed: {e}")))?;
        removed.map_err(|e| self.io(e))?;
        self.checkpoints.remove(trigger);
        Ok(())
    }
}

impl EmbeddedBroker {
    /// A trigger's checkpoints, read from its file on first use. Callers hold
    /// `store_lock`.
    fn cached_checkpoint(&self, trigger: &str) -> Result<Vec<Option<Offset>>, ChannelError> {
        if let Some(offsets) = self.checkpoints.get(trigger) {
            return Ok(offsets);
        }
        let offsets = self.read_checkpoint(trigger)?;
        self.checkpoints.set(trigger, offsets.clone());
        Ok(offsets)
    }

    /// A checkpoint can only be ahead of the log's end after a power loss with
    /// `--fsync interval` or `never`: the checkpoint file reached the disk, the log's
    /// tail did not. Left as it is, offsets between the two would be given to new
    /// events and skipped for this trigger; clamped, they are delivered. Logged at
    /// ERROR: the events between were acknowledged and are gone.
    fn clamped(&self, trigger: &str, mut offsets: Vec<Option<Offset>>) -> Vec<Option<Offset>> {
        for (p, slot) in offsets.iter_mut().enumerate() {
            let Some(part) = self.partitions.get(p) else {
                continue;
            };
            let end = *part.shared.committed.borrow();
            if let Some(o) = slot.filter(|&o| o > end) {
                tracing::error!(broker = %self.id, trigger, partition = p, checkpoint = o, log_end = end,
                    "checkpoint is past the end of the recovered log (events acknowledged before a power loss were not on disk); moved back to the log end");
                *slot = Some(end);
            }
        }
        offsets
    }

    fn read_checkpoint(&self, trigger: &str) -> Result<Vec<Option<Offset>>, ChannelError> {
        let n = self.partitions.len();
        let path = self.checkpoint_path(trigger);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![None; n]),
            Err(e) => return Err(self.io(e)),
        };
        match serde_json::from_slice::<CheckpointFile>(&text) {
            Ok(c) if c.offsets.len() == n => Ok(self.clamped(trigger, c.offsets)),
            _ => {
                // Never guess forward: replaying from the start duplicates, skipping loses.
                tracing::error!(broker = %self.id, trigger, path = %path.display(),
                    "checkpoint file is unreadable; the trigger restarts from the earliest retained event");
                Ok(vec![Some(0); n])
            }
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CheckpointFile {
    /// Next offset per partition; `null` where none is stored yet.
    offsets: Vec<Option<Offset>>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::channel::EventLog;

    async fn broker(dir: &Path) -> (EmbeddedLog, Arc<dyn BrokerLog>) {
        let opts = EmbeddedOptions {
            partitions: 2,
            ..EmbeddedOptions::default()
        };
        let log = EmbeddedLog::open(dir, opts).expect("open");
        let b = log
            .open(&BrokerId::new("default", "b"), LogKind::Events)
            .await
            .expect("broker");
        (log, b)
    }

    #[tokio::test]
    async fn a_batch_of_starts_is_stored_durably_and_never_replaces_a_stored_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (_log, b) = broker(dir.path()).await;
            // Ten events on each partition: checkpoints past the end would be
            // clamped back to it on reopening.
            for i in 0..20 {
                let mut e = crate::event::Event::new();
                for (k, v) in [("specversion", "1.0"), ("source", "/t"), ("type", "t")] {
                    e.set_str(k, v);
                }
                e.set_str("id", format!("e{i}"));
                b.append(std::slice::from_ref(&e)).await.expect("append");
            }
            b.store_checkpoint("old", &[CheckpointUpdate::unleased(0, 7)], true)
                .await
                .expect("store");
            let batch: Vec<(String, Vec<(u32, Offset)>)> = ["old", "new1", "new2"]
                .iter()
                .map(|n| (n.to_string(), vec![(0, 3), (1, 4)]))
                .collect();
            b.init_checkpoints(&batch).await.expect("init");
        }
        // Reopened (as after a crash): what the batch stored is there.
        let (_log, b) = broker(dir.path()).await;
        assert_eq!(b.load_checkpoint("old").await.unwrap(), [Some(7), Some(4)]);
        assert_eq!(b.load_checkpoint("new1").await.unwrap(), [Some(3), Some(4)]);
        assert_eq!(b.load_checkpoint("new2").await.unwrap(), [Some(3), Some(4)]);
        b.delete_checkpoint("new1").await.expect("delete");
        b.delete_checkpoint("never-was")
            .await
            .expect("deleting nothing");
        assert_eq!(b.load_checkpoint("new1").await.unwrap(), [None, None]);
        drop(b);
        drop(_log);
        let (_log, b) = broker(dir.path()).await;
        assert_eq!(b.load_checkpoint("new1").await.unwrap(), [None, None]);
        assert_eq!(b.load_checkpoint("new2").await.unwrap(), [Some(3), Some(4)]);
    }

    #[test]
    fn fsync_policies_parse() {
        assert_eq!("always".parse(), Ok(FsyncPolicy::Always));
        assert_eq!("never".parse(), Ok(FsyncPolicy::Never));
        assert_eq!(
            "interval:100ms".parse(),
            Ok(FsyncPolicy::Interval(Duration::from_millis(100)))
        );
        assert_eq!(
            "interval:PT1S".parse(),
            Ok(FsyncPolicy::Interval(Duration::from_secs(1)))
        );
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
        assert!("interval:soon".parse::<FsyncPolicy>().is_err());
    }
}
