//! Trigger checkpoints in one compacted topic, `triggerfish-checkpoints` by default
//! (`--kafka-checkpoint-topic`), shared by every broker.
//!
//! One record per (log, trigger, partition): key `<topic>/<trigger>/<partition>`, value
//! the next offset to process in decimal. Compaction keeps the latest per key, so the
//! topic stays as small as the set of checkpoints. A new trigger's starting point is
//! an `init:<offset>` record, which counts only for a key that has no value yet when
//! the tail reaches it: the first in topic order wins, whichever process wrote it, and
//! an init never replaces progress. (Compaction could keep an init written after a
//! store of the same key, which needs a load that missed an acknowledged store: not
//! possible, since loads and inits wait for the tail to pass the topic's end.)
//!
//! **Epochs.** A store's value is the offset then ` epoch=<n>`, the epoch of the
//! partition lease it is written under. Leases come from the dispatchers' consumer
//! group, which has no epoch a client can read, so a new owner of a partition claims
//! one here: a record with key `<topic>/_lease/<partition>`, whose position in this
//! one-partition topic (plus one) is its epoch, greater than every earlier claim's.
//! Every process applies the records in topic order, and a store whose epoch is below
//! the partition's latest claim (or below the epoch of the key's value) is ignored
//! where the key has a value: a previous owner's late write never replaces the new
//! owner's. A store is also refused locally ([`ChannelError::Fenced`]) once this
//! process has seen a newer claim. (Were compaction to keep only such an ignored
//! write, a reader applies it rather than have no checkpoint: a redelivery at worst.)
//!
//! Every process tails the topic from the start with one assigned consumer and keeps
//! the latest value of each key. A store produces through the channel's idempotent
//! producer and returns after the delivery report (and updates the local view at once,
//! so a process reads its own writes). A load first reads the topic's end offset and
//! waits until the tail has passed it, so it sees every store acknowledged before the
//! load began, from any process.
//!
//! Why not a consumer group per trigger (Knative's layout, which `kafka-consumer-groups`
//! shows): the group is a client setting, so that means one librdkafka client, with its
//! threads and connections, per trigger, in every ingress and dispatcher process.
//! With this topic a process has one tailing consumer however many triggers it serves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset as KOffset, TopicPartitionList};
use tokio::sync::Notify;

use super::{blocking, consumer_config, lock, KafkaOptions};
use crate::channel::checkpoint::{decode_checkpoint, encode_checkpoint, fence, CheckpointStore};
use crate::channel::{ChannelError, CheckpointUpdate, Epoch, Offset, NO_EPOCH};
use crate::config::BrokerId;

/// What the tail has read: the latest checkpoint of every key, and the latest lease
/// claim of every log partition.
#[derive(Default)]
struct Known {
    /// Checkpoint key → offset and the epoch it was written under.
    values: HashMap<String, (Offset, Epoch)>,
    /// Lease key (`<topic>/_lease/<partition>`) → the latest claim's epoch.
    claims: HashMap<String, Epoch>,
}

impl Known {
    /// The epoch a write to checkpoint `key` must at least carry.
    fn floor(&self, key: &str) -> Epoch {
        let claimed = lease_key_of(key)
            .and_then(|l| self.claims.get(&l).copied())
            .unwrap_or(NO_EPOCH);
        let written = self.values.get(key).map_or(NO_EPOCH, |&(_, e)| e);
        claimed.max(written)
    }

    /// Applies a store in topic order; `Err(floor)` when it is a stale owner's.
    fn apply(&mut self, key: &str, offset: Offset, epoch: Epoch) -> Result<(), Epoch> {
        let floor = self.floor(key);
        if epoch < floor && self.values.contains_key(key) {
            return Err(floor);
        }
        self.values.insert(key.to_owned(), (offset, epoch));
        Ok(())
    }

    fn claim(&mut self, lease_key: &str, epoch: Epoch) {
        let e = self.claims.entry(lease_key.to_owned()).or_insert(epoch);
        *e = (*e).max(epoch);
    }
}

/// The latest checkpoint of every key, as far as the tail has read.
struct View {
    known: Mutex<Known>,
    /// The offset after the last record applied (-1 before the first read).
    applied: AtomicI64,
    progress: Notify,
}

/// The checkpoint topic of one Kafka channel.
pub(super) struct CheckpointTopic {
    topic: String,
    producer: FutureProducer,
    meta: Arc<BaseConsumer>,
    timeout: Duration,
    view: Arc<View>,
    tail: tokio::task::JoinHandle<()>,
}

impl Drop for CheckpointTopic {
    fn drop(&mut self) {
        self.tail.abort();
    }
}

impl CheckpointTopic {
    /// Starts tailing `topic` (which exists, with one partition).
    pub fn start(
        opts: &KafkaOptions,
        topic: &str,
        producer: FutureProducer,
        meta: Arc<BaseConsumer>,
    ) -> Result<CheckpointTopic, String> {
        let consumer: StreamConsumer = consumer_config(opts)
            .set("client.id", "triggerfish-checkpoints")
            .create()
            .map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, KOffset::Beginning)
            .map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let view = Arc::new(View {
            known: Mutex::new(Known::default()),
            applied: AtomicI64::new(-1),
            progress: Notify::new(),
        });
        let tail = tokio::spawn(tail(consumer, view.clone(), topic.to_owned()));
        Ok(CheckpointTopic {
            topic: topic.to_owned(),
            producer,
            meta,
            timeout: opts.request_timeout,
            view,
            tail,
        })
    }

    /// Waits until the view holds every record acknowledged so far.
    async fn catch_up(&self) -> Result<(), ChannelError> {
        let meta = self.meta.clone();
        let topic = self.topic.clone();
        let t = self.timeout;
        let (low, high) = blocking(move || meta.fetch_watermarks(&topic, 0, t))
            .await
            .map_err(|e| self.err(format!("reading its end offset: {e}")))?;
        // Reading a long topic from the start may take longer than one request: wait
        // as long as the tail makes progress.
        let mut deadline = tokio::time::Instant::now() + self.timeout;
        let mut seen = self.view.applied.load(Ordering::Acquire);
        loop {
            let notified = self.view.progress.notified();
            let applied = self.view.applied.load(Ordering::Acquire);
            // An empty (or fully compacted-away) topic has nothing to wait for.
            if high <= low || applied >= high {
                return Ok(());
            }
            if applied > seen {
                seen = applied;
                deadline = tokio::time::Instant::now() + self.timeout;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err()
                && self.view.applied.load(Ordering::Acquire) <= seen
            {
                return Err(self.err(format!(
                    "not read up to offset {high} within {:?} (stuck at {applied})",
                    self.timeout
                )));
            }
        }
    }

    fn err(&self, reason: String) -> ChannelError {
        ChannelError::Unreachable {
            reason: format!("checkpoint topic {}: {reason}", self.topic),
        }
    }

    /// The checkpoints of one trigger of one log (`prefix` = `<kind>/<ns>/<broker>/`).
    pub async fn load(
        &self,
        prefix: &str,
        trigger: &str,
        partitions: u32,
    ) -> Result<Vec<Option<Offset>>, ChannelError> {
        self.catch_up().await?;
        let known = lock(&self.view.known);
        Ok((0..partitions)
            .map(|p| known.values.get(&key(prefix, trigger, p)).map(|&(o, _)| o))
            .collect())
    }

    /// Claims a new lease epoch for partition `partition` of the log `prefix`
    /// (module docs): returns once Kafka acknowledged the claim.
    pub async fn claim(
        &self,
        prefix: &str,
        partition: u32,
        owner: &str,
    ) -> Result<Epoch, ChannelError> {
        let k = lease_key(prefix, partition);
        let v = format!("lease {owner}");
        let record: FutureRecord<'_, str, str> = FutureRecord::to(&self.topic)
            .partition(0)
            .key(k.as_str())
            .payload(v.as_str());
        let report = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| self.err(format!("claiming {k}: {e}")))?;
        let at = tokio::time::timeout(self.timeout + Duration::from_secs(1), report)
            .await
            .map_err(|_| {
                self.err(format!(
                    "no acknowledgement of {k} within {:?}",
                    self.timeout
                ))
            })?
            .map_err(|_| self.err("the producer was closed".to_owned()))?
            .map_err(|(e, _)| self.err(format!("claiming {k}: {e}")))?;
        let epoch = record_epoch(at.offset);
        lock(&self.view.known).claim(&k, epoch);
        Ok(epoch)
    }

    /// Stores checkpoints; returns after Kafka acknowledged every one. Refused as a
    /// whole with [`ChannelError::Fenced`] when this process has seen a newer owner of
    /// one of the partitions.
    pub async fn store(
        &self,
        broker: &crate::config::BrokerId,
        prefix: &str,
        trigger: &str,
        updates: &[CheckpointUpdate],
    ) -> Result<(), ChannelError> {
        {
            let known = lock(&self.view.known);
            for u in updates {
                fence(
                    broker,
                    trigger,
                    u,
                    known.floor(&key(prefix, trigger, u.partition)),
                )?;
            }
        }
        self.produce(prefix, trigger, updates, false).await
    }

    /// Stores starting checkpoints where none exists, atomically among processes: an
    /// init record counts only for a key without a value when the tail reaches it, so
    /// the first one in the topic wins and an init never replaces progress. Returns
    /// once the view shows the outcome.
    pub async fn init(
        &self,
        prefix: &str,
        trigger: &str,
        initial: &[(u32, Offset)],
    ) -> Result<(), ChannelError> {
        self.catch_up().await?;
        let missing: Vec<CheckpointUpdate> = {
            let known = lock(&self.view.known);
            initial
                .iter()
                .filter(|&&(p, _)| !known.values.contains_key(&key(prefix, trigger, p)))
                .map(|&(p, o)| CheckpointUpdate::unleased(p, o))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        self.produce(prefix, trigger, &missing, true).await?;
        self.catch_up().await
    }

    async fn produce(
        &self,
        prefix: &str,
        trigger: &str,
        updates: &[CheckpointUpdate],
        init: bool,
    ) -> Result<(), ChannelError> {
        let mut pending = Vec::with_capacity(updates.len());
        for u in updates {
            let k = key(prefix, trigger, u.partition);
            let v = if init {
                format!("{INIT}{}", u.offset)
            } else {
                encode_checkpoint(u.offset, u.epoch)
            };
            let record: FutureRecord<'_, str, str> = FutureRecord::to(&self.topic)
                .partition(0)
                .key(k.as_str())
                .payload(v.as_str());
            match self.producer.send_result(record) {
                Ok(f) => pending.push((k, *u, f)),
                Err((e, _)) => return Err(self.err(format!("storing {k}: {e}"))),
            }
        }
        let reports = async {
            for (k, u, f) in pending {
                match f.await {
                    // A process reads its own stores at once (unless a newer owner's
                    // claim came in meanwhile); an init's outcome comes from the tail
                    // (another process's may be first).
                    Ok(Ok(_)) if !init => {
                        let _ = lock(&self.view.known).apply(&k, u.offset, u.epoch);
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(self.err(format!("storing {k}: {e}"))),
                    Err(_) => return Err(self.err("the producer was closed".to_owned())),
                }
            }
            Ok(())
        };
        tokio::time::timeout(self.timeout + Duration::from_secs(1), reports)
            .await
            .map_err(|_| self.err(format!("no acknowledgement within {:?}", self.timeout)))?
    }
}

/// Prefix of an init record's value.
const INIT: &str = "init:";

/// One log's checkpoints in the shared checkpoint topic (keys under `prefix`).
pub(super) struct LogCheckpoints {
    pub topic: Arc<CheckpointTopic>,
    pub broker: BrokerId,
    pub prefix: String,
}

#[async_trait]
impl CheckpointStore for LogCheckpoints {
    async fn load(
        &self,
        trigger: &str,
        partitions: u32,
    ) -> Result<Vec<Option<Offset>>, ChannelError> {
        self.topic.load(&self.prefix, trigger, partitions).await
    }

    async fn store(&self, trigger: &str, updates: &[CheckpointUpdate]) -> Result<(), ChannelError> {
        self.topic
            .store(&self.broker, &self.prefix, trigger, updates)
            .await
    }

    async fn init(&self, trigger: &str, initial: &[(u32, Offset)]) -> Result<(), ChannelError> {
        self.topic.init(&self.prefix, trigger, initial).await
    }
}

fn key(prefix: &str, trigger: &str, partition: u32) -> String {
    format!("{prefix}{trigger}/{partition}")
}

/// The name in a lease claim's key where a trigger name would be (`_` never occurs in
/// Kubernetes names, so no trigger has it).
const LEASE: &str = "_lease";

/// The key of partition `partition`'s lease claims in log `prefix` (`<topic>/`).
fn lease_key(prefix: &str, partition: u32) -> String {
    key(prefix, LEASE, partition)
}

/// The lease key of a checkpoint key `<topic>/<trigger>/<partition>` (topic names
/// hold no `/`), `None` for a key of another shape.
fn lease_key_of(key: &str) -> Option<String> {
    let (head, partition) = key.rsplit_once('/')?;
    let (topic, _) = head.rsplit_once('/')?;
    Some(format!("{topic}/{LEASE}/{partition}"))
}

/// Whether a key is a lease claim's.
fn is_lease_key(key: &str) -> bool {
    key.rsplit_once('/')
        .and_then(|(head, _)| head.rsplit_once('/'))
        .is_some_and(|(_, name)| name == LEASE)
}

/// The epoch of a claim stored at `offset` of the checkpoint topic: one more, so that
/// every claim's epoch is above [`NO_EPOCH`].
fn record_epoch(offset: i64) -> Epoch {
    u64::try_from(offset).unwrap_or(0) + 1
}

/// Applies the topic's records to the view, forever.
async fn tail(consumer: StreamConsumer, view: Arc<View>, topic: String) {
    loop {
        match consumer.recv().await {
            Ok(msg) => {
                let k = msg.key().and_then(|k| std::str::from_utf8(k).ok());
                let v = msg.payload().and_then(|v| std::str::from_utf8(v).ok());
                apply_record(&view, &topic, msg.offset(), k, v);
                view.applied.store(msg.offset() + 1, Ordering::Release);
                view.progress.notify_waiters();
            }
            Err(e) => {
                tracing::warn!(topic, error = %e, "reading the checkpoint topic");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Applies one record of the checkpoint topic (at `offset`) to the view.
fn apply_record(view: &View, topic: &str, offset: i64, k: Option<&str>, v: Option<&str>) {
    let Some(k) = k else {
        tracing::warn!(topic, offset, "checkpoint record without a key; ignored");
        return;
    };
    let mut known = lock(&view.known);
    if is_lease_key(k) {
        known.claim(k, record_epoch(offset));
        return;
    }
    let v = v.map(str::trim);
    match v.and_then(|v| v.strip_prefix(INIT)) {
        Some(o) => match o.parse::<Offset>() {
            Ok(o) => {
                known.values.entry(k.to_owned()).or_insert((o, NO_EPOCH));
            }
            Err(_) => tracing::warn!(
                topic,
                offset,
                key = k,
                "unreadable start checkpoint; ignored"
            ),
        },
        None => match v.and_then(decode_checkpoint) {
            Some((o, epoch)) => {
                if let Err(floor) = known.apply(k, o, epoch) {
                    tracing::debug!(
                        topic,
                        offset,
                        key = k,
                        epoch,
                        floor,
                        "a previous owner's checkpoint write; ignored"
                    );
                }
            }
            None => tracing::warn!(
                topic,
                offset,
                key = k,
                "checkpoint record without an offset; ignored"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_previous_owners_late_write_never_replaces_the_new_owners() {
        let mut k = Known::default();
        let key = "t/trig/3";
        assert_eq!(lease_key_of(key).as_deref(), Some("t/_lease/3"));
        assert!(is_lease_key("t/_lease/3") && !is_lease_key(key));
        k.claim("t/_lease/3", 5);
        assert_eq!(k.apply(key, 100, 5), Ok(()));
        k.claim("t/_lease/3", 9); // a new owner
        assert_eq!(k.apply(key, 120, 5), Err(9), "stale owner");
        assert_eq!(k.values[key], (100, 5));
        assert_eq!(k.apply(key, 110, 9), Ok(()));
        assert_eq!(k.apply(key, 130, 5), Err(9));
        assert_eq!(k.values[key], (110, 9));
        // An unleased write (a cursor outside any lease) cannot replace a leased one.
        assert_eq!(k.apply(key, 1, NO_EPOCH), Err(9));
        // Other partitions are not affected.
        assert_eq!(k.apply("t/trig/4", 7, NO_EPOCH), Ok(()));
        // With no value at all, a stale write is applied rather than none.
        assert_eq!(k.apply("t/other/3", 50, 5), Ok(()));
    }
}
