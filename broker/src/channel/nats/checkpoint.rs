//! Per-trigger checkpoints in a JetStream key-value bucket.
//!
//! One bucket per installation (`<prefix>_checkpoints`, history 1, file storage, the
//! streams' replica count); one key per trigger and log:
//! `<namespace>.<broker>.<events|deadletters>.<trigger>`, each part encoded as in
//! [`super::token`]. The value is JSON `{"offsets": [next stream sequence per
//! partition]}`, the same shape as the embedded log's checkpoint files. A put returns
//! after its PubAck, so every store is durable (the `durable` hint costs nothing here).
//!
//! A bucket survives dispatcher restarts and is shared by every dispatcher replica.
//! (Durable consumers would also keep positions, but a consumer has one position per
//! filter subject and the dispatcher commits only the contiguous done prefix of each
//! partition: a KV value holds exactly that.)

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use super::token;
use crate::channel::{ChannelError, Offset};
use crate::config::BrokerId;

#[derive(serde::Serialize, serde::Deserialize)]
struct Value {
    offsets: Vec<Offset>,
}

/// Opens (creating if needed) the checkpoint bucket.
pub(super) async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    timeout: Duration,
) -> Result<kv::Store, ChannelError> {
    let other = |what: &str, e: &dyn std::fmt::Display| {
        ChannelError::Other(format!("NATS checkpoint bucket {bucket}: {what}: {e}"))
    };
    let elapsed = |_| ChannelError::Other(format!("NATS checkpoint bucket {bucket}: timed out"));
    if let Ok(store) = tokio::time::timeout(timeout, js.get_key_value(bucket))
        .await
        .map_err(elapsed)?
    {
        return Ok(store);
    }
    // The bucket's stream is created directly, as ADR-8 lays it out: async-nats'
    // `create_key_value` first asks for account info in a shape nats-server 2.9 does
    // not send.
    let created = tokio::time::timeout(
        timeout,
        js.create_stream(jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("Triggerfish trigger checkpoints".into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_messages: -1,
            max_bytes: -1,
            max_message_size: -1,
            max_consumers: -1,
            discard: jetstream::stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            duplicate_window: Duration::from_secs(120),
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        }),
    )
    .await
    .map_err(elapsed)?;
    // Created now, or by another process meanwhile: open it.
    let opened = tokio::time::timeout(timeout, js.get_key_value(bucket))
        .await
        .map_err(elapsed)?;
    match (created, opened) {
        (_, Ok(store)) => Ok(store),
        (Err(create), Err(_)) => Err(other("cannot create", &create)),
        (Ok(_), Err(open)) => Err(other("cannot open", &open)),
    }
}

/// The checkpoints of one broker log.
pub(super) struct Checkpoints {
    store: kv::Store,
    broker: BrokerId,
    /// `<namespace>.<broker>.<events|deadletters>`.
    key_prefix: String,
    timeout: Duration,
}

impl Checkpoints {
    pub(super) fn new(
        store: kv::Store,
        broker: &BrokerId,
        dead_letters: bool,
        timeout: Duration,
    ) -> Result<Checkpoints, ChannelError> {
        let kind = if dead_letters {
            "deadletters"
        } else {
            "events"
        };
        Ok(Checkpoints {
            store,
            broker: broker.clone(),
            key_prefix: format!(
                "{}.{}.{kind}",
                token(&broker.namespace, broker)?,
                token(&broker.name, broker)?
            ),
            timeout,
        })
    }

    fn key(&self, trigger: &str) -> Result<String, ChannelError> {
        Ok(format!(
            "{}.{}",
            self.key_prefix,
            token(trigger, &self.broker)?
        ))
    }

    fn unavailable(&self, trigger: &str, what: impl std::fmt::Display) -> ChannelError {
        ChannelError::Unavailable {
            broker: self.broker.clone(),
            reason: format!("checkpoint of trigger {trigger}: {what}"),
        }
    }

    pub(super) async fn load(
        &self,
        trigger: &str,
        partitions: u32,
    ) -> Result<Option<Vec<Offset>>, ChannelError> {
        let key = self.key(trigger)?;
        let got = tokio::time::timeout(self.timeout, self.store.get(key.clone()))
            .await
            .map_err(|_| self.unavailable(trigger, "timed out reading it"))?
            .map_err(|e| self.unavailable(trigger, e))?;
        let Some(bytes) = got else {
            return Ok(None);
        };
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) if v.offsets.len() == partitions as usize => Ok(Some(v.offsets)),
            _ => {
                // Never guess forward: replaying from the start duplicates, skipping loses.
                tracing::error!(broker = %self.broker, trigger, key,
                    "checkpoint is unreadable; the trigger restarts from the earliest retained event");
                Ok(Some(vec![0; partitions as usize]))
            }
        }
    }

    pub(super) async fn store(
        &self,
        trigger: &str,
        offsets: &[Offset],
    ) -> Result<(), ChannelError> {
        let key = self.key(trigger)?;
        let body = serde_json::to_vec(&Value {
            offsets: offsets.to_vec(),
        })
        .map_err(|e| ChannelError::Other(e.to_string()))?;
        tokio::time::timeout(self.timeout, self.store.put(key, Bytes::from(body)))
            .await
            .map_err(|_| self.unavailable(trigger, "timed out storing it"))?
            .map_err(|e| self.unavailable(trigger, e))?;
        Ok(())
    }
}
