//! Checkpoints per trigger and partition in a JetStream key-value bucket.
//!
//! One bucket per installation (`<prefix>_checkpoints`, history 1, file storage, the
//! streams' replica count); one key per trigger, log and partition:
//! `<namespace>.<broker>.<events|deadletters>.<trigger>.<partition>`, each name part
//! encoded as in [`super::token`] (so no part contains a `.`). The value is the next
//! offset as ASCII decimal, then ` epoch=<n>` when written under a partition lease
//! (`nats kv get` shows it as is). A write returns after its PubAck, so every store is
//! durable (the `durable` hint costs nothing here).
//!
//! One key per partition rather than one per trigger: dispatcher replicas own
//! different partitions and each writes only its own keys. A store is a
//! compare-and-set on the key's revision (`update`), which costs the same round trip
//! as a put: the revision of this process's last write is kept, and when another
//! process wrote since, the entry is read back; if it carries a greater lease epoch,
//! the partition has a newer owner and the store fails with
//! [`ChannelError::Fenced`], else it is retried at the new revision. So a previous
//! owner's late write can never overwrite the new owner's checkpoint. A new trigger's
//! starting point is written with `create` (only where no key exists), so a process
//! starting late cannot move back, or skip ahead of, what another already stored.
//!
//! A bucket survives dispatcher restarts and is shared by every dispatcher replica.
//! (Durable consumers would also keep positions, but a consumer has one position per
//! filter subject and the dispatcher commits only the contiguous done prefix of each
//! partition: a KV value holds exactly that.)

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::try_join_all;

use super::token;
use crate::channel::checkpoint::{decode_checkpoint, encode_checkpoint, fence, CheckpointStore};
use crate::channel::{ChannelError, CheckpointUpdate, Epoch, LogKind, Offset, NO_EPOCH};
use crate::config::BrokerId;

/// Opens (creating if needed) the checkpoint bucket.
pub(super) async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    timeout: Duration,
) -> Result<kv::Store, ChannelError> {
    let other = |what: &str, e: &dyn std::fmt::Display| ChannelError::Unreachable {
        reason: format!("NATS checkpoint bucket {bucket}: {what}: {e}"),
    };
    let elapsed = |_| ChannelError::Unreachable {
        reason: format!("NATS checkpoint bucket {bucket}: timed out"),
    };
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
        js.create_stream(kv_stream_config(
            bucket,
            "Triggerfish trigger checkpoints",
            replicas,
            None,
        )),
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

/// The stream behind a KV bucket, laid out as ADR-8 describes (created directly:
/// async-nats' `create_key_value` first asks for account info in a shape nats-server
/// 2.9 does not send). With `max_age`, entries expire (and the de-duplication window
/// follows it).
pub(super) fn kv_stream_config(
    bucket: &str,
    description: &str,
    replicas: usize,
    max_age: Option<Duration>,
) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_messages: -1,
        max_bytes: -1,
        max_message_size: -1,
        max_consumers: -1,
        max_age: max_age.unwrap_or_default(),
        discard: jetstream::stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        duplicate_window: max_age.unwrap_or(Duration::from_secs(120)),
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The checkpoints of one broker log.
pub(super) struct Checkpoints {
    store: kv::Store,
    broker: BrokerId,
    /// `<namespace>.<broker>.<events|deadletters>`.
    key_prefix: String,
    timeout: Duration,
    /// Per key, the revision of this process's last write (and read-back).
    revisions: std::sync::Mutex<HashMap<String, u64>>,
}

/// Attempts of one compare-and-set store before it gives up (each lost race means
/// another process wrote the key meanwhile).
const CAS_ATTEMPTS: usize = 8;

impl Checkpoints {
    pub(super) fn new(
        store: kv::Store,
        broker: &BrokerId,
        kind: LogKind,
        timeout: Duration,
    ) -> Result<Checkpoints, ChannelError> {
        let kind = kind.as_str();
        Ok(Checkpoints {
            store,
            broker: broker.clone(),
            key_prefix: format!(
                "{}.{}.{kind}",
                token(&broker.namespace, broker)?,
                token(&broker.name, broker)?
            ),
            timeout,
            revisions: std::sync::Mutex::new(HashMap::new()),
        })
    }

    fn key(&self, trigger: &str, partition: u32) -> Result<String, ChannelError> {
        Ok(format!(
            "{}.{}.{partition}",
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

    async fn load_one(
        &self,
        trigger: &str,
        partition: u32,
    ) -> Result<Option<Offset>, ChannelError> {
        Ok(self
            .read(trigger, &self.key(trigger, partition)?)
            .await?
            .map(|(_, offset, _)| offset))
    }

    /// The key's entry: revision, offset and epoch, `None` where there is none.
    async fn read(
        &self,
        trigger: &str,
        key: &str,
    ) -> Result<Option<(u64, Offset, Epoch)>, ChannelError> {
        let got = tokio::time::timeout(self.timeout, self.store.entry(key))
            .await
            .map_err(|_| self.unavailable(trigger, "timed out reading it"))?
            .map_err(|e| self.unavailable(trigger, e))?;
        let Some(entry) = got.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        match std::str::from_utf8(&entry.value)
            .ok()
            .and_then(decode_checkpoint)
        {
            Some((offset, epoch)) => Ok(Some((entry.revision, offset, epoch))),
            None => {
                // Never guess forward: replaying from the start duplicates, skipping loses.
                tracing::error!(broker = %self.broker, trigger, key,
                    "checkpoint is unreadable; the partition restarts from the earliest retained event");
                Ok(Some((entry.revision, 0, NO_EPOCH)))
            }
        }
    }

    /// Deletes every partition's key of `trigger` (a delete marker: a later
    /// `create` of a re-added trigger succeeds, a read finds nothing).
    pub(super) async fn delete(&self, trigger: &str, partitions: u32) -> Result<(), ChannelError> {
        let deletes = (0..partitions).map(|p| async move {
            let key = self.key(trigger, p)?;
            tokio::time::timeout(self.timeout, self.store.delete(&key))
                .await
                .map_err(|_| self.unavailable(trigger, "timed out deleting it"))?
                .map_err(|e| self.unavailable(trigger, e))?;
            self.revisions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            Ok::<(), ChannelError>(())
        });
        try_join_all(deletes).await.map(drop)
    }

    fn known_revision(&self, key: &str) -> Option<u64> {
        self.revisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    fn remember(&self, key: &str, revision: u64) {
        self.revisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), revision);
    }

    async fn store_one(&self, trigger: &str, u: &CheckpointUpdate) -> Result<(), ChannelError> {
        let key = self.key(trigger, u.partition)?;
        let value = Bytes::from(encode_checkpoint(u.offset, u.epoch));
        let mut known = self.known_revision(&key);
        for _ in 0..CAS_ATTEMPTS {
            let revision = match known.take() {
                Some(r) => r,
                None => match self.read(trigger, &key).await? {
                    Some((r, _, current)) => {
                        fence(&self.broker, trigger, u, current)?;
                        r
                    }
                    None => {
                        let created = tokio::time::timeout(
                            self.timeout,
                            self.store.create(&key, value.clone()),
                        )
                        .await
                        .map_err(|_| self.unavailable(trigger, "timed out storing it"))?;
                        match created {
                            Ok(r) => {
                                self.remember(&key, r);
                                return Ok(());
                            }
                            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                            Err(e) => return Err(self.unavailable(trigger, e)),
                        }
                    }
                },
            };
            let updated = tokio::time::timeout(
                self.timeout,
                self.store.update(&key, value.clone(), revision),
            )
            .await
            .map_err(|_| self.unavailable(trigger, "timed out storing it"))?;
            match updated {
                Ok(r) => {
                    self.remember(&key, r);
                    return Ok(());
                }
                // Another process wrote it since: read it back and decide.
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(self.unavailable(trigger, e)),
            }
        }
        Err(self.unavailable(
            trigger,
            format!(
                "partition {}: changed by other processes {CAS_ATTEMPTS} times while storing it",
                u.partition
            ),
        ))
    }
}

#[async_trait]
impl CheckpointStore for Checkpoints {
    /// Every partition's checkpoint, read concurrently.
    async fn load(
        &self,
        trigger: &str,
        partitions: u32,
    ) -> Result<Vec<Option<Offset>>, ChannelError> {
        let reads = (0..partitions).map(|p| self.load_one(trigger, p));
        try_join_all(reads).await
    }

    /// Stores the given partitions' checkpoints, concurrently, each fenced by its
    /// epoch (see the module docs).
    async fn store(&self, trigger: &str, updates: &[CheckpointUpdate]) -> Result<(), ChannelError> {
        try_join_all(updates.iter().map(|u| self.store_one(trigger, u)))
            .await
            .map(drop)
    }

    /// Creates the given partitions' checkpoints where none exists.
    async fn init(&self, trigger: &str, initial: &[(u32, Offset)]) -> Result<(), ChannelError> {
        let creates = initial.iter().map(|&(p, offset)| async move {
            let key = self.key(trigger, p)?;
            let created = tokio::time::timeout(
                self.timeout,
                self.store.create(key, Bytes::from(offset.to_string())),
            )
            .await
            .map_err(|_| self.unavailable(trigger, "timed out creating it"))?;
            match created {
                Ok(_) => Ok(()),
                // Another process stored one first: it wins.
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(self.unavailable(trigger, e)),
            }
        });
        try_join_all(creates).await.map(drop)
    }
}
