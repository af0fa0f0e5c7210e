//! A lane: one trigger on one partition, with its own queue, concurrency limit, retry
//! state and checkpoint (ARCHITECTURE.md, contract 3).
//!
//! The lane takes [`Item`]s from its queue while fewer than its limit are in flight,
//! delivers each on its own (retries included), and moves its checkpoint over the
//! contiguous prefix of offsets that are done ([`DoneTracker`]), so an event is never
//! skipped by the checkpoint while it is still being delivered (contract 2).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use broker::channel::Offset;
use broker::config::{DeliveryOrder, TriggerConfig};
use broker::event::Event;
use broker::telemetry::TriggerMetrics;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::deliver::{deliver, HttpClient};
use crate::fanout::Item;

/// Tracks which offsets are done and yields the checkpoint: the lowest offset not yet
/// done (everything below it is delivered or did not match).
#[derive(Debug)]
pub struct DoneTracker {
    pending: BTreeSet<Offset>,
    seen_upto: Offset,
}

impl DoneTracker {
    /// Starts at a checkpoint.
    pub fn new(start: Offset) -> DoneTracker {
        DoneTracker {
            pending: BTreeSet::new(),
            seen_upto: start,
        }
    }

    /// An event at `offset` was received and is in progress.
    pub fn started(&mut self, offset: Offset) {
        self.pending.insert(offset);
        self.seen_upto = self.seen_upto.max(offset + 1);
    }

    /// Nothing below `offset` is still to come.
    pub fn skip_to(&mut self, offset: Offset) {
        self.seen_upto = self.seen_upto.max(offset);
    }

    /// The event at `offset` is done.
    pub fn done(&mut self, offset: Offset) {
        self.pending.remove(&offset);
    }

    /// The next offset to process after a restart.
    pub fn checkpoint(&self) -> Offset {
        self.pending.first().copied().unwrap_or(self.seen_upto)
    }
}

/// A trigger as the dispatcher runs it.
pub struct TriggerRuntime {
    /// Its config.
    pub cfg: TriggerConfig,
    /// Its metrics.
    pub metrics: TriggerMetrics,
    /// Per partition, the checkpoint the lane last reached.
    pub checkpoint: Box<[AtomicU64]>,
}

/// Runs one lane until shutdown, then waits up to `drain` for deliveries in flight.
pub async fn run_lane(
    rt: Arc<TriggerRuntime>,
    partition: u32,
    start: Offset,
    mut rx: mpsc::Receiver<Item>,
    client: HttpClient,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let limit = match rt.cfg.order {
        // One at a time keeps append order (per key and overall) until per-key
        // ordering lands.
        DeliveryOrder::Ordered => 1,
        DeliveryOrder::Unordered => rt.cfg.concurrency,
    };
    let mut tracker = DoneTracker::new(start);
    let mut in_flight = FuturesUnordered::new();
    let slot = &rt.checkpoint[partition as usize];
    let publish = |t: &DoneTracker| slot.store(t.checkpoint(), Ordering::Release);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(offset) = in_flight.next(), if !in_flight.is_empty() => {
                tracker.done(offset);
                publish(&tracker);
            }
            item = rx.recv(), if in_flight.len() < limit => match item {
                Some(Item::Event(offset, event)) => {
                    tracker.started(offset);
                    in_flight.push(deliver_one(&rt, &client, offset, event));
                }
                Some(Item::Skip(offset)) => {
                    tracker.skip_to(offset);
                    publish(&tracker);
                }
                None => break,
            }
        }
    }
    // Draining: no new events; let deliveries in flight finish within the deadline.
    let deadline = tokio::time::sleep(drain);
    tokio::pin!(deadline);
    while !in_flight.is_empty() {
        tokio::select! {
            Some(offset) = in_flight.next() => {
                tracker.done(offset);
                publish(&tracker);
            }
            () = &mut deadline => {
                tracing::warn!(trigger = %rt.cfg.name, partition, in_flight = in_flight.len(),
                    "shutdown deadline reached; unfinished deliveries will be redelivered after restart");
                break;
            }
        }
    }
}

async fn deliver_one(
    rt: &TriggerRuntime,
    client: &HttpClient,
    offset: Offset,
    event: Arc<Event>,
) -> Offset {
    let cfg = &rt.cfg;
    let d = deliver(client, &cfg.subscriber, &cfg.delivery, &event).await;
    rt.metrics.attempts.inc_by(u64::from(d.attempts));
    rt.metrics.latency.observe(d.elapsed.as_secs_f64());
    if d.delivered {
        rt.metrics.delivered.inc();
    } else {
        rt.metrics.failed.inc();
        tracing::error!(
            broker = %cfg.broker,
            trigger = %cfg.name,
            event_id = event.id(),
            event_source = event.source(),
            status = ?d.last.status.map(|s| s.as_u16()),
            error = d.last.error.as_deref().unwrap_or(""),
            attempts = d.attempts,
            "delivery failed for good"
        );
    }
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_is_the_contiguous_done_prefix() {
        let mut t = DoneTracker::new(10);
        assert_eq!(t.checkpoint(), 10);
        t.started(12);
        t.started(15);
        assert_eq!(t.checkpoint(), 12, "12 is in flight");
        t.done(15);
        assert_eq!(t.checkpoint(), 12, "15 done but 12 is not");
        t.done(12);
        assert_eq!(t.checkpoint(), 16);
        t.skip_to(20);
        assert_eq!(t.checkpoint(), 20);
        t.skip_to(18);
        assert_eq!(t.checkpoint(), 20, "watermarks never move back");
        t.started(25);
        t.skip_to(30);
        assert_eq!(t.checkpoint(), 25);
    }
}
