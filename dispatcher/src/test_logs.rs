//! Test-only logs.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use broker::channel::{BrokerLog, ChannelError, CheckpointUpdate, LogReader, Offset, StartAt};
use broker::config::BrokerId;
use broker::event::Event;

/// A log that keeps checkpoints, every store made and every event appended.
pub struct Recording {
    pub id: BrokerId,
    pub partitions: u32,
    /// The checkpoints stored.
    pub stored: Mutex<HashMap<(String, u32), Offset>>,
    pub stores: Mutex<Vec<(String, Vec<CheckpointUpdate>, bool)>>,
    /// Stores with an epoch below this are fenced.
    pub fence: AtomicU64,
    /// Appends fail (the channel is unavailable) while set.
    pub fail_appends: AtomicBool,
    /// Every event appended.
    pub appended: Mutex<Vec<Event>>,
    /// What `end_offset` answers for every partition.
    pub end: AtomicU64,
    /// Checkpoints deleted.
    pub deleted: Mutex<Vec<String>>,
}

impl Recording {
    pub fn new(partitions: u32) -> Arc<Recording> {
        Arc::new(Recording {
            id: BrokerId::new("ns", "b"),
            partitions,
            stored: Mutex::default(),
            stores: Mutex::default(),
            fence: AtomicU64::new(0),
            fail_appends: AtomicBool::new(false),
            appended: Mutex::default(),
            end: AtomicU64::new(0),
            deleted: Mutex::default(),
        })
    }

    pub fn take_stores(&self) -> Vec<(String, Vec<CheckpointUpdate>, bool)> {
        let mut v = std::mem::take(&mut *self.stores.lock().unwrap());
        v.sort();
        v
    }
}

#[async_trait]
impl BrokerLog for Recording {
    fn broker(&self) -> &BrokerId {
        &self.id
    }
    fn partitions(&self) -> u32 {
        self.partitions
    }
    async fn append(&self, events: &[Event]) -> Result<(), ChannelError> {
        if self.fail_appends.load(Ordering::Relaxed) {
            return Err(ChannelError::Unavailable {
                broker: self.id.clone(),
                reason: "test: appends fail".into(),
            });
        }
        self.appended.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
    async fn end_offset(&self, _partition: u32) -> Result<Offset, ChannelError> {
        Ok(self.end.load(Ordering::Relaxed))
    }
    async fn delete_checkpoint(&self, trigger: &str) -> Result<(), ChannelError> {
        self.stored.lock().unwrap().retain(|(t, _), _| t != trigger);
        self.deleted.lock().unwrap().push(trigger.to_owned());
        Ok(())
    }
    async fn reader(&self, _p: u32, _s: StartAt) -> Result<Box<dyn LogReader>, ChannelError> {
        Err(ChannelError::Internal("no reader".into()))
    }
    async fn load_checkpoint(&self, trigger: &str) -> Result<Vec<Option<Offset>>, ChannelError> {
        let stored = self.stored.lock().unwrap();
        Ok((0..self.partitions)
            .map(|p| stored.get(&(trigger.to_owned(), p)).copied())
            .collect())
    }
    async fn store_checkpoint(
        &self,
        trigger: &str,
        updates: &[CheckpointUpdate],
        durable: bool,
    ) -> Result<(), ChannelError> {
        let mut stored = self.stored.lock().unwrap();
        let fence = self.fence.load(Ordering::Relaxed);
        for u in updates {
            if u.epoch < fence {
                return Err(ChannelError::Fenced {
                    broker: self.id.clone(),
                    trigger: trigger.to_owned(),
                    partition: u.partition,
                    epoch: u.epoch,
                    current: fence,
                });
            }
        }
        for u in updates {
            stored.insert((trigger.to_owned(), u.partition), u.offset);
        }
        self.stores
            .lock()
            .unwrap()
            .push((trigger.to_owned(), updates.to_vec(), durable));
        Ok(())
    }
}
