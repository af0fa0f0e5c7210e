//! A lane: one trigger on one partition, with its own queue, concurrency limit, retry
//! state and checkpoint (ARCHITECTURE.md, contract 3).
//!
//! The lane takes [`Item`]s from its queue while fewer than its limit are in flight,
//! settles each on its own (delivery with retries, reply, dead letter: see
//! [`crate::settle`]), and moves its checkpoint over the contiguous prefix of offsets
//! that are done ([`DoneTracker`]), so an event is never skipped by the checkpoint
//! while it is still being delivered (contract 2).
//!
//! In ordered mode an event waits while another event with the same `partitionkey`
//! (events without one share the empty key) is in flight, retries included, so each
//! key's events reach the subscriber strictly in append order; different keys still
//! proceed concurrently up to the limit.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use broker::channel::Offset;
use broker::config::DeliveryOrder;
use broker::event::Event;
use broker::telemetry::LaneFailure;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::checkpoints::{Book, Mark};
use crate::deliver::HttpClient;
use crate::fanout::{Item, Partition};
use crate::held::{Held, LaneCharge};
use crate::settle::{after_panic, panic_message, settle, Settled};
use crate::trigger::TriggerRuntime;

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

/// An event waiting for its key, with its trigger's charge.
type Waiting = (Offset, Arc<Held>, LaneCharge);

/// Events held back in ordered mode because an event with the same partition key is
/// in flight, in arrival (offset) order per key.
#[derive(Default)]
struct KeyQueues {
    waiting: HashMap<Box<str>, VecDeque<Waiting>>,
    in_flight: HashSet<Box<str>>,
    len: usize,
}

fn key_of(event: &Event) -> Box<str> {
    let mut buf = String::new();
    event.partition_key(&mut buf).unwrap_or("").into()
}

/// What a lane needs besides its trigger: see [`supervise`].
pub struct LaneSpec {
    /// The partition's readers (the lane's catch-up reader is spawned there).
    pub ctx: Partition,
    /// The lane's index among the broker's triggers.
    pub lane: usize,
    /// Its queue length.
    pub queue: usize,
    /// The delivery client.
    pub client: HttpClient,
    /// How long a stopping lane waits for deliveries in flight.
    pub drain: Duration,
}

/// Runs one lane (and feeds it from a catch-up reader at its checkpoint) until the
/// partition stops. A lane that ends for any other reason (a panic outside a
/// delivery, its readers gone) is logged at ERROR, counted
/// (`triggerfish_dispatcher_lane_failures{kind="restart"}`) and started again from
/// its checkpoint, after a backoff of 100 ms doubling to 5 s: events it had in
/// flight are delivered again, none is skipped.
pub async fn supervise(rt: Arc<TriggerRuntime>, book: Arc<Book>, partition: u32, spec: LaneSpec) {
    let token = spec.ctx.shutdown.clone();
    let mut wait = Duration::from_millis(100);
    loop {
        let mark = book.mark(spec.lane, partition);
        let from = mark.reached();
        let (tx, rx) = mpsc::channel(spec.queue.max(1));
        spec.ctx.tasks.spawn(crate::fanout::catch_up(
            spec.ctx.clone(),
            spec.lane,
            from,
            tx,
        ));
        let ended = AssertUnwindSafe(run_lane(
            rt.clone(),
            partition,
            mark,
            rx,
            spec.client.clone(),
            token.clone(),
            spec.drain,
        ))
        .catch_unwind()
        .await;
        if token.is_cancelled() {
            return;
        }
        let why = match ended {
            Ok(()) => "its event queue closed".to_owned(),
            Err(panic) => format!("it panicked: {}", panic_message(&*panic)),
        };
        rt.metrics.lane_failure(LaneFailure::restart);
        tracing::error!(broker = %rt.cfg.broker, trigger = %rt.cfg.name, partition, checkpoint = from,
            "lane ended while its partition is dispatched ({why}); restarting it from its checkpoint");
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Runs one lane from its done mark until shutdown, then waits up to `drain` for
/// deliveries in flight.
pub async fn run_lane(
    rt: Arc<TriggerRuntime>,
    partition: u32,
    mark: &Mark,
    mut rx: mpsc::Receiver<Item>,
    client: HttpClient,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let ordered = rt.cfg.order == DeliveryOrder::Ordered;
    let limit = rt.cfg.concurrency.max(1);
    let mut tracker = DoneTracker::new(mark.reached());
    let mut in_flight: FuturesUnordered<InFlight<'_>> = FuturesUnordered::new();
    let mut keys = KeyQueues::default();
    let publish = |t: &DoneTracker, delivered: bool| mark.publish(t.checkpoint(), delivered);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some((offset, key, settled)) = in_flight.next(), if !in_flight.is_empty() => {
                if settled == Settled::Abandoned {
                    // Shutdown: not done (delivered again after a restart), and no
                    // later event of its key may go before it.
                    continue;
                }
                tracker.done(offset);
                publish(&tracker, true);
                if let Some(key) = key {
                    // Ordered: the next event of this key may go now.
                    let next = keys.waiting.get_mut(&key).and_then(VecDeque::pop_front);
                    match next {
                        Some((o, e, charge)) => {
                            keys.len -= 1;
                            in_flight.push(settle_one(&rt, &client, o, e, charge, Some(key)));
                        }
                        None => {
                            keys.waiting.remove(&key);
                            keys.in_flight.remove(&key);
                        }
                    }
                }
            }
            item = rx.recv(), if in_flight.len() + keys.len < limit => match item {
                Some(Item::Event(offset, event, charge)) => {
                    tracker.started(offset);
                    if !ordered {
                        in_flight.push(settle_one(&rt, &client, offset, event, charge, None));
                    } else {
                        let key = key_of(&event);
                        if keys.in_flight.contains(&key) {
                            keys.waiting.entry(key).or_default().push_back((offset, event, charge));
                            keys.len += 1;
                        } else {
                            keys.in_flight.insert(key.clone());
                            in_flight.push(settle_one(&rt, &client, offset, event, charge, Some(key)));
                        }
                    }
                }
                Some(Item::Skip(offset)) => {
                    tracker.skip_to(offset);
                    publish(&tracker, false);
                }
                None => break,
            }
        }
    }
    // Draining: no new events; let deliveries in flight finish within the deadline.
    // Events still waiting for their key are not started (redelivered after restart).
    let deadline = tokio::time::sleep(drain);
    tokio::pin!(deadline);
    while !in_flight.is_empty() {
        tokio::select! {
            Some((offset, _, settled)) = in_flight.next() => {
                if settled != Settled::Abandoned {
                    tracker.done(offset);
                    publish(&tracker, true);
                }
            }
            () = &mut deadline => {
                tracing::warn!(trigger = %rt.cfg.name, partition, in_flight = in_flight.len(),
                    "shutdown deadline reached; unfinished deliveries will be redelivered after restart");
                break;
            }
        }
    }
}

/// A delivery in flight: boxed, because the settle future is large (about 2 KiB) and
/// `FuturesUnordered` keeps one inline even when empty, which for 1,000 triggers on 4
/// partitions was 7.7 MiB of idle memory.
type InFlight<'a> = Pin<Box<dyn Future<Output = (Offset, Option<Box<str>>, Settled)> + Send + 'a>>;

fn settle_one<'a>(
    rt: &'a TriggerRuntime,
    client: &'a HttpClient,
    offset: Offset,
    event: Arc<Held>,
    charge: LaneCharge,
    key: Option<Box<str>>,
) -> InFlight<'a> {
    Box::pin(async move {
        // The trigger's bytes for this event are given back once it is settled.
        let _charge = charge;
        // A panic while encoding or delivering this event must not end the lane (and
        // with it the trigger): the event goes to the dead-letter log instead.
        let settled = match AssertUnwindSafe(settle(rt, client, &event))
            .catch_unwind()
            .await
        {
            Ok(settled) => settled,
            Err(panic) => after_panic(rt, &event, &panic_message(&*panic)).await,
        };
        // Counted here, once per event, whatever path settled it.
        settled.count(&rt.metrics);
        (offset, key, settled)
    })
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
