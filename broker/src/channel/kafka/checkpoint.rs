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

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset as KOffset, TopicPartitionList};
use tokio::sync::Notify;

use super::{blocking, consumer_config, lock, KafkaOptions};
use crate::channel::{ChannelError, Offset};

/// The latest checkpoint of every key, as far as the tail has read.
struct View {
    values: Mutex<HashMap<String, Offset>>,
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
            values: Mutex::new(HashMap::new()),
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
        ChannelError::Other(format!("checkpoint topic {}: {reason}", self.topic))
    }

    /// The checkpoints of one trigger of one log (`prefix` = `<kind>/<ns>/<broker>/`).
    pub async fn load(
        &self,
        prefix: &str,
        trigger: &str,
        partitions: u32,
    ) -> Result<Vec<Option<Offset>>, ChannelError> {
        self.catch_up().await?;
        let values = lock(&self.view.values);
        Ok((0..partitions)
            .map(|p| values.get(&key(prefix, trigger, p)).copied())
            .collect())
    }

    /// Stores checkpoints; returns after Kafka acknowledged every one.
    pub async fn store(
        &self,
        prefix: &str,
        trigger: &str,
        updates: &[(u32, Offset)],
    ) -> Result<(), ChannelError> {
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
        let missing: Vec<(u32, Offset)> = {
            let values = lock(&self.view.values);
            initial
                .iter()
                .copied()
                .filter(|&(p, _)| !values.contains_key(&key(prefix, trigger, p)))
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
        updates: &[(u32, Offset)],
        init: bool,
    ) -> Result<(), ChannelError> {
        let mut pending = Vec::with_capacity(updates.len());
        for &(p, offset) in updates {
            let k = key(prefix, trigger, p);
            let v = if init {
                format!("{INIT}{offset}")
            } else {
                offset.to_string()
            };
            let record: FutureRecord<'_, str, str> = FutureRecord::to(&self.topic)
                .partition(0)
                .key(k.as_str())
                .payload(v.as_str());
            match self.producer.send_result(record) {
                Ok(f) => pending.push((k, offset, f)),
                Err((e, _)) => return Err(self.err(format!("storing {k}: {e}"))),
            }
        }
        let reports = async {
            for (k, offset, f) in pending {
                match f.await {
                    // A process reads its own stores at once; an init's outcome comes
                    // from the tail (another process's may be first).
                    Ok(Ok(_)) if !init => {
                        lock(&self.view.values).insert(k, offset);
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

fn key(prefix: &str, trigger: &str, partition: u32) -> String {
    format!("{prefix}{trigger}/{partition}")
}

/// Applies the topic's records to the view, forever.
async fn tail(consumer: StreamConsumer, view: Arc<View>, topic: String) {
    loop {
        match consumer.recv().await {
            Ok(msg) => {
                let k = msg.key().and_then(|k| std::str::from_utf8(k).ok());
                let v = msg.payload().and_then(|v| std::str::from_utf8(v).ok());
                let parsed = k.zip(v.and_then(|v| match v.trim().strip_prefix(INIT) {
                    Some(o) => o.parse::<Offset>().ok().map(|o| (o, true)),
                    None => v.trim().parse::<Offset>().ok().map(|o| (o, false)),
                }));
                match parsed {
                    Some((k, (v, true))) => {
                        lock(&view.values).entry(k.to_owned()).or_insert(v);
                    }
                    Some((k, (v, false))) => {
                        lock(&view.values).insert(k.to_owned(), v);
                    }
                    None => {
                        tracing::warn!(
                            topic,
                            offset = msg.offset(),
                            "checkpoint record without a key and an offset; ignored"
                        );
                    }
                }
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
