//! Topics: the names of a broker's topics, and creating them (and the checkpoint topic)
//! through the admin API when they are missing.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::clients::blocking;
use super::{check_topic_name, checkpoint, KafkaLog};
use crate::channel::ChannelError;
use crate::config::BrokerId;

/// Suffix of a broker's dead-letter topic.
pub const DEAD_LETTERS_SUFFIX: &str = "_deadletters";

/// The events topic of a broker.
pub fn topic_name(template: &str, broker: &BrokerId) -> Result<String, ChannelError> {
    let name = template
        .replace("{namespace}", &broker.namespace)
        .replace("{name}", &broker.name);
    check_topic_name(&name).map_err(|e| ChannelError::Invalid {
        reason: format!("broker {broker}: {e}"),
    })?;
    Ok(name)
}

/// Kafka's rule for topics that collide in its metrics: `.` and `_` are the same.
pub(super) fn collision_key(topic: &str) -> String {
    topic.replace('.', "_")
}

impl KafkaLog {
    /// Creates the topic when missing (with `configs`); returns its partition count.
    pub(super) async fn ensure_topic(
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
            Some(p) if !p.contains("compact") => Err(ChannelError::Invalid { reason: format!(
                "checkpoint topic {topic} has cleanup.policy={p}: retention would delete idle triggers' checkpoints; set cleanup.policy=compact on it (or choose another --kafka-checkpoint-topic)"
            )}),
            _ => Ok(()),
        }
    }

    /// The checkpoint topic, created and tailed on first use.
    pub(super) async fn checkpoint_topic(
        &self,
    ) -> Result<Arc<checkpoint::CheckpointTopic>, ChannelError> {
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
                .map_err(|reason| ChannelError::Unreachable { reason })?;
                self.check_compacted(topic).await?;
                let c = checkpoint::CheckpointTopic::start(
                    &self.opts,
                    topic,
                    self.producer.clone(),
                    self.meta.clone(),
                )
                .map_err(|e| ChannelError::Unreachable {
                    reason: format!("checkpoint topic {topic}: {e}"),
                })?;
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
