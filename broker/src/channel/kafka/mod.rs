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
//! | partition leases | consumer group `triggerfish.dispatchers.<events topic>` of the dispatcher processes |
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
mod clients;
mod config;
pub mod lease;
mod reader;
#[cfg(test)]
mod tests;
mod topics;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub use binding::{murmur2, murmur2_partition};
pub use config::{
    check_topic_name, ConfigError, KafkaOptions, DEFAULT_CHECKPOINT_TOPIC, DEFAULT_TOPIC_TEMPLATE,
};
/// The client crate, for tools and tests that talk to the same cluster.
pub use rdkafka;
pub use reader::KafkaReader;
pub use topics::{topic_name, DEAD_LETTERS_SUFFIX};

use clients::{blocking, client_config, consumer_config, lock, max_message_bytes, Apply, Role};
use topics::collision_key;

use crate::channel::checkpoint::CheckpointStore;
use crate::channel::lease::{HandOver, PartitionLeases};
use crate::channel::{
    BrokerLog, ChannelError, CheckpointUpdate, EventLog, LogKind, LogReader, Offset, StartAt,
};
use crate::config::BrokerId;
use crate::event::Event;

/// The Kafka channel: one producer, any number of brokers.
pub struct KafkaLog {
    opts: KafkaOptions,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// For metadata and watermarks.
    meta: Arc<BaseConsumer>,
    /// Open logs by broker; `true` marks a dead-letter log.
    brokers: Mutex<HashMap<(BrokerId, LogKind), Arc<KafkaBroker>>>,
    /// Which broker each topic belongs to (by [`collision_key`]).
    topics: Mutex<HashMap<String, BrokerId>>,
    /// Every log's checkpoints.
    checkpoints: tokio::sync::OnceCell<Arc<checkpoint::CheckpointTopic>>,
}

impl KafkaLog {
    /// Creates the clients and checks that the cluster answers (within the request
    /// timeout).
    pub async fn connect(opts: KafkaOptions) -> Result<KafkaLog, ChannelError> {
        opts.validate().map_err(|e| ChannelError::Invalid {
            reason: e.to_string(),
        })?;
        let fail = |what: &str, e: &dyn std::fmt::Display| ChannelError::Unreachable {
            reason: format!("Kafka at {}: {what}: {e}", opts.bootstrap_servers()),
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
        kind: LogKind,
    ) -> Result<Arc<KafkaBroker>, ChannelError> {
        let key = (broker.clone(), kind);
        if let Some(b) = lock(&self.brokers).get(&key) {
            return Ok(b.clone());
        }
        let mut topic = topic_name(&self.opts.topic_template, broker)?;
        if kind == LogKind::DeadLetters {
            topic.push_str(DEAD_LETTERS_SUFFIX);
            check_topic_name(&topic).map_err(|e| ChannelError::Invalid {
                reason: format!("broker {broker}: {e}"),
            })?;
        }
        {
            let mut topics = lock(&self.topics);
            match topics.get(&collision_key(&topic)) {
                Some(other) if other != broker => {
                    return Err(ChannelError::Invalid {
                        reason: format!(
                            "brokers {other} and {broker} would share the Kafka topic {topic}; rename one or set --kafka-topic-template"
                        ),
                    })
                }
                _ => {
                    topics.insert(collision_key(&topic), broker.clone());
                }
            }
        }
        let wanted = kind.partitions(self.opts.partitions);
        // Dead letters wait for an operator: the topic is created without time or
        // size retention (an existing one keeps what it has; the README says how to
        // check it).
        let configs: &[(&str, &str)] = if kind.never_expires() {
            &[("retention.ms", "-1"), ("retention.bytes", "-1")]
        } else {
            &[]
        };
        let partitions = self
            .ensure_topic(&topic, wanted, configs)
            .await
            .map_err(|reason| ChannelError::Unavailable {
                broker: broker.clone(),
                reason,
            })?;
        // The dead-letter log is one partition even in a topic made with more: redrive
        // and the backlog read partition 0 only.
        let partitions = kind.partitions(partitions);
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
            checkpoints: checkpoint::LogCheckpoints {
                topic: checkpoints,
                broker: broker.clone(),
                // Its topic, which no other log shares.
                prefix: format!("{topic}/"),
            },
        });
        Ok(lock(&self.brokers).entry(key).or_insert(b).clone())
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    async fn open(
        &self,
        broker: &BrokerId,
        kind: LogKind,
    ) -> Result<Arc<dyn BrokerLog>, ChannelError> {
        let b = self.open_log(broker, kind).await?;
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
    checkpoints: checkpoint::LogCheckpoints,
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
            Err(ChannelError::NoPartition {
                broker: self.id.clone(),
                partition: p,
            })
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
        // Size everything first: a batch with one oversized event stores nothing.
        let mut buf = String::new();
        let mut sizes = Vec::with_capacity(events.len());
        for e in events {
            let mut headers = 0;
            binding::for_each_header(e, |k, v| headers += binding::header_size(k, v));
            let value = e.data().map(|d| &d[..]);
            let size = binding::record_size(e.partition_key(&mut buf), value, headers);
            if size > self.max_message_bytes {
                return Err(ChannelError::TooLarge {
                    size,
                    limit: self.max_message_bytes,
                });
            }
            sizes.push(size);
        }
        let fallback = self.next_partition.fetch_add(1, Ordering::Relaxed);
        let mut pending = Vec::with_capacity(events.len());
        for (e, &size) in events.iter().zip(&sizes) {
            // librdkafka copies each header: written straight from the event.
            let mut headers = Some(OwnedHeaders::new_with_capacity(e.attribute_count() + 2));
            binding::for_each_header(e, |key, value| {
                headers = headers.take().map(|h| {
                    h.insert(Header {
                        key,
                        value: Some(value),
                    })
                });
            });
            let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic);
            if let Some(h) = headers {
                record = record.headers(h);
            }
            if let Some(v) = e.data() {
                record = record.payload(&v[..]);
            }
            // The key is `partitionkey` (3.1's opt-in key mapper).
            if let Some(k) = e.partition_key(&mut buf) {
                record = record.key(k);
            }
            record = record.partition(self.partition_of(e, fallback) as i32);
            match self.producer.send_result(record) {
                Ok(f) => pending.push((f, size)),
                // Records already enqueued may still be stored: the caller retries the
                // whole batch, and consumers de-duplicate on source + id.
                Err((err, _)) => return Err(self.send_error(&err, size)),
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
        self.checkpoints.load(trigger, self.partitions).await
    }

    async fn store_checkpoint(
        &self,
        trigger: &str,
        updates: &[CheckpointUpdate],
        _durable: bool,
    ) -> Result<(), ChannelError> {
        for u in updates {
            self.check_partition(u.partition)?;
        }
        self.checkpoints.store(trigger, updates).await
    }

    async fn init_checkpoint(
        &self,
        trigger: &str,
        initial: &[(u32, Offset)],
    ) -> Result<(), ChannelError> {
        for &(p, _) in initial {
            self.check_partition(p)?;
        }
        self.checkpoints.init(trigger, initial).await
    }

    fn leases(&self, owner: &str, hand_over: HandOver) -> Arc<dyn PartitionLeases> {
        Arc::new(lease::KafkaLeases::new(
            &self.opts,
            &self.id,
            &self.topic,
            self.partitions,
            owner,
            hand_over,
            self.checkpoints.topic.clone(),
            self.checkpoints.prefix.clone(),
        ))
    }
}
