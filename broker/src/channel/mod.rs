//! Channels: where a broker's events are stored durably between the ingress and the
//! dispatcher.
//!
//! One boundary, [`EventLog`], opened per broker into a [`BrokerLog`]: append a batch
//! (returning only once it is durable), read a partition from an offset with a
//! [`LogReader`], and keep checkpoints per trigger and partition (so that dispatcher
//! replicas owning different partitions never overwrite each other's). Every backend
//! runs the same conformance suite (`tests/channel_conformance/`).
//!
//! - [`embedded`]: the default, a local partitioned append-only log with group commit.
//! - `nats` (cargo feature `nats`, on by default): NATS JetStream, shared by any number
//!   of ingress and dispatcher processes.
//! - `kafka` (cargo feature `kafka`, on by default): Kafka topics laid out per the
//!   CloudEvents Kafka binding, shared with other Kafka producers and consumers.
//! - [`lease`]: which dispatcher process reads which partition.
//!
//! [`connect`] is the one place a channel is chosen, by the URL scheme of the
//! `--storage` value ([`Scheme::of`]); a scheme whose backend the build leaves out is
//! refused naming the cargo feature, and without the features none of the NATS or
//! Kafka code (nor rdkafka, librdkafka or async-nats) is compiled.

#[cfg(any(feature = "nats", feature = "kafka"))]
pub(crate) mod checkpoint;
mod select;
pub use select::{connect, ChannelOptions, Scheme, KAFKA_CHECKPOINT_TOPIC, KAFKA_TOPIC_TEMPLATE};
pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod lease;
#[cfg(feature = "nats")]
pub mod nats;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::BrokerId;
use crate::event::Event;

/// A position within one partition. Offsets increase with every record appended to
/// the partition; whether they increase by exactly one is [`BrokerLog::offsets`].
pub type Offset = u64;

/// How a log numbers the records of a partition ([`BrokerLog::offsets`]), checked for
/// every backend by the conformance suite (`tests/channel_conformance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offsets {
    /// Consecutive: the records of a partition are at `first, first + 1, …,
    /// end_offset - 1`, so `end_offset - checkpoint` is exactly the records not yet
    /// passed. The embedded log and Kafka, and NATS with one partition (every
    /// dead-letter log).
    Dense,
    /// Increasing with gaps: the partitions share one sequence (NATS JetStream: one
    /// stream per broker, offsets are stream sequences - 1), so `end_offset -
    /// checkpoint` is an upper bound of the records not yet passed.
    Sparse,
}

/// The epoch of a partition lease ([`lease::Lease`]): each new owner of a partition
/// gets a greater one than every owner before it, and writes its checkpoints with it,
/// so that a stale owner's late write can never overwrite a newer owner's.
pub type Epoch = u64;

/// The epoch of writes made outside any partition lease (start points, the redrive
/// cursor, logs only one process uses). Every lease epoch is greater.
pub const NO_EPOCH: Epoch = 0;

/// A checkpoint write for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CheckpointUpdate {
    /// The partition.
    pub partition: u32,
    /// The next offset to process.
    pub offset: Offset,
    /// The epoch of the lease it is written under ([`NO_EPOCH`] outside any).
    pub epoch: Epoch,
}

impl CheckpointUpdate {
    /// A write under the lease of `epoch`.
    pub fn new(partition: u32, offset: Offset, epoch: Epoch) -> CheckpointUpdate {
        CheckpointUpdate {
            partition,
            offset,
            epoch,
        }
    }

    /// A write outside any lease ([`NO_EPOCH`]).
    pub fn unleased(partition: u32, offset: Offset) -> CheckpointUpdate {
        CheckpointUpdate::new(partition, offset, NO_EPOCH)
    }
}

/// Where a new reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// At this offset (or the earliest retained one, if older).
    Offset(Offset),
    /// At the earliest retained event.
    Earliest,
    /// After the last event appended so far.
    End,
}

/// An event read back with its position. A record that cannot be decoded is returned
/// as [`Malformed`] rather than skipped, so the dispatcher can dead-letter it.
#[derive(Debug, Clone)]
pub struct Record {
    /// Offset within the partition.
    pub offset: Offset,
    /// The event, or why it could not be decoded.
    pub event: Result<Event, Malformed>,
}

/// A stored record that is not a valid CloudEvent: written by another producer (a
/// shared Kafka topic or NATS stream), or damaged on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// Why, naming where it is (topic/stream, partition, offset).
    pub reason: String,
    /// The record's value / payload as stored, when there is one.
    pub data: Option<bytes::Bytes>,
}

impl Malformed {
    /// A malformed record without its bytes.
    pub fn new(reason: impl Into<String>) -> Malformed {
        Malformed {
            reason: reason.into(),
            data: None,
        }
    }
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Channel failures.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The channel is at capacity; the caller should retry later.
    #[error("channel for broker {broker} is full; retry later")]
    Full {
        /// The broker.
        broker: BrokerId,
    },
    /// The partition reached its size limit (`--retention-bytes`) and its oldest
    /// events are not yet delivered to `trigger`: retention keeps them, so new events
    /// wait (backpressure; the ingress answers 503 with `Retry-After`).
    #[error("partition {partition} of broker {broker} is at --retention-bytes={limit}: trigger {trigger} has not yet received its events from offset {checkpoint} on; retry later")]
    RetentionFull {
        /// The broker.
        broker: BrokerId,
        /// The partition.
        partition: u32,
        /// The trigger (or internal cursor) whose checkpoint holds the oldest segment.
        trigger: String,
        /// That checkpoint.
        checkpoint: Offset,
        /// The limit.
        limit: u64,
    },
    /// The channel is shutting down or its writer stopped.
    #[error("channel for broker {broker} is not available: {reason}")]
    Unavailable {
        /// The broker.
        broker: BrokerId,
        /// Why.
        reason: String,
    },
    /// A checkpoint write under a lease epoch older than the one the partition's
    /// checkpoints were last written under: another process owns the partition now,
    /// and its checkpoint is kept.
    #[error("checkpoint of trigger {trigger}, partition {partition} of broker {broker} not stored: the partition is owned under lease epoch {current} now, this write carries {epoch} (a previous owner's)")]
    Fenced {
        /// The broker.
        broker: BrokerId,
        /// The trigger (or internal cursor).
        trigger: String,
        /// The partition.
        partition: u32,
        /// The epoch the write carried.
        epoch: Epoch,
        /// The epoch the partition's checkpoints are owned under.
        current: Epoch,
    },
    /// An event is larger than the channel accepts.
    #[error("event of {size} bytes exceeds the channel limit of {limit} bytes")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// Storage I/O failed.
    #[error("storage error for broker {broker}: {source}")]
    Io {
        /// The broker.
        broker: BrokerId,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A name, setting or layout the channel cannot work with (a broker name too
    /// long for a stream, two brokers on one topic, a checkpoint topic that is not
    /// compacted, invalid options): fix the config or the flags; retrying cannot help.
    #[error("{reason}")]
    Invalid {
        /// What and why, naming the setting.
        reason: String,
    },
    /// The channel's servers or shared storage (a NATS bucket, the Kafka checkpoint
    /// topic, the embedded log's directory) cannot be reached or set up now.
    #[error("{reason}")]
    Unreachable {
        /// What failed.
        reason: String,
    },
    /// The broker has no such partition.
    #[error("broker {broker} has no partition {partition}")]
    NoPartition {
        /// The broker.
        broker: BrokerId,
        /// The partition asked for.
        partition: u32,
    },
    /// An event the channel's binding cannot encode.
    #[error("event {id}: {reason}")]
    Encode {
        /// The event's id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The embedded log's data directory is in use by another process.
    #[error("data directory {} is in use by another triggerfish process", path.display())]
    InUse {
        /// The directory.
        path: std::path::PathBuf,
    },
    /// A task of the channel died (a bug): where.
    #[error("{0}")]
    Internal(String),
}

impl ChannelError {
    /// Whether retrying later may succeed: the channel is full, unavailable or
    /// unreachable, or its I/O failed. The rest needs another input, config or build.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ChannelError::Full { .. }
                | ChannelError::RetentionFull { .. }
                | ChannelError::Unavailable { .. }
                | ChannelError::Unreachable { .. }
                | ChannelError::Io { .. }
        )
    }
}

/// Which of a broker's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogKind {
    /// The events producers send, replies and redriven events.
    Events,
    /// The broker's own dead-letter log.
    DeadLetters,
}

impl LogKind {
    /// Its name in storage layouts (directory, stream, key and topic names).
    pub fn as_str(self) -> &'static str {
        match self {
            LogKind::Events => "events",
            LogKind::DeadLetters => "deadletters",
        }
    }

    /// The partitions a new log of this kind gets when brokers are configured with
    /// `configured`: a dead-letter log always has one (redrive reads it in order).
    pub fn partitions(self, configured: u32) -> u32 {
        match self {
            LogKind::Events => configured,
            LogKind::DeadLetters => 1,
        }
    }

    /// Whether the log waits for an operator: dead letters are kept until redriven,
    /// never expired by age or size (ARCHITECTURE.md, contract 6).
    pub fn never_expires(self) -> bool {
        self == LogKind::DeadLetters
    }
}

/// Opens per-broker logs. Implementations are cheap to share (`Arc`).
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Opens (creating if needed) one of a broker's logs: its events, or its own
    /// dead-letter log (events whose delivery failed for good and could not go to a
    /// dead-letter sink: one partition, never expired; each entry carries the
    /// `knativeerror*` extensions and `triggerfishtrigger`).
    async fn open(
        &self,
        broker: &BrokerId,
        kind: LogKind,
    ) -> Result<Arc<dyn BrokerLog>, ChannelError>;

    /// A short human description ("embedded log at /var/lib/triggerfish").
    fn describe(&self) -> String;
}

/// The log of one broker.
#[async_trait]
pub trait BrokerLog: Send + Sync + 'static {
    /// The broker.
    fn broker(&self) -> &BrokerId;

    /// Number of partitions (fixed for the life of the log).
    fn partitions(&self) -> u32;

    /// The partition an event is appended to: by `partitionkey` when it has one (the
    /// same key always lands in the same partition), else `fallback` modulo the count.
    fn partition_of(&self, event: &Event, fallback: u32) -> u32 {
        partition_for(event, self.partitions(), fallback)
    }

    /// The partition leases of dispatcher process `owner` (a unique name per process).
    /// By default a process owns every partition, which is right for logs that only
    /// one process can open.
    /// `hand_over` bounds how long a revoked partition may take to be released.
    fn leases(&self, owner: &str, hand_over: lease::HandOver) -> Arc<dyn lease::PartitionLeases> {
        let _ = (owner, hand_over);
        Arc::new(lease::AllPartitions::new(self.partitions()))
    }

    /// Appends events; returns only when every one is durable per the channel's
    /// policy. An error means some may or may not be stored (the producer retries;
    /// consumers de-duplicate on `source` + `id`).
    async fn append(&self, events: &[Event]) -> Result<(), ChannelError>;

    /// Appends events that Triggerfish itself produces (replies, redrives,
    /// dead-letter and malformed-record entries) like [`BrokerLog::append`], but never
    /// subject to a channel's de-duplication of producer retries (NATS JetStream's
    /// `Nats-Msg-Id` window): such an event may rightly carry the `source` and `id` of
    /// one stored a moment ago (a transformer's reply, a redriven event), and would be
    /// acknowledged and never stored.
    async fn append_own(&self, events: &[Event]) -> Result<(), ChannelError> {
        self.append(events).await
    }

    /// How this log numbers the records of a partition. Default: [`Offsets::Dense`].
    fn offsets(&self) -> Offsets {
        Offsets::Dense
    }

    /// How many producer appends the channel stored once as a retry of an event
    /// stored moments before (NATS JetStream's `Nats-Msg-Id` window) since the last
    /// call; the ingress adds them to `triggerfish_ingress_events_deduplicated`.
    fn take_deduplicated(&self) -> u64 {
        0
    }

    /// Names the checkpoints (triggers' and the dispatcher's own cursors) that hold
    /// back a retention this log applies itself: from now on it deletes an event
    /// only once every one of them has passed it, and refuses producer appends with
    /// [`ChannelError::RetentionFull`] when its size limit is reached before they do.
    /// The dispatcher calls it when it starts, with every trigger of the broker (live
    /// config reload, issue 15, will have to call it on each change). Before
    /// any call the embedded log deletes nothing that may be undelivered. Logs whose
    /// engine owns retention (NATS, Kafka) ignore it; there a trigger that falls
    /// behind the log start is reported by [`LogReader::take_skipped`].
    async fn retain_for(&self, checkpoints: &[String]) -> Result<(), ChannelError> {
        let _ = checkpoints;
        Ok(())
    }

    /// The offset the next event appended to `partition` will get.
    async fn end_offset(&self, partition: u32) -> Result<Offset, ChannelError>;

    /// The offset just past the last record of `partition`: equal to
    /// [`BrokerLog::end_offset`] where offsets are dense; where they have gaps (NATS
    /// with several partitions sharing one sequence) it tells a trigger that has
    /// passed every record of its partition from one that has not (lag, status).
    async fn partition_end(&self, partition: u32) -> Result<Offset, ChannelError> {
        self.end_offset(partition).await
    }

    /// A reader over one partition.
    async fn reader(
        &self,
        partition: u32,
        start: StartAt,
    ) -> Result<Box<dyn LogReader>, ChannelError>;

    /// The stored checkpoint of a trigger: for each partition (always
    /// [`BrokerLog::partitions`] entries), the next offset to process, or `None` where
    /// none is stored yet.
    async fn load_checkpoint(&self, trigger: &str) -> Result<Vec<Option<Offset>>, ChannelError>;

    /// Stores the checkpoints of some partitions of a trigger, leaving the other
    /// partitions' as they are: each dispatcher replica writes only the partitions it
    /// owns. `durable` asks for them to survive a crash; otherwise a crash may lose
    /// the latest store, which only causes redelivery.
    ///
    /// Fencing: each update carries the epoch of the lease it is written under. On a
    /// log shared by processes, an update whose epoch is lower than the epoch of the
    /// last write to that checkpoint fails with [`ChannelError::Fenced`] and changes
    /// nothing (the other updates of the call may be stored): a previous owner that
    /// has not noticed yet can never overwrite the new owner's progress. Logs that
    /// only one process opens (the embedded log) have no previous owner to fence.
    async fn store_checkpoint(
        &self,
        trigger: &str,
        updates: &[CheckpointUpdate],
        durable: bool,
    ) -> Result<(), ChannelError>;

    /// Stores the starting checkpoints of a new trigger's partitions, durably, except
    /// where one exists by now: another process may have started the trigger and made
    /// progress since [`BrokerLog::load_checkpoint`] found none, and that must not be
    /// overwritten. The default loads, then stores the missing ones durably: right
    /// for logs that only one process uses (shared backends make it atomic).
    async fn init_checkpoint(
        &self,
        trigger: &str,
        initial: &[(u32, Offset)],
    ) -> Result<(), ChannelError> {
        let stored = self.load_checkpoint(trigger).await?;
        let missing: Vec<CheckpointUpdate> = initial
            .iter()
            .filter(|&&(p, _)| stored.get(p as usize).copied().flatten().is_none())
            .map(|&(p, o)| CheckpointUpdate::unleased(p, o))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.store_checkpoint(trigger, &missing, true).await
    }

    /// [`BrokerLog::init_checkpoint`] for many triggers at once (a reload that adds
    /// ten thousand triggers): the same guarantee for each, returning once all are
    /// stored. The default runs [`INIT_CONCURRENCY`] of them at a time (a round trip
    /// each on a shared backend); the embedded log writes every file and syncs once.
    async fn init_checkpoints(
        &self,
        triggers: &[(String, Vec<(u32, Offset)>)],
    ) -> Result<(), ChannelError> {
        for chunk in triggers.chunks(INIT_CONCURRENCY) {
            let mut inits = futures_util::stream::FuturesUnordered::new();
            for (name, initial) in chunk {
                inits.push(self.init_checkpoint(name, initial));
            }
            while let Some(r) = futures_util::StreamExt::next(&mut inits).await {
                r?;
            }
        }
        Ok(())
    }

    /// Deletes a trigger's stored checkpoint (every partition's), once the trigger
    /// was removed from the config longer than the grace period ago: re-added later,
    /// it starts afresh at the end of the log. Deleting one that does not exist is
    /// not an error. The default keeps it (the Kafka checkpoint topic has no
    /// deletion yet: there a trigger re-added after its grace period resumes where
    /// it stopped).
    async fn delete_checkpoint(&self, trigger: &str) -> Result<(), ChannelError> {
        let _ = trigger;
        Ok(())
    }
}

/// Start checkpoints [`BrokerLog::init_checkpoints`] stores at once by default.
pub const INIT_CONCURRENCY: usize = 64;

/// Reads one partition in offset order.
#[async_trait]
pub trait LogReader: Send + 'static {
    /// Waits until at least one record is available, then returns up to `max`.
    /// Cancel-safe: dropping the future loses no records.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, ChannelError>;

    /// Returns up to `max` records that are available now, without waiting.
    async fn try_batch(&mut self, max: usize) -> Result<Vec<Record>, ChannelError>;

    /// The offset of the next record this reader will return.
    fn position(&self) -> Offset;

    /// Offsets this reader passed over because the log no longer held them when it
    /// got there (deleted by retention before they were read), since the last call.
    /// Never silent: the dispatcher counts them for the trigger it reads for
    /// (`triggerfish_dispatcher_events_skipped_total`) and logs them at ERROR.
    ///
    /// On the embedded log and Kafka every offset is one record of this partition;
    /// on NATS offsets are stream sequences shared by all partitions, so the range is
    /// an upper bound of this partition's records.
    fn take_skipped(&mut self) -> Option<Skipped> {
        None
    }
}

/// Offsets a reader passed over because retention had deleted them: one range, or
/// several reported together (then `from`..`to` spans them and `count` is their sum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// First offset not read.
    pub from: Offset,
    /// The offset reading went on at (after the last range).
    pub to: Offset,
    /// Offsets passed over.
    pub count: u64,
}

impl Skipped {
    /// The range `[from, to)`.
    pub fn range(from: Offset, to: Offset) -> Skipped {
        Skipped {
            from,
            to,
            count: to.saturating_sub(from),
        }
    }

    /// Adds a later range to what was collected so far.
    pub fn add(acc: Option<Skipped>, more: Skipped) -> Skipped {
        match acc {
            Some(a) => Skipped {
                from: a.from.min(more.from),
                to: a.to.max(more.to),
                count: a.count + more.count,
            },
            None => more,
        }
    }
}

/// Jumps a reader of a remote log saw in its offsets, kept until checked against
/// the log's start: a jump starting below the start is what retention deleted
/// before the reader got there; any other is a normal hole (another partition's
/// sequence on NATS, a transaction marker on Kafka). The check costs the caller a
/// request, so it runs at most every `every` (or when many jumps wait).
#[cfg(any(feature = "nats", feature = "kafka"))]
pub(crate) struct Gaps {
    pending: Vec<(Offset, Offset)>,
    checked: Option<std::time::Instant>,
    every: std::time::Duration,
    skipped: Option<Skipped>,
}

#[cfg(any(feature = "nats", feature = "kafka"))]
impl Gaps {
    /// Most jumps kept before a check is due regardless of `every`.
    const MAX_PENDING: usize = 256;

    pub(crate) fn new(every: std::time::Duration) -> Gaps {
        Gaps {
            pending: Vec::new(),
            checked: None,
            every,
            skipped: None,
        }
    }

    /// The reader expected offset `from` and got `to` next.
    pub(crate) fn saw(&mut self, from: Offset, to: Offset) {
        if to > from {
            self.pending.push((from, to));
        }
    }

    /// Whether the caller should fetch the log start and call [`Gaps::resolve`].
    pub(crate) fn due(&self) -> bool {
        !self.pending.is_empty()
            && (self.pending.len() >= Self::MAX_PENDING
                || self.checked.is_none_or(|t| t.elapsed() >= self.every))
    }

    /// Every jump seen so far against `earliest`, the first offset the log holds now
    /// (it only grows, so a jump starting at or above it was never retention's).
    pub(crate) fn resolve(&mut self, earliest: Offset) {
        for (from, to) in self.pending.drain(..) {
            if from < earliest {
                self.skipped = Some(Skipped::add(
                    self.skipped,
                    Skipped::range(from, to.min(earliest)),
                ));
            }
        }
        self.checked = Some(std::time::Instant::now());
    }

    pub(crate) fn take(&mut self) -> Option<Skipped> {
        self.skipped.take()
    }
}

/// Picks a partition for an event: by `partitionkey` hash when present (so one key
/// always lands in one partition and keeps its order), else `fallback`.
pub fn partition_for(event: &Event, partitions: u32, fallback: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    let mut buf = String::new();
    match event.partition_key(&mut buf) {
        Some(key) => (fnv1a(key.as_bytes()) % u64::from(partitions)) as u32,
        None => fallback % partitions,
    }
}

/// FNV-1a, a stable hash (unlike `DefaultHasher`, whose output may change between
/// Rust releases, which would move keys between partitions after an upgrade).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(any(feature = "nats", feature = "kafka"))]
    fn gaps_below_the_log_start_are_skips() {
        let mut g = Gaps::new(std::time::Duration::from_secs(3600));
        assert!(!g.due());
        g.saw(5, 5); // no jump
        assert!(!g.due());
        g.saw(10, 40); // retention: the log now starts at 30
        g.saw(45, 46); // another partition's offset, above the start
        assert!(g.due(), "first check is due at once");
        g.resolve(30);
        assert_eq!(
            g.take(),
            Some(Skipped {
                from: 10,
                to: 30,
                count: 20
            })
        );
        assert_eq!(g.take(), None);
        g.saw(50, 60);
        assert!(!g.due(), "checked a moment ago");
        for i in 0..Gaps::MAX_PENDING as u64 {
            g.saw(100 + 2 * i, 101 + 2 * i);
        }
        assert!(g.due(), "too many waiting");
        g.resolve(55);
        assert_eq!(g.take().map(|s| (s.from, s.to, s.count)), Some((50, 55, 5)));
    }

    #[test]
    fn partition_by_key_is_stable() {
        let mut e = Event::new();
        e.set_str("partitionkey", "customer-7");
        let p = partition_for(&e, 8, 0);
        assert_eq!(p, partition_for(&e, 8, 5));
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let e = Event::new();
        assert_eq!(partition_for(&e, 4, 6), 2);
        assert_eq!(partition_for(&e, 1, 6), 0);
    }
}
