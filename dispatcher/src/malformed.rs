//! Records in a broker's log that are not valid CloudEvents: written to a shared Kafka
//! topic or NATS stream by another producer, or damaged on disk.
//!
//! They never reach a trigger. Each is logged with where it is, counted
//! (`triggerfish_dispatcher_malformed_records`), and stored once in the broker's
//! dead-letter log as a wrapper event ([`wrapper`]) that keeps the record's bytes, so
//! an operator can inspect it with `triggerfish dlq` and nothing is silently dropped.
//!
//! "Once" per partition, not once per trigger: the partition's shared reader
//! dead-letters what it reads, and its progress is a checkpoint of its own,
//! [`MALFORMED_CURSOR`]. The shared reader starts at the end of the log, so when a
//! partition starts, [`scan`] first covers the records between that checkpoint and the
//! shared reader's start (read by no one else but the triggers' catch-up readers,
//! which skip malformed records). The checkpoint moves only past records already
//! dead-lettered: a crash repeats some (at least once), never skips one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use broker::channel::{BrokerLog, CheckpointUpdate, Epoch, Malformed, Offset, StartAt};
use broker::event::{DataKind, Event};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

/// The checkpoint name of a partition's malformed-record progress (`_` never occurs in
/// Kubernetes names, so no trigger can have it).
pub const MALFORMED_CURSOR: &str = "_malformed";
/// The `type` of a dead-letter entry that wraps a malformed record.
pub const MALFORMED_TYPE: &str = "dev.triggerfish.malformed";

/// Where malformed records go, for one broker.
pub struct Sink {
    /// The broker's log (for the source attribute and the checkpoint).
    pub events: Arc<dyn BrokerLog>,
    /// The broker's dead-letter log.
    pub dead_letters: Arc<dyn BrokerLog>,
    /// Malformed records found.
    pub counter: Counter,
    /// Entries waiting in the dead-letter log.
    pub backlog: Gauge,
}

/// The dead-letter entry for a malformed record: `type` [`MALFORMED_TYPE`], `source`
/// naming the broker and partition, `id` `<partition>-<offset>` (stable, so a repeat
/// after a crash is recognisable), the record's bytes as data, and the reason both in
/// [`broker::event::REASON`] and (base64, as for failed deliveries) in `knativeerrordata`.
pub fn wrapper(events: &dyn BrokerLog, partition: u32, offset: Offset, m: &Malformed) -> Event {
    let b = events.broker();
    let mut e = Event::new();
    e.set_str("specversion", "1.0");
    e.set_str("id", format!("{partition}-{offset}"));
    e.set_str(
        "source",
        format!(
            "/triggerfish/{}/{}/partitions/{partition}",
            b.namespace, b.name
        ),
    );
    e.set_str("type", MALFORMED_TYPE);
    e.set_str("datacontenttype", "application/octet-stream");
    // A reason from a foreign header may hold control characters: replaced.
    crate::dead_letter::set_reason(&mut e, &m.reason);
    e.set_data(DataKind::Binary, Some(m.data.clone().unwrap_or_default()));
    e
}

impl Sink {
    /// Logs, counts and dead-letters one malformed record, retrying until it is stored;
    /// false when shutdown came first (the record is then handled again after restart).
    pub async fn handle(
        &self,
        partition: u32,
        offset: Offset,
        m: &Malformed,
        shutdown: &CancellationToken,
    ) -> bool {
        tracing::error!(broker = %self.events.broker(), partition, offset, reason = %m.reason,
            "malformed record (not a CloudEvent): moved to the dead-letter log");
        self.counter.inc();
        let entry = wrapper(self.events.as_ref(), partition, offset, m);
        let stored =
            crate::dead_letter::store(self.dead_letters.as_ref(), &entry, "", shutdown).await;
        if stored.is_ok() {
            self.backlog.inc();
        }
        stored.is_ok()
    }

    /// Where this partition's malformed records were last handled up to; stores `start`
    /// when nothing is stored yet (a partition seen for the first time starts where its
    /// shared reader starts).
    pub async fn cursor(&self, partition: u32, start: Offset) -> Option<Offset> {
        let log = self.events.as_ref();
        match log.load_checkpoint(MALFORMED_CURSOR).await {
            Ok(c) => match c.get(partition as usize).copied().flatten() {
                Some(o) => Some(o),
                None => {
                    if let Err(e) = log
                        .init_checkpoint(MALFORMED_CURSOR, &[(partition, start)])
                        .await
                    {
                        tracing::warn!(broker = %log.broker(), partition, error = %e, "cannot store the malformed-record cursor");
                    }
                    Some(start)
                }
            },
            Err(e) => {
                tracing::warn!(broker = %log.broker(), partition, error = %e, "cannot load the malformed-record cursor; not scanning older records");
                None
            }
        }
    }

    /// Stores the cursor (records below `at` are handled), under the partition
    /// lease's `epoch`.
    pub async fn advance(&self, partition: u32, at: Offset, epoch: Epoch) {
        let log = self.events.as_ref();
        let update = CheckpointUpdate::new(partition, at, epoch);
        if let Err(e) = log
            .store_checkpoint(MALFORMED_CURSOR, &[update], false)
            .await
        {
            tracing::debug!(broker = %log.broker(), partition, error = %e, "cannot store the malformed-record cursor");
        }
    }
}

/// Dead-letters the malformed records in `[from, to)` of a partition, then sets `done`.
pub async fn scan(
    sink: Arc<Sink>,
    partition: u32,
    from: Offset,
    to: Offset,
    done: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut wait = Duration::from_millis(100);
    let mut at = from;
    'outer: while at < to {
        let mut reader = match sink.events.reader(partition, StartAt::Offset(at)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(broker = %sink.events.broker(), partition, error = %e, "cannot open the malformed-record scan; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        while reader.position() < to {
            let batch = tokio::select! {
                () = shutdown.cancelled() => return,
                b = reader.try_batch(256) => b,
            };
            let batch = match batch {
                Ok(b) if b.is_empty() => break 'outer,
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(broker = %sink.events.broker(), partition, error = %e, "malformed-record scan failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                    continue 'outer;
                }
            };
            if let Some(s) = reader.take_skipped() {
                tracing::error!(broker = %sink.events.broker(), partition, from = s.from, to = s.to, skipped = s.count,
                    "retention deleted records before the malformed-record scan read them");
            }
            for r in batch {
                if r.offset >= to {
                    break;
                }
                if let Err(m) = &r.event {
                    if !sink.handle(partition, r.offset, m, &shutdown).await {
                        return;
                    }
                }
                at = r.offset + 1;
            }
        }
        break;
    }
    done.store(true, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::channel::embedded::{EmbeddedLog, EmbeddedOptions};
    use broker::channel::EventLog;
    use broker::config::BrokerId;

    #[tokio::test]
    async fn wrapper_is_a_valid_event_that_keeps_the_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).expect("open");
        let id = BrokerId {
            namespace: "ns".into(),
            name: "b".into(),
        };
        let events = log
            .open(&id, broker::channel::LogKind::Events)
            .await
            .expect("broker");
        let m = Malformed {
            reason: "topic t partition 2 offset 7: header ce_id: given\nmore than once".into(),
            data: Some(bytes::Bytes::from_static(b"\xffgarbage")),
        };
        let e = wrapper(events.as_ref(), 2, 7, &m);
        broker::event::validate(&e).expect("valid CloudEvent");
        assert_eq!(e.id(), "2-7");
        assert_eq!(e.ty(), MALFORMED_TYPE);
        assert_eq!(e.source(), "/triggerfish/ns/b/partitions/2");
        assert_eq!(e.data().map(|d| &d[..]), Some(&b"\xffgarbage"[..]));
        assert_eq!(
            e.get_str(broker::event::REASON),
            Some("topic t partition 2 offset 7: header ce_id: given more than once")
        );
    }
}
