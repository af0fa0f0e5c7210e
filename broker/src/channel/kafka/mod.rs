//! The Kafka channel: every broker is a Kafka topic laid out per the CloudEvents Kafka
//! binding, so that other Kafka producers and consumers (Kafka Connect, stream
//! processors, any client) write events that triggers route and read what the ingress
//! accepted.
//!
//! Layout, for a broker `<ns>/<name>`:
//!
//! | what | name |
//! |---|---|
//! | events topic | `knative-broker-<ns>-<name>` (Knative's Kafka broker's name; `--kafka-topic-template`) |
//! | dead-letter topic | `<events topic>_deadletters`, one partition (`_` never occurs in Kubernetes names) |
//! | checkpoints | compacted topic `triggerfish-checkpoints` (one for all brokers), key `<topic>/<trigger>/<partition>`, value the next offset |
//! | partition leases | consumer group `triggerfish.dispatchers.<ns>/<name>` of the dispatcher processes |
//!
//! - **Topics** are created when missing (`CreateTopics`, the configured partitions and
//!   replication factor); an existing topic keeps its partition count, read from the
//!   cluster's metadata. Two brokers whose names map to one topic (Knative's scheme is
//!   not injective: `a-b`/`c` and `a`/`b-c`) are refused when the second is opened.
//! - **Records** are binary-mode CloudEvents ([`binding`]); the key is `partitionkey`,
//!   and keyed records go to the partition Kafka's default (`murmur2`) partitioner
//!   picks, as Java producers and Kafka Connect do ([`murmur2_partition`]). Unkeyed
//!   events are spread round-robin per append.
//! - **Appends** go through one idempotent producer (`acks=all`). `append` returns only
//!   when every record's delivery report arrived; a full producer queue is
//!   `ChannelError::Full` and no report within the request timeout is
//!   `ChannelError::Unavailable` (both HTTP 503 with `Retry-After`).
//! - **Offsets are Kafka offsets**, dense from 0 in a topic without transactions or
//!   compaction. `end_offset` is the high watermark.
//! - **Readers** ([`reader`]) are consumers `assign`ed to one partition at an offset
//!   (never `subscribe`d): reading does not depend on group membership.
//! - **Checkpoints** ([`checkpoint`]) are records of one compacted topic that every
//!   process tails: one consumer per process, however many triggers.
//! - **Dispatcher replicas** split partitions through a consumer group ([`lease`]) whose
//!   members never fetch: Kafka's group protocol decides who owns what, and a dead
//!   dispatcher's partitions move after the session timeout.

pub mod binding;
mod checkpoint;
mod config;
pub mod lease;
mod reader;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub use config::{
    check_topic_name, ConfigError, KafkaOptions, DEFAULT_CHECKPOINT_TOPIC, DEFAULT_TOPIC_TEMPLATE,
};
/// The client crate, for tools and tests that talk to the same cluster.
pub use rdkafka;
pub use reader::KafkaReader;

use crate::channel::lease::PartitionLeases;
use crate::channel::{BrokerLog, ChannelError, EventLog, LogReader, Offset, StartAt};
use crate::config::BrokerId;
use crate::event::Event;

/// Suffix of a broker's dead-letter topic.
pub const DEAD_LETTERS_SUFFIX: &str = "_deadletters";

/// The events topic of a broker.
pub fn topic_name(template: &str, broker: &BrokerId) -> Result<String, ChannelError> {
    let name = template
        .replace("{namespace}", &broker.namespace)
        .replace("{name}", &broker.name);
    check_topic_name(&name).map_err(|e| ChannelError::Other(format!("broker {broker}: {e}")))?;
    Ok(name)
}

/// Kafka's rule for topics that collide in its metrics: `.` and `_` are the same.
fn collision_key(topic: &str) -> String {
    topic.replace('.', "_")
}

/// The Kafka channel: one producer, any number of brokers.
pub struct KafkaLog {
    opts: KafkaOptions,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// For metadata and watermarks.
    meta: Arc<BaseConsumer>,
    /// Open logs by broker; `true` marks a dead-letter log.
    brokers: Mutex<HashMap<(BrokerId, bool), Arc<KafkaBroker>>>,
    /// Which broker each topic belongs to (by [`collision_key`]).
    topics: Mutex<HashMap<String, BrokerId>>,
    /// Every log's checkpoints.
    checkpoints: tokio::sync::OnceCell<Arc<checkpoint::CheckpointTopic>>,
}

impl KafkaLog {
    /// Creates the clients and checks that the cluster answers (within the request
    /// timeout).
    pub async fn connect(opts: KafkaOptions) -> Result<KafkaLog, ChannelError> {
        opts.validate()
            .map_err(|e| ChannelError::Other(e.to_string()))?;
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            ChannelError::Other(format!(
                "Kafka at {}: {what}: {e}",
                opts.bootstrap_servers()
            ))
        };
        let timeout_ms = opts.request_timeout.as_millis().to_string();
        let producer: FutureProducer = client_config(&opts)
            .set("linger.ms", "5")
            .set("message.timeout.ms", &timeout_ms)
            .set("client.id", "triggerfish-producer")
            .apply_for(&opts.client_options, Role::Producer)
            .apply_str(config::ENFORCED_PRODUCER)
            .create()
            .map_err(|e| fail("cannot create the producer", &e))?;
        let admin: AdminClient<DefaultClientContext> = client_config(&opts)
            .set("client.id", "triggerfish-admin")
            .apply_common(&opts.client_options)
            .create()
            .map_err(|e| fail("cannot create the admin client", &e))?;
        // Metadata and offsets only: no group (its events would pile up unpolled).
        let meta: BaseConsumer = consumer_config(&opts)
            .remove("group.id")
            .set("client.id", "triggerfish-metadata")
            .create()
            .map_err(|e| fail("cannot create the metadata client", &e))?;
        let meta = Arc::new(meta);
        let probe = meta.clone();
        let t = opts.request_timeout;
        blocking(move || probe.fetch_metadata(None, t).map(|_| ()))
            .await
            .map_err(|e| fail("cannot reach the cluster", &e))?;
        Ok(KafkaLog {
            opts,
            producer,
            admin,
            meta,
            brokers: Mutex::new(HashMap::new()),
            topics: Mutex::new(HashMap::new()),
            checkpoints: tokio::sync::OnceCell::new(),
        })
    }

    /// The options in effect.
    pub fn options(&self) -> &KafkaOptions {
        &self.opts
    }

    async fn open_log(
        &self,
        broker: &BrokerId,
        dead_letters: bool,
    ) -> Result<Arc<KafkaBroker>, ChannelError> {
        let key = (broker.clone(), dead_letters);
        if let Some(b) = lock(&self.brokers).get(&key) {
            return Ok(b.clone());
        }
        let mut topic = topic_name(&self.opts.topic_template, broker)?;
        if dead_letters {
            topic.push_str(DEAD_LETTERS_SUFFIX);
            check_topic_name(&topic)
                .map_err(|e| ChannelError::Other(format!("broker {broker}: {e}")))?;
        }
        {
            let mut topics = lock(&self.topics);
            match topics.get(&collision_key(&topic)) {
                Some(other) if other != broker => {
                    return Err(ChannelError::Other(format!(
                        "brokers {other} and {broker} would share the Kafka topic {topic}; rename one or set --kafka-topic-template"
                    )))
                }
                _ => {
                    topics.insert(collision_key(&topic), broker.clone());
                }
            }
        }
        let wanted = if dead_letters {
            1
        } else {
            self.opts.partitions
        };
        let partitions = self
            .ensure_topic(&topic, wanted, &[])
            .await
            .map_err(|reason| ChannelError::Unavailable {
                broker: broker.clone(),
                reason,
            })?;
        // The dead-letter log is one partition even in a topic made with more: redrive
        // and the backlog read partition 0 only.
        let partitions = if dead_letters { 1 } else { partitions };
        let checkpoints = self.checkpoint_topic().await?;
        let b = Arc::new(KafkaBroker {
            id: broker.clone(),
            topic: topic.clone(),
            partitions,
            producer: self.producer.clone(),
            meta: self.meta.clone(),
            opts: self.opts.clone(),
            next_partition: AtomicU32::new(0),
            max_message_bytes: max_message_bytes(&self.opts),
            checkpoint_prefix: format!("{topic}/"),
            checkpoints,
        });
        Ok(lock(&self.brokers).entry(key).or_insert(b).clone())
    }

    /// Creates the topic when missing (with `configs`); returns its partition count.
    async fn ensure_topic(
        &self,
        topic: &str,
        partitions: u32,
        configs: &[(&str, &str)],
    ) -> Result<u32, String> {
        let t = self.opts.request_timeout;
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("topic {topic}: {what}: {e}");
        if let Some(n) = self
            .partition_count(topic)
            .await
            .map_err(|e| fail("reading its metadata", &e))?
        {
            if n != partitions && partitions != 1 {
                tracing::info!(
                    topic,
                    partitions = n,
                    "topic keeps the partition count it was created with"
                );
            }
            return Ok(n);
        }
        let replication = TopicReplication::Fixed(self.opts.replication_factor);
        let mut new = NewTopic::new(topic, partitions as i32, replication);
        for (k, v) in configs {
            new = new.set(k, v);
        }
        let admin_opts = AdminOptions::new()
            .request_timeout(Some(t))
            .operation_timeout(Some(t));
        let results = tokio::time::timeout(t, self.admin.create_topics([&new], &admin_opts))
            .await
            .map_err(|_| fail("creating it", &"timed out"))?
            .map_err(|e| fail("creating it", &e))?;
        for r in results {
            match r {
                Ok(_) => {
                    tracing::info!(topic, partitions, "Kafka topic created");
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(fail("creating it", &code)),
            }
        }
        // Metadata may lag behind creation for a moment.
        let deadline = tokio::time::Instant::now() + t;
        loop {
            match self.partition_count(topic).await {
                Ok(Some(n)) => return Ok(n),
                Ok(None) | Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(None) => return Err(fail("created", &"but it does not appear in the metadata")),
                Err(e) => return Err(fail("reading its metadata", &e)),
            }
        }
    }

    /// Refuses a checkpoint topic that deletes old records: retention would remove an
    /// idle trigger's checkpoint, and the trigger would restart at the end of the log.
    async fn check_compacted(&self, topic: &str) -> Result<(), ChannelError> {
        use rdkafka::admin::ResourceSpecifier;
        let t = self.opts.request_timeout;
        let spec = ResourceSpecifier::Topic(topic);
        let described = tokio::time::timeout(
            t,
            self.admin
                .describe_configs([&spec], &AdminOptions::new().request_timeout(Some(t))),
        )
        .await;
        let policy = match described {
            Ok(Ok(results)) => results.into_iter().find_map(|r| {
                r.ok()?
                    .entries
                    .into_iter()
                    .find(|e| e.name == "cleanup.policy")?
                    .value
            }),
            // A cluster that does not describe configs: nothing to check against.
            _ => None,
        };
        match policy {
            Some(p) if !p.contains("compact") => Err(ChannelError::Other(format!(
                "checkpoint topic {topic} has cleanup.policy={p}: retention would delete idle triggers' checkpoints; set cleanup.policy=compact on it (or choose another --kafka-checkpoint-topic)"
            ))),
            _ => Ok(()),
        }
    }

    /// The checkpoint topic, created and tailed on first use.
    async fn checkpoint_topic(&self) -> Result<Arc<checkpoint::CheckpointTopic>, ChannelError> {
        self.checkpoints
            .get_or_try_init(|| async {
                let topic = &self.opts.checkpoint_topic;
                self.ensure_topic(
                    topic,
                    1,
                    &[
                        ("cleanup.policy", "compact"),
                        // Roll and compact within hours, not the default week.
                        ("segment.ms", "3600000"),
                        ("min.cleanable.dirty.ratio", "0.1"),
                    ],
                )
                .await
                .map_err(ChannelError::Other)?;
                self.check_compacted(topic).await?;
                let c = checkpoint::CheckpointTopic::start(
                    &self.opts,
                    topic,
                    self.producer.clone(),
                    self.meta.clone(),
                )
                .map_err(|e| ChannelError::Other(format!("checkpoint topic {topic}: {e}")))?;
                Ok(Arc::new(c))
            })
            .await
            .cloned()
    }

    /// The partition count of a topic, `None` when it does not exist.
    async fn partition_count(&self, topic: &str) -> Result<Option<u32>, KafkaError> {
        let meta = self.meta.clone();
        let t = self.opts.request_timeout;
        let name = topic.to_owned();
        blocking(move || {
            let md = meta.fetch_metadata(Some(&name), t)?;
            Ok(md
                .topics()
                .iter()
                .find(|mt| mt.name() == name)
                .and_then(|mt| match mt.error() {
                    None if !mt.partitions().is_empty() => Some(mt.partitions().len() as u32),
                    _ => None,
                }))
        })
        .await
    }
}

/// Kafka's default partitioner for keyed records (Java's `Utils.murmur2`, then
/// `toPositive(h) % partitions`).
pub fn murmur2_partition(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) as u32 % partitions.max(1)
}

/// Kafka's 32-bit MurmurHash2 (seed `0x9747b28c`), as Java's `Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Runs a blocking librdkafka call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Settings every client gets: the servers, then our defaults (the caller applies the
/// user's options after its own defaults, so they win).
fn client_config(opts: &KafkaOptions) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", opts.bootstrap_servers());
    c.set(
        "socket.timeout.ms",
        opts.request_timeout.as_millis().max(10).to_string(),
    );
    c
}

/// A consumer that never joins a group or commits: readers and the checkpoint tail.
/// The user's options come first; the settings reading correctly depends on win.
fn consumer_config(opts: &KafkaOptions) -> ClientConfig {
    let mut c = client_config(opts);
    c.set("fetch.wait.max.ms", "100")
        // Each reader buffers at most this much ahead (librdkafka's default is 64 MiB).
        .set("queued.max.messages.kbytes", "4096");
    c.apply_for(&opts.client_options, Role::Consumer);
    c.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        // An offset no longer retained: the earliest one (never skip to the end).
        .set("auto.offset.reset", "earliest")
        // librdkafka manages assignments through a group handle, so even an assigned
        // consumer needs an id; readers never subscribe or commit with it.
        .set("group.id", "triggerfish.readers");
    c
}

/// Which kind of client an option is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Producer,
    Consumer,
}

/// Settings only one kind of client understands (librdkafka warns about the others):
/// each `--kafka-option` goes to the clients it is for, everything else to all.
fn option_role(key: &str) -> Option<Role> {
    const PRODUCER: &[&str] = &[
        "acks",
        "request.required.acks",
        "enable.idempotence",
        "batch.num.messages",
        "batch.size",
        "linger.ms",
        "queue.buffering.max.ms",
        "queue.buffering.max.messages",
        "queue.buffering.max.kbytes",
        "compression.codec",
        "compression.type",
        "compression.level",
        "message.timeout.ms",
        "delivery.timeout.ms",
        "partitioner",
        "retries",
        "message.send.max.retries",
        "sticky.partitioning.linger.ms",
        "transactional.id",
        "transaction.timeout.ms",
        "enable.gapless.guarantee",
        "request.timeout.ms",
    ];
    const CONSUMER: &[&str] = &[
        "group.id",
        "group.instance.id",
        "group.protocol",
        "group.protocol.type",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "partition.assignment.strategy",
        "isolation.level",
        "auto.offset.reset",
        "enable.auto.commit",
        "auto.commit.interval.ms",
        "enable.auto.offset.store",
        "enable.partition.eof",
        "check.crcs",
        "queued.min.messages",
        "queued.max.messages.kbytes",
        "fetch.wait.max.ms",
        "fetch.queue.backoff.ms",
        "fetch.message.max.bytes",
        "max.partition.fetch.bytes",
        "fetch.max.bytes",
        "fetch.min.bytes",
        "fetch.error.backoff.ms",
    ];
    if PRODUCER.contains(&key) {
        Some(Role::Producer)
    } else if CONSUMER.contains(&key) {
        Some(Role::Consumer)
    } else {
        None
    }
}

trait Apply {
    fn apply_for(&mut self, options: &[(String, String)], role: Role) -> &mut Self;
    fn apply_common(&mut self, options: &[(String, String)]) -> &mut Self;
    fn apply_str(&mut self, options: &[(&str, &str)]) -> &mut Self;
}

impl Apply for ClientConfig {
    /// The options for all clients and those for `role`.
    fn apply_for(&mut self, options: &[(String, String)], role: Role) -> &mut Self {
        for (k, v) in options {
            if option_role(k).is_none_or(|r| r == role) {
                self.set(k, v);
            }
        }
        self
    }
    /// The options for all clients only (admin and metadata clients).
    fn apply_common(&mut self, options: &[(String, String)]) -> &mut Self {
        for (k, v) in options {
            if option_role(k).is_none() {
                self.set(k, v);
            }
        }
        self
    }
    fn apply_str(&mut self, options: &[(&str, &str)]) -> &mut Self {
        for (k, v) in options {
            self.set(*k, *v);
        }
        self
    }
}

/// The producer's `message.max.bytes` (librdkafka's default 1,000,000).
fn max_message_bytes(opts: &KafkaOptions) -> usize {
    opts.client_options
        .iter()
        .rev()
        .find(|(k, _)| k == "message.max.bytes")
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(1_000_000)
}

#[async_trait]
impl EventLog for KafkaLog {
    async fn open(&self, broker: &BrokerId) -> Result<Arc<dyn BrokerLog>, ChannelError> {
        let b = self.open_log(broker, false).await?;
        Ok(b)
    }

    async fn open_dead_letters(
        &self,
        broker: &BrokerId,
    ) -> Result<Arc<dyn BrokerLog>, ChannelError> {
        let b = self.open_log(broker, true).await?;
        Ok(b)
    }

    fn describe(&self) -> String {
        format!(
            "Kafka at {} (topics {})",
            self.opts.bootstrap_servers(),
            self.opts.topic_template
        )
    }
}

/// One broker's topic (or dead-letter topic) and checkpoints.
pub struct KafkaBroker {
    id: BrokerId,
    topic: String,
    partitions: u32,
    producer: FutureProducer,
    meta: Arc<BaseConsumer>,
    opts: KafkaOptions,
    next_partition: AtomicU32,
    max_message_bytes: usize,
    checkpoints: Arc<checkpoint::CheckpointTopic>,
    /// Key prefix of this log's checkpoints: its topic, which no other log shares.
    checkpoint_prefix: String,
}

impl KafkaBroker {
    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn unavailable(&self, reason: impl Into<String>) -> ChannelError {
        ChannelError::Unavailable {
            broker: self.id.clone(),
            reason: reason.into(),
        }
    }

    fn check_partition(&self, p: u32) -> Result<(), ChannelError> {
        if p < self.partitions {
            Ok(())
        } else {
            Err(ChannelError::Other(format!(
                "broker {} has no partition {p}",
                self.id
            )))
        }
    }

    /// Low and high watermarks of a partition.
    async fn watermarks(&self, partition: u32) -> Result<(i64, i64), ChannelError> {
        let meta = self.meta.clone();
        let topic = self.topic.clone();
        let t = self.opts.request_timeout;
        blocking(move || meta.fetch_watermarks(&topic, partition as i32, t))
            .await
            .map_err(|e| {
                self.unavailable(format!(
                    "reading the offsets of {}/{partition}: {e}",
                    self.topic
                ))
            })
    }

    fn send_error(&self, e: &KafkaError, size: usize) -> ChannelError {
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::QueueFull) => ChannelError::Full {
                broker: self.id.clone(),
            },
            Some(RDKafkaErrorCode::MessageSizeTooLarge) => ChannelError::TooLarge {
                size,
                limit: self.max_message_bytes,
            },
            _ => self.unavailable(format!("producing to {} failed: {e}", self.topic)),
        }
    }
}

#[async_trait]
impl BrokerLog for KafkaBroker {
    fn broker(&self) -> &BrokerId {
        &self.id
    }

    fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Keyed events go where Kafka's Java producers (and Kafka Connect, and
    /// librdkafka's `murmur2_random`) put the same key: [`murmur2_partition`].
    fn partition_of(&self, event: &Event, fallback: u32) -> u32 {
        let mut buf = String::new();
        match event.partition_key(&mut buf) {
            Some(key) => murmur2_partition(key.as_bytes(), self.partitions),
            None => fallback % self.partitions.max(1),
        }
    }

    async fn append(&self, events: &[Event]) -> Result<(), ChannelError> {
        if events.is_empty() {
            return Ok(());
        }
        // Encode everything first: a batch with one oversized event stores nothing.
        let mut records = Vec::with_capacity(events.len());
        for e in events {
            let enc = binding::encode(e);
            let size = enc.size();
            if size > self.max_message_bytes {
                return Err(ChannelError::TooLarge {
                    size,
                    limit: self.max_message_bytes,
                });
            }
            records.push((enc, size));
        }
        let fallback = self.next_partition.fetch_add(1, Ordering::Relaxed);
        let mut pending = Vec::with_capacity(records.len());
        for (i, (enc, size)) in records.iter().enumerate() {
            let mut headers = OwnedHeaders::new_with_capacity(enc.headers.len());
            for (k, v) in &enc.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_str()),
                });
            }
            let mut record: FutureRecord<'_, str, [u8]> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(v) = &enc.value {
                record = record.payload(v.as_ref());
            }
            if let Some(k) = &enc.key {
                record = record.key(k.as_str());
            }
            let p = self.partition_of(&events[i], fallback);
            record = record.partition(p as i32);
            match self.producer.send_result(record) {
                Ok(f) => pending.push((f, *size)),
                // Records already enqueued may still be stored: the caller retries the
                // whole batch, and consumers de-duplicate on source + id.
                Err((e, _)) => return Err(self.send_error(&e, *size)),
            }
        }
        let reports = async {
            for (f, size) in pending {
                match f.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(self.send_error(&e, size)),
                    Err(_) => return Err(self.unavailable("the producer was closed")),
                }
            }
            Ok(())
        };
        // librdkafka gives up after message.timeout.ms (the request timeout); the
        // margin only covers a report that is late to arrive.
        tokio::time::timeout(self.opts.request_timeout + Duration::from_secs(1), reports)
            .await
            .map_err(|_| {
                self.unavailable(format!(
                    "no delivery report from {} within {:?}",
                    self.topic, self.opts.request_timeout
                ))
            })?
    }

    async fn end_offset(&self, partition: u32) -> Result<Offset, ChannelError> {
        self.check_partition(partition)?;
        let (_, high) = self.watermarks(partition).await?;
        Ok(high.max(0) as Offset)
    }

    async fn reader(
        &self,
        partition: u32,
        start: StartAt,
    ) -> Result<Box<dyn LogReader>, ChannelError> {
        self.check_partition(partition)?;
        let start = match start {
            StartAt::Offset(o) => o,
            StartAt::Earliest => self.watermarks(partition).await?.0.max(0) as Offset,
            StartAt::End => self.watermarks(partition).await?.1.max(0) as Offset,
        };
        let r = KafkaReader::new(
            &self.opts,
            &self.id,
            &self.topic,
            partition,
            start,
            self.meta.clone(),
        )?;
        Ok(Box::new(r))
    }

    async fn load_checkpoint(&self, trigger: &str) -> Result<Vec<Option<Offset>>, ChannelError> {
        self.checkpoints
            .load(&self.checkpoint_prefix, trigger, self.partitions)
            .await
    }

    async fn store_checkpoint(
        &self,
        trigger: &str,
        updates: &[(u32, Offset)],
        _durable: bool,
    ) -> Result<(), ChannelError> {
        for &(p, _) in updates {
            self.check_partition(p)?;
        }
        self.checkpoints
            .store(&self.checkpoint_prefix, trigger, updates)
            .await
    }

    async fn init_checkpoint(
        &self,
        trigger: &str,
        initial: &[(u32, Offset)],
    ) -> Result<(), ChannelError> {
        for &(p, _) in initial {
            self.check_partition(p)?;
        }
        self.checkpoints
            .init(&self.checkpoint_prefix, trigger, initial)
            .await
    }

    fn leases(&self, owner: &str) -> Arc<dyn PartitionLeases> {
        match lease::KafkaLeases::start(&self.opts, &self.id, &self.topic, self.partitions, owner) {
            Ok(l) => Arc::new(l),
            Err(e) => {
                // Own nothing rather than everything, which could duplicate every
                // delivery; the error says why.
                tracing::error!(broker = %self.id, error = %e, "cannot join the dispatchers' consumer group; this process dispatches nothing");
                Arc::new(crate::channel::lease::NoPartitions)
            }
        }
    }
}
