//! What the status API shows of a broker's triggers: lag per partition, counters,
//! the last delivery error; and the lag gauges.
//!
//! Lag is measured against the log's end: on a partition this process owns, from
//! the trigger's live done mark; on one another replica owns, from the stored
//! checkpoint (at most [`crate::CHECKPOINT_EVERY`] behind that replica's mark).
//! `behind` is the difference between the partition's end
//! ([`BrokerLog::partition_end`]) and the checkpoint: exact where offsets are dense
//! (the embedded log, Kafka), an upper bound where they have gaps (NATS with several
//! partitions), and 0 once the trigger has passed every record either way. The age
//! of the oldest undelivered event is read from the event at the checkpoint (its
//! `knativearrivaltime`), for at most [`AGE_READS`] partitions per call.

use std::time::{Duration, SystemTime};

use broker::channel::{BrokerLog, Offset, StartAt};
use broker::config::{BrokerId, TriggerConfig};

use crate::checkpoints::Book;
use crate::roster::{Roster, Table};
use crate::trigger::DeliveryError;

/// The most events read per status call to tell the age of the oldest undelivered.
pub const AGE_READS: usize = 1000;

/// One partition of a trigger.
#[derive(Debug, Clone)]
pub struct PartitionLag {
    /// The partition.
    pub partition: u32,
    /// Whether this process dispatches it now.
    pub owned: bool,
    /// The next offset the trigger processes; `None` when none is stored.
    pub checkpoint: Option<Offset>,
    /// The offset the next appended event gets.
    pub end: Offset,
    /// Events not yet passed (see the module docs).
    pub behind: u64,
    /// How long ago the oldest of them arrived, when known.
    pub oldest_age: Option<Duration>,
}

/// One trigger.
#[derive(Debug, Clone)]
pub struct TriggerStatus {
    /// Its name.
    pub name: String,
    /// Its config; `None` while removed (within its grace period).
    pub config: Option<std::sync::Arc<TriggerConfig>>,
    /// How long ago it was removed.
    pub removed_for: Option<Duration>,
    /// The config generation that last added or changed it.
    pub changed_in: u64,
    /// Lag per partition.
    pub partitions: Vec<PartitionLag>,
    /// Deliveries answered 2xx.
    pub delivered: u64,
    /// Events that went to the dead-letter sink or the broker's dead-letter log.
    pub dead_lettered: u64,
    /// Retries (attempts after the first).
    pub retried: u64,
    /// The last delivery that failed for good.
    pub last_error: Option<DeliveryError>,
}

/// One broker as this process dispatches it.
#[derive(Debug, Clone)]
pub struct BrokerStatus {
    /// The broker.
    pub id: BrokerId,
    /// Whether its coordinator runs (it has had a trigger).
    pub dispatching: bool,
    /// Its partitions.
    pub partitions: u32,
    /// The partitions this process dispatches now.
    pub owned: Vec<u32>,
    /// Its triggers, by name.
    pub triggers: Vec<TriggerStatus>,
}

/// The status of one broker's triggers.
pub(crate) async fn broker(
    id: &BrokerId,
    roster: &Roster,
    log: &dyn BrokerLog,
    dispatching: bool,
) -> BrokerStatus {
    let owned = roster.book().owned().await;
    let mut ends = Vec::with_capacity(owned.len());
    for p in 0..log.partitions() {
        ends.push(log.partition_end(p).await.ok());
    }
    let mut age_reads = AGE_READS;
    let mut triggers = Vec::new();
    let mut views = roster.views();
    views.sort_by(|a, b| a.handle.name.cmp(&b.handle.name));
    for v in views {
        let marks = v.handle.marks.reached();
        let stored = if owned.iter().all(|&o| o) {
            None
        } else {
            log.load_checkpoint(&v.handle.name).await.ok()
        };
        let mut partitions = Vec::with_capacity(marks.len());
        for (p, &mark) in marks.iter().enumerate() {
            let mine = owned.get(p).copied().unwrap_or(false);
            let checkpoint = if mine {
                Some(mark)
            } else {
                stored.as_ref().and_then(|s| s.get(p).copied().flatten())
            };
            let end = ends.get(p).copied().flatten().unwrap_or(0);
            let behind = checkpoint.map_or(0, |c| end.saturating_sub(c));
            let oldest_age = match checkpoint {
                Some(c) if behind > 0 && age_reads > 0 => {
                    age_reads -= 1;
                    arrived_ago(log, p as u32, c).await
                }
                _ => None,
            };
            partitions.push(PartitionLag {
                partition: p as u32,
                owned: mine,
                checkpoint,
                end,
                behind,
                oldest_age,
            });
        }
        let m = &v.handle.metrics;
        triggers.push(TriggerStatus {
            name: v.handle.name.to_string(),
            config: v.config,
            removed_for: v.removed_for,
            changed_in: v.changed_in,
            partitions,
            delivered: m.delivered.get(),
            dead_lettered: {
                let (sink, log) = m.dead_letter_counts();
                sink + log
            },
            retried: m.retries.get(),
            last_error: v.handle.health.last_error(),
        });
    }
    BrokerStatus {
        id: id.clone(),
        dispatching,
        partitions: log.partitions(),
        owned: owned
            .iter()
            .enumerate()
            .filter_map(|(p, &o)| o.then_some(p as u32))
            .collect(),
        triggers,
    }
}

/// How long ago the event at `offset` arrived (its `knativearrivaltime`, else its
/// `time`).
async fn arrived_ago(log: &dyn BrokerLog, partition: u32, offset: Offset) -> Option<Duration> {
    let mut reader = log.reader(partition, StartAt::Offset(offset)).await.ok()?;
    let batch = reader.try_batch(1).await.ok()?;
    let event = batch.into_iter().next()?.event.ok()?;
    let text = event
        .get_str(broker::event::ARRIVAL_TIME)
        .or_else(|| event.get_str("time"))?
        .to_owned();
    let at: jiff::Timestamp = text.parse().ok()?;
    let at = SystemTime::from(at);
    Some(SystemTime::now().duration_since(at).unwrap_or_default())
}

/// Sets each configured trigger's lag gauge: events behind on the partitions this
/// process owns.
pub(crate) async fn set_lag_gauges(table: &Table, book: &Book, log: &dyn BrokerLog) {
    let owned = book.owned().await;
    let mut ends = Vec::with_capacity(owned.len());
    for (p, &mine) in owned.iter().enumerate() {
        ends.push(if mine {
            log.partition_end(p as u32).await.ok()
        } else {
            None
        });
    }
    for (slot, handle) in table.slots.iter().enumerate() {
        let Some(handle) = handle else { continue };
        if table.lanes.get(slot).and_then(Option::as_ref).is_none() {
            handle.metrics.lag.set(0);
            continue;
        }
        let behind: u64 = ends
            .iter()
            .enumerate()
            .filter_map(|(p, end)| {
                Some(
                    end.as_ref()?
                        .saturating_sub(handle.marks.mark(p as u32).reached()),
                )
            })
            .sum();
        handle.metrics.lag.set(behind.min(i64::MAX as u64) as i64);
    }
}
