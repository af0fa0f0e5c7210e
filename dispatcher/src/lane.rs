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

use crate::checkpoints::Mark;
use crate::deliver::HttpClient;
use crate::fanout::{Item, Partition};
use crate::held::{Held, LaneCharge};
use crate::roster::{Run, SlotHandle};
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
    /// Its queue length.
    pub queue: usize,
    /// The delivery client.
    pub client: HttpClient,
    /// How long a stopping lane waits for deliveries in flight.
    pub drain: Duration,
}

/// Why [`run_lane`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneEnd {
    /// The partition stops (shutdown, handed over, lost).
    Stopped,
    /// The trigger changed, was removed or deleted: every event the lane took is
    /// settled (within the drain timeout) and its mark is exact.
    Changed,
    /// Its queue closed (its readers are gone).
    Closed,
}

/// Runs the lanes of one trigger slot on one partition, one incarnation after
/// another, until the partition stops or the slot is deleted:
///
/// - while the trigger is [`Run::Active`], a lane fed by a catch-up reader from
///   its done mark (which joins the shared reader at the end of the log);
/// - on a config change, that lane stops taking events, settles the ones it took
///   and the next incarnation starts from the mark it left: each event is handled
///   under exactly one of the two configs, none twice, none skipped;
/// - while the trigger is [`Run::Removed`] (its grace period), nothing runs and the
///   mark stays where it stopped, for a re-add to resume from.
///
/// A lane that ends for any other reason (a panic outside a delivery, its readers
/// gone) is logged at ERROR, counted (`triggerfish_dispatcher_lane_failures{kind=
/// "restart"}`) and started again from its mark after a backoff of 100 ms doubling
/// to 5 s: events it had in flight are delivered again, none is skipped.
pub async fn supervise(slot: Arc<SlotHandle>, partition: u32, spec: LaneSpec) {
    let token = spec.ctx.shutdown.clone();
    let mut runs = slot.subscribe();
    let mut wait = Duration::from_millis(100);
    loop {
        let run = runs.borrow_and_update().clone();
        let rt = match run {
            Run::Active(rt) => rt,
            Run::Deleted => return,
            Run::Removed => {
                tokio::select! {
                    () = token.cancelled() => return,
                    changed = runs.changed() => if changed.is_err() { return },
                }
                continue;
            }
        };
        let mark = slot.marks.mark(partition);
        let from = mark.reached();
        let (tx, rx) = mpsc::channel(spec.queue.max(1));
        spec.ctx.tasks.spawn(crate::fanout::catch_up(
            spec.ctx.clone(),
            slot.slot,
            rt.lane.clone(),
            from,
            tx,
        ));
        let ended = AssertUnwindSafe(run_lane(
            rt.clone(),
            partition,
            mark,
            rx,
            &spec.client,
            &token,
            &mut runs,
            spec.drain,
        ))
        .catch_unwind()
        .await;
        if token.is_cancelled() {
            return;
        }
        let why = match ended {
            Ok(LaneEnd::Changed) => {
                wait = Duration::from_millis(100);
                continue;
            }
            Ok(LaneEnd::Stopped) => return,
            Ok(LaneEnd::Closed) => "its event queue closed".to_owned(),
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

/// Runs one lane from its done mark until the partition stops (`shutdown`) or the
/// trigger changes (`runs`), then waits up to `drain` for deliveries in flight. On a
/// change, events waiting for their key are settled too, so that the mark is exact
/// and the next incarnation redelivers nothing.
#[allow(clippy::too_many_arguments)]
pub async fn run_lane(
    rt: Arc<TriggerRuntime>,
    partition: u32,
    mark: &Mark,
    mut rx: mpsc::Receiver<Item>,
    client: &HttpClient,
    shutdown: &CancellationToken,
    runs: &mut tokio::sync::watch::Receiver<Run>,
    drain: Duration,
) -> LaneEnd {
    let ordered = rt.cfg.order == DeliveryOrder::Ordered;
    let limit = rt.cfg.concurrency.max(1);
    let mut tracker = DoneTracker::new(mark.reached());
    let mut in_flight: FuturesUnordered<InFlight<'_>> = FuturesUnordered::new();
    let mut keys = KeyQueues::default();
    let publish = |t: &DoneTracker, delivered: bool| mark.publish(t.checkpoint(), delivered);
    let rt = &*rt;
    let end = loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break LaneEnd::Stopped,
            _ = runs.changed() => break LaneEnd::Changed,
            Some((offset, key, settled)) = in_flight.next(), if !in_flight.is_empty() => {
                if settled == Settled::Abandoned {
                    // Shutdown: not done (delivered again after a restart), and no
                    // later event of its key may go before it.
                    continue;
                }
                tracker.done(offset);
                publish(&tracker, true);
                if let Some(key) = key {
                    next_of_key(rt, client, &mut keys, &mut in_flight, key);
                }
            }
            item = rx.recv(), if in_flight.len() + keys.len < limit => match item {
                Some(Item::Event(offset, event, charge)) => {
                    tracker.started(offset);
                    if !ordered {
                        in_flight.push(settle_one(rt, client, offset, event, charge, None));
                    } else {
                        let key = key_of(&event);
                        if keys.in_flight.contains(&key) {
                            keys.waiting.entry(key).or_default().push_back((offset, event, charge));
                            keys.len += 1;
                        } else {
                            keys.in_flight.insert(key.clone());
                            in_flight.push(settle_one(rt, client, offset, event, charge, Some(key)));
                        }
                    }
                }
                Some(Item::Skip(offset)) => {
                    tracker.skip_to(offset);
                    publish(&tracker, false);
                }
                None => break LaneEnd::Closed,
            }
        }
    };
    // Draining: no new events; let deliveries in flight finish within the deadline.
    // On shutdown, events still waiting for their key are not started (redelivered
    // after restart); on a change they are, so that none is delivered twice.
    let whole = end == LaneEnd::Changed;
    let deadline = tokio::time::sleep(drain);
    tokio::pin!(deadline);
    while !in_flight.is_empty() {
        tokio::select! {
            Some((offset, key, settled)) = in_flight.next() => {
                if settled != Settled::Abandoned {
                    tracker.done(offset);
                    publish(&tracker, true);
                    if let (true, Some(key)) = (whole, key) {
                        next_of_key(rt, client, &mut keys, &mut in_flight, key);
                    }
                }
            }
            () = &mut deadline => {
                tracing::warn!(trigger = %rt.cfg.name, partition, in_flight = in_flight.len(),
                    "drain deadline reached; unfinished deliveries will be delivered again");
                break;
            }
        }
    }
    end
}

/// Ordered: the event of `key` in flight is done; the next one of that key goes.
fn next_of_key<'a>(
    rt: &'a TriggerRuntime,
    client: &'a HttpClient,
    keys: &mut KeyQueues,
    in_flight: &mut FuturesUnordered<InFlight<'a>>,
    key: Box<str>,
) {
    let next = keys.waiting.get_mut(&key).and_then(VecDeque::pop_front);
    match next {
        Some((o, e, charge)) => {
            keys.len -= 1;
            in_flight.push(settle_one(rt, client, o, e, charge, Some(key)));
        }
        None => {
            keys.waiting.remove(&key);
            keys.in_flight.remove(&key);
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
