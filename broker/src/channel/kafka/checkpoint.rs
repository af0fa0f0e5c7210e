//! Trigger checkpoints as committed offsets of one consumer group per trigger
//! (`triggerfish.<events|deadletters>.<ns>/<broker>/<trigger>`).
//!
//! Offsets are committed by a consumer that never joins its group (no `subscribe`, no
//! `assign`): Kafka accepts commits to a group without members, and only the dispatcher
//! holding a partition's lease writes that partition's offsets. The committed offset is
//! the next offset to process, as in every other backend, so Kafka's own tooling
//! (`kafka-consumer-groups --describe --group ...`) shows each trigger's lag.
//!
//! One client per trigger (the group is a client setting), created on first use and
//! kept: every librdkafka client has its own threads, so a broker with very many
//! triggers on Kafka costs a few threads each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset as KOffset, TopicPartitionList};

use super::{blocking, consumer_config, lock, KafkaOptions};
use crate::channel::Offset;

pub(super) struct Checkpoints {
    config: ClientConfig,
    topic: String,
    group_prefix: String,
    timeout: Duration,
    clients: Mutex<HashMap<String, Arc<BaseConsumer>>>,
}

impl Checkpoints {
    pub fn new(opts: &KafkaOptions, topic: &str, group_prefix: &str) -> Checkpoints {
        let mut config = consumer_config(opts);
        config.set("client.id", "triggerfish-checkpoints");
        Checkpoints {
            config,
            topic: topic.to_owned(),
            group_prefix: group_prefix.to_owned(),
            timeout: opts.request_timeout,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, trigger: &str) -> Result<Arc<BaseConsumer>, KafkaError> {
        let mut clients = lock(&self.clients);
        if let Some(c) = clients.get(trigger) {
            return Ok(c.clone());
        }
        let mut config = self.config.clone();
        config.set("group.id", format!("{}{trigger}", self.group_prefix));
        let c: Arc<BaseConsumer> = Arc::new(config.create()?);
        clients.insert(trigger.to_owned(), c.clone());
        Ok(c)
    }

    pub async fn load(
        &self,
        trigger: &str,
        partitions: u32,
    ) -> Result<Vec<Option<Offset>>, KafkaError> {
        let client = self.client(trigger)?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&self.topic, p as i32, KOffset::Invalid)?;
        }
        let t = self.timeout;
        let got = blocking(move || client.committed_offsets(tpl, t)).await?;
        let mut out = vec![None; partitions as usize];
        for e in got.elements_for_topic(&self.topic) {
            if let (Ok(p), KOffset::Offset(o)) = (usize::try_from(e.partition()), e.offset()) {
                if let (Some(slot), Ok(o)) = (out.get_mut(p), Offset::try_from(o)) {
                    *slot = Some(o);
                }
            }
        }
        Ok(out)
    }

    pub async fn store(&self, trigger: &str, updates: &[(u32, Offset)]) -> Result<(), KafkaError> {
        if updates.is_empty() {
            return Ok(());
        }
        let client = self.client(trigger)?;
        let mut tpl = TopicPartitionList::new();
        for &(p, o) in updates {
            let o = i64::try_from(o).map_err(|_| KafkaError::Canceled)?;
            tpl.add_partition_offset(&self.topic, p as i32, KOffset::Offset(o))?;
        }
        let t = self.timeout;
        let commit = blocking(move || client.commit(&tpl, CommitMode::Sync));
        tokio::time::timeout(t + Duration::from_secs(1), commit)
            .await
            .map_err(|_| KafkaError::Canceled)?
    }
}
