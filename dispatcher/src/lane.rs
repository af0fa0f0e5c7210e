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
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::checkpoints::Mark;
use crate::fanout::{Attach, Item, Park, Partition, Request};
use crate::held::{Held, LaneCharge};
use crate::roster::{Run, RunWatch, SlotHandle};
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

/// How long an attached lane has nothing to do (no event received or in flight;
/// watermarks do not count) before it parks (see [`crate::fanout`]): long enough
/// that a trigger with steady traffic keeps its queue, short enough that idle ones
/// soon cost little.
pub const PARK_AFTER: Duration = Duration::from_secs(2);

/// What the lanes of one partition share besides their trigger: see [`supervise`].
pub struct LaneSpec {
    /// The partition's readers (the lane's catch-up reader is spawned there, its
    /// queue's length is there).
    pub ctx: Partition,
    /// How long a stopping lane waits for deliveries in flight.
    pub drain: Duration,
    /// How long an attached lane idles before it parks ([`PARK_AFTER`]).
    pub park_after: Duration,
}

/// Why [`run_lane`] returned.
#[derive(Debug)]
pub enum LaneEnd {
    /// It was idle and parked: the shared reader moves its mark and sends a new queue
    /// here on its next match (or drops this, and the lane starts from its mark).
    Parked(oneshot::Receiver<mpsc::Receiver<Item>>),
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
///
/// The task is small while its lane is parked or its trigger removed: the lane's
/// working state is boxed and exists only while it runs.
pub async fn supervise(slot: Arc<SlotHandle>, partition: u32, spec: Arc<LaneSpec>) {
    let mut state = Supervision {
        seen: 0,
        wait: Duration::from_millis(100),
        woken: None,
    };
    loop {
        // Everything but the wait of a parked lane runs boxed: the task itself
        // stays small (a 256-byte tokio task instead of 384 per idle lane).
        let next = Box::pin(step(&slot, partition, &spec, &mut state)).await;
        match next {
            Next::Again => {}
            Next::Stop => return,
            Next::Parked(incarnation, wake) => {
                // A dropped wake: the trigger changed or the reader restarted (or
                // the partition stops): start again from the mark.
                if let Ok(rx) = wake.await {
                    state.woken = Some((incarnation, rx));
                }
                if spec.ctx.shutdown.is_cancelled() {
                    return;
                }
            }
        }
    }
}

/// What [`supervise`] keeps between its steps.
struct Supervision {
    /// The slot's run version last seen.
    seen: u64,
    /// The restart backoff.
    wait: Duration,
    /// The queue a parked lane was woken with, and the incarnation it was parked in.
    woken: Option<(u64, mpsc::Receiver<Item>)>,
}

/// What [`supervise`] does after a [`step`].
enum Next {
    Again,
    Stop,
    /// Parked in this incarnation: wait for the queue of its next match.
    Parked(u64, oneshot::Receiver<mpsc::Receiver<Item>>),
}

/// One turn of [`supervise`]: runs the slot's lane until it changes, parks or ends.
async fn step(
    slot: &Arc<SlotHandle>,
    partition: u32,
    spec: &LaneSpec,
    st: &mut Supervision,
) -> Next {
    let mut runs = slot.watch_from(st.seen);
    let next = turn(slot, partition, spec, &mut runs, st).await;
    st.seen = runs.seen();
    next
}

async fn turn(
    slot: &Arc<SlotHandle>,
    partition: u32,
    spec: &LaneSpec,
    runs: &mut RunWatch<'_>,
    st: &mut Supervision,
) -> Next {
    let token = &spec.ctx.shutdown;
    let run = runs.borrow_and_update();
    let rt = match run {
        Run::Active(rt) => rt,
        Run::Deleted => return Next::Stop,
        Run::Removed => {
            tokio::select! {
                () = token.cancelled() => return Next::Stop,
                () = runs.changed() => return Next::Again,
            }
        }
    };
    let mark = slot.marks.mark(partition);
    let from = mark.reached();
    let rx = match st.woken.take() {
        // Woken in this incarnation: the shared reader feeds the queue.
        Some((incarnation, rx)) if incarnation == rt.lane.incarnation => rx,
        // New, changed (what a queue from the old incarnation holds is read again
        // from the mark), restarted: parked at once when the mark is where the
        // shared reader is, else a catch-up reader from the mark.
        _ => {
            if let Some(wake) = attach_parked(&spec.ctx, slot, &rt, from).await {
                return Next::Parked(rt.lane.incarnation, wake);
            }
            let (tx, rx) = mpsc::channel(spec.ctx.lane_queue.max(1));
            spec.ctx.tasks.spawn(crate::fanout::catch_up(
                spec.ctx.clone(),
                slot.slot,
                rt.lane.clone(),
                from,
                tx,
            ));
            rx
        }
    };
    // Boxed: the lane's working state exists only while it runs (a turn that only
    // parks allocates little, and frees it at once).
    let ended = Box::pin(
        AssertUnwindSafe(run_lane(rt.clone(), partition, slot, rx, spec, runs)).catch_unwind(),
    )
    .await;
    if token.is_cancelled() {
        return Next::Stop;
    }
    let why = match ended {
        Ok(LaneEnd::Changed) => {
            st.wait = Duration::from_millis(100);
            return Next::Again;
        }
        Ok(LaneEnd::Parked(wake)) => {
            st.wait = Duration::from_millis(100);
            return Next::Parked(rt.lane.incarnation, wake);
        }
        Ok(LaneEnd::Stopped) => return Next::Stop,
        Ok(LaneEnd::Closed) => "its event queue closed".to_owned(),
        Err(panic) => format!("it panicked: {}", panic_message(&*panic)),
    };
    rt.metrics.lane_failure(LaneFailure::restart);
    tracing::error!(broker = %rt.cfg.broker, trigger = %rt.cfg.name, partition, checkpoint = from,
        "lane ended while its partition is dispatched ({why}); restarting it from its checkpoint");
    tokio::select! {
        () = token.cancelled() => return Next::Stop,
        () = tokio::time::sleep(st.wait) => {}
    }
    st.wait = (st.wait * 2).min(Duration::from_secs(5));
    Next::Again
}

/// Asks the shared reader to attach this starting lane parked at `from`: where its
/// first queue comes when granted.
async fn attach_parked(
    ctx: &Partition,
    slot: &SlotHandle,
    rt: &TriggerRuntime,
    from: Offset,
) -> Option<oneshot::Receiver<mpsc::Receiver<Item>>> {
    let (wake, woken) = oneshot::channel();
    let (reply, answer) = oneshot::channel();
    let attach = Attach {
        lane: slot.slot,
        info: rt.lane.clone(),
        from,
        marks: slot.marks.clone(),
        wake,
        reply,
    };
    // Without a send future in this one's state when there is room (the usual case):
    // every starting lane passes here.
    match ctx.joins.try_send(Request::Attach(attach)) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(request)) => {
            Box::pin(ctx.joins.send(request)).await.ok()?;
        }
        Err(mpsc::error::TrySendError::Closed(_)) => return None,
    }
    answer.await.unwrap_or(false).then_some(woken)
}

/// Asks the shared reader to park this lane: `Ok` with where its next queue comes,
/// `Err(Some(rx))` refused (keep going), `Err(None)` the reader is gone.
async fn park(
    ctx: &Partition,
    slot: &SlotHandle,
    incarnation: u64,
    rx: mpsc::Receiver<Item>,
) -> Result<oneshot::Receiver<mpsc::Receiver<Item>>, Option<mpsc::Receiver<Item>>> {
    let (wake, woken) = oneshot::channel();
    let (reply, answer) = oneshot::channel();
    let park = Park {
        lane: slot.slot,
        incarnation,
        rx,
        marks: slot.marks.clone(),
        wake,
        reply,
    };
    if ctx.joins.send(Request::Park(park)).await.is_err() {
        return Err(None);
    }
    match answer.await {
        Ok(Ok(())) => Ok(woken),
        Ok(Err(rx)) => Err(Some(rx)),
        Err(_) => Err(None),
    }
}

/// Runs one lane from its done mark until the partition stops, the trigger changes
/// (`runs`) or it parks, then waits up to the drain timeout for deliveries in flight.
/// On a change, events waiting for their key are settled too, so that the mark is
/// exact and the next incarnation redelivers nothing.
pub async fn run_lane(
    rt: Arc<TriggerRuntime>,
    partition: u32,
    slot: &SlotHandle,
    mut rx: mpsc::Receiver<Item>,
    spec: &LaneSpec,
    runs: &mut crate::roster::RunWatch<'_>,
) -> LaneEnd {
    let (shutdown, drain) = (&spec.ctx.shutdown, spec.drain);
    let mark: &Mark = slot.marks.mark(partition);
    let ordered = rt.cfg.order == DeliveryOrder::Ordered;
    let limit = rt.cfg.concurrency.max(1);
    let mut tracker = DoneTracker::new(mark.reached());
    let mut in_flight: FuturesUnordered<InFlight<'_>> = FuturesUnordered::new();
    let mut keys = KeyQueues::default();
    let publish = |t: &DoneTracker, delivered: bool| mark.publish(t.checkpoint(), delivered);
    let rt = &*rt;
    // When it last had something to do.
    let mut busy = Instant::now();
    let end = loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break LaneEnd::Stopped,
            () = runs.changed() => break LaneEnd::Changed,
            () = tokio::time::sleep_until(busy + spec.park_after),
                if in_flight.is_empty() && keys.len == 0 => {
                match park(&spec.ctx, slot, rt.lane.incarnation, rx).await {
                    // Nothing is in flight, nothing waits: the mark is exact.
                    Ok(wake) => return LaneEnd::Parked(wake),
                    Err(Some(back)) => {
                        rx = back;
                        busy = Instant::now();
                    }
                    Err(None) => break LaneEnd::Closed,
                }
            }
            Some((offset, key, settled)) = in_flight.next(), if !in_flight.is_empty() => {
                busy = Instant::now();
                if settled == Settled::Abandoned {
                    // Shutdown: not done (delivered again after a restart), and no
                    // later event of its key may go before it.
                    continue;
                }
                tracker.done(offset);
                publish(&tracker, true);
                if let Some(key) = key {
                    next_of_key(rt, &mut keys, &mut in_flight, key);
                }
            }
            item = rx.recv(), if in_flight.len() + keys.len < limit => match item {
                Some(Item::Event(offset, event, charge)) => {
                    busy = Instant::now();
                    tracker.started(offset);
                    if !ordered {
                        in_flight.push(settle_one(rt, offset, event, charge, None));
                    } else {
                        let key = key_of(&event);
                        if keys.in_flight.contains(&key) {
                            keys.waiting.entry(key).or_default().push_back((offset, event, charge));
                            keys.len += 1;
                        } else {
                            keys.in_flight.insert(key.clone());
                            in_flight.push(settle_one(rt, offset, event, charge, Some(key)));
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
    let whole = matches!(end, LaneEnd::Changed);
    let deadline = tokio::time::sleep(drain);
    tokio::pin!(deadline);
    while !in_flight.is_empty() {
        tokio::select! {
            Some((offset, key, settled)) = in_flight.next() => {
                if settled != Settled::Abandoned {
                    tracker.done(offset);
                    publish(&tracker, true);
                    if let (true, Some(key)) = (whole, key) {
                        next_of_key(rt, &mut keys, &mut in_flight, key);
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
    keys: &mut KeyQueues,
    in_flight: &mut FuturesUnordered<InFlight<'a>>,
    key: Box<str>,
) {
    let next = keys.waiting.get_mut(&key).and_then(VecDeque::pop_front);
    match next {
        Some((o, e, charge)) => {
            keys.len -= 1;
            in_flight.push(settle_one(rt, o, e, charge, Some(key)));
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
        let settled = match AssertUnwindSafe(settle(rt, &event)).catch_unwind().await {
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
