//! One read per event per partition: the shared reader, and the catch-up readers of
//! lanes that fell behind.
//!
//! Every lane (one trigger on one partition) consumes a single bounded queue of
//! [`Item`]s. The *sender* of that queue has exactly one owner at a time, which is
//! what keeps each lane's events in offset order:
//!
//! - the partition's **shared reader**, while the lane is attached: it reads each
//!   event once, evaluates every attached trigger's filter, and `try_send`s matches;
//! - the lane's own **catch-up reader**, while it is detached: it reads the log from
//!   the lane's position, filters for that one trigger, and `send`s with backpressure.
//!
//! A lane whose queue is full when the shared reader has a match for it is detached
//! at that event's offset: the sender moves to a new catch-up reader starting there,
//! so the shared reader never waits for a slow subscriber. When a catch-up reader
//! reaches the end of the log it asks to rejoin at its position; the shared reader
//! either back-fills the few events it has read past that position and takes the
//! sender over, or (when it is behind) takes it with "skip below" set. Both readers
//! also send [`Item::Skip`] watermarks so a lane's checkpoint moves past events that
//! did not match its filter.
//!
//! An attached lane that has had nothing to do for [`crate::lane::PARK_AFTER`]
//! *parks*: it hands its empty queue back to the shared reader ([`Park`]) and its
//! task shrinks to a wait for a wake-up, so an idle trigger costs neither a queue nor
//! a lane's working state (10,000 idle triggers were 33 MiB of it). While a lane is
//! parked the shared reader moves its done mark itself (nothing of it is in flight,
//! so the mark is exactly the reader's position), and on its next match gives it a
//! new queue holding that event. Only one of the two ever moves a lane's mark.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use broker::channel::{BrokerLog, LogReader, Offset, Record, StartAt};
use broker::config::BrokerId;
use broker::filter::Filter;
use futures_util::FutureExt;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::held::{size_of, BatchSize, Held, LaneAccount, LaneCharge};
use crate::malformed;
use crate::roster::Table;

/// What a lane receives.
#[derive(Debug)]
pub enum Item {
    /// A matching event at an offset, charged to its trigger's account until the
    /// lane is done with it (the event's own bytes are charged to the budget once,
    /// in the [`Held`] that lanes share).
    Event(Offset, Arc<Held>, LaneCharge),
    /// No event below this offset remains to be sent.
    Skip(Offset),
}

/// Events read per batch.
const BATCH: usize = 256;
/// How often the shared reader stores its malformed-record cursor (it holds back
/// retention like a trigger's checkpoint, so not much less often than those).
const CURSOR_EVERY: Duration = Duration::from_secs(1);
/// How often an idle lane's watermark is refreshed by the shared reader.
const SKIP_EVERY: Duration = Duration::from_millis(200);
/// The most events a rejoin may back-fill; beyond that the lane keeps catching up.
const MAX_BACKFILL: u64 = 4096;

/// What lanes and their catch-up readers ask of the shared reader.
pub enum Request {
    /// Attach a caught-up lane.
    Join(Join),
    /// Park an idle attached lane.
    Park(Park),
    /// Attach a lane that starts where the reader is, parked: no queue, no catch-up.
    Attach(Attach),
}

/// A request to attach a starting lane parked: granted when its mark is at (or past)
/// the reader's position and its incarnation is the table's, so that a trigger at
/// the end of the log never holds a queue (10,000 new triggers start this way).
pub struct Attach {
    /// The lane's slot.
    pub lane: usize,
    /// Its trigger incarnation.
    pub info: Arc<LaneInfo>,
    /// Its mark.
    pub from: Offset,
    /// Its marks (the reader moves the partition's one while it is parked).
    pub marks: Arc<crate::checkpoints::Marks>,
    /// Where its queue goes on its first match.
    pub wake: oneshot::Sender<mpsc::Receiver<Item>>,
    /// Whether it was attached (else it catches up as usual).
    pub reply: oneshot::Sender<bool>,
}

/// A request to park an attached lane whose queue is empty and which has nothing in
/// flight: the shared reader takes over its mark and `wake`s it with a new queue on
/// its next match. Refused (the queue comes back) when its queue is not empty, the
/// lane is detached or the incarnation is no longer the table's.
pub struct Park {
    /// The lane's slot.
    pub lane: usize,
    /// Its trigger incarnation.
    pub incarnation: u64,
    /// Its queue, empty when it asked.
    pub rx: mpsc::Receiver<Item>,
    /// Its marks (the reader moves the partition's one while it is parked).
    pub marks: Arc<crate::checkpoints::Marks>,
    /// Where the new queue goes on the next match; dropped when the lane must start
    /// again from its mark instead (its trigger changed, the reader restarted).
    pub wake: oneshot::Sender<mpsc::Receiver<Item>>,
    /// The answer: parked, or the queue back.
    pub reply: oneshot::Sender<Result<(), mpsc::Receiver<Item>>>,
}

/// A request to (re)attach a lane to the shared reader.
pub struct Join {
    lane: usize,
    info: Arc<LaneInfo>,
    from: Offset,
    tx: mpsc::Sender<Item>,
    reply: oneshot::Sender<Result<(), mpsc::Sender<Item>>>,
}

/// What the shared reader and catch-up readers need to know about a lane: one
/// incarnation of a trigger (a config change makes a new one).
pub struct LaneInfo {
    /// Which incarnation: unique in the process, increasing.
    pub incarnation: u64,
    /// The trigger's compiled filter.
    pub filter: Filter,
    /// Trigger name, for logs.
    pub trigger: Arc<str>,
    /// Its metrics (events skipped because retention deleted them).
    pub metrics: broker::telemetry::TriggerMetrics,
    /// The bytes its lanes hold, against its fair share of the memory budget.
    pub account: Arc<LaneAccount>,
}

struct Attached {
    info: Arc<LaneInfo>,
    feed: Feed,
    skip_below: Offset,
    last_sent: Offset,
}

/// How an attached lane gets its events.
enum Feed {
    /// Through its queue (its lane task runs).
    Queue(mpsc::Sender<Item>),
    /// It is parked: its mark is moved here; a match wakes it with a new queue.
    Parked {
        marks: Arc<crate::checkpoints::Marks>,
        wake: oneshot::Sender<mpsc::Receiver<Item>>,
        _counted: Counted,
    },
}

impl Attached {
    fn queued(info: Arc<LaneInfo>, tx: mpsc::Sender<Item>, at: Offset) -> Attached {
        Attached {
            info,
            feed: Feed::Queue(tx),
            skip_below: at,
            last_sent: at,
        }
    }

    /// The queue of this lane, waking it with a new one if it is parked; `None` when
    /// the parked lane is gone.
    fn queue(&mut self, len: usize) -> Option<&mpsc::Sender<Item>> {
        if let Feed::Parked { .. } = self.feed {
            let (tx, rx) = mpsc::channel(len.max(1));
            let Feed::Parked { wake, .. } = std::mem::replace(&mut self.feed, Feed::Queue(tx))
            else {
                return None;
            };
            wake.send(rx).ok()?;
        }
        match &self.feed {
            Feed::Queue(tx) => Some(tx),
            Feed::Parked { .. } => None,
        }
    }
}

/// Context shared by the readers of one partition.
#[derive(Clone)]
pub struct Partition {
    /// The broker's log.
    pub log: Arc<dyn BrokerLog>,
    /// Partition number.
    pub partition: u32,
    /// The epoch of this process's lease on it (its checkpoints are written with it).
    pub epoch: broker::channel::Epoch,
    /// The broker's triggers as configured now: the readers follow its changes.
    pub table: tokio::sync::watch::Receiver<Arc<Table>>,
    /// Where rejoin and park requests go.
    pub joins: mpsc::Sender<Request>,
    /// Stops everything.
    pub shutdown: CancellationToken,
    /// Tracks the partition's tasks (catch-up readers are spawned here).
    pub tasks: TaskTracker,
    /// Where malformed records go.
    pub malformed: Arc<malformed::Sink>,
    /// How many bytes of records the shared reader reads at once.
    pub read_room: usize,
    /// A lane's queue length.
    pub lane_queue: usize,
    /// The broker's parked lanes (`triggerfish_dispatcher_parked_lanes`).
    pub parked: prometheus_client::metrics::gauge::Gauge,
}

/// Counts a parked lane while it exists.
struct Counted(prometheus_client::metrics::gauge::Gauge);

impl Counted {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Counted {
        gauge.inc();
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Partition {
    fn broker(&self) -> &BrokerId {
        self.log.broker()
    }
}

/// Runs the shared reader of a partition until shutdown. Should it panic, it is
/// logged at ERROR and started again at the end of the log: the lanes it fed lose
/// their queue's sender, so their supervisors ([`crate::lane::supervise`]) restart
/// them from their checkpoints, and they catch up and rejoin; nothing is skipped.
pub async fn shared_reader(ctx: Partition, mut joins: mpsc::Receiver<Request>) {
    loop {
        let ran = AssertUnwindSafe(read_shared(&ctx, &mut joins))
            .catch_unwind()
            .await;
        let Err(panic) = ran else { return };
        tracing::error!(broker = %ctx.broker(), partition = ctx.partition,
            panic = crate::settle::panic_message(&*panic),
            "shared reader panicked; restarting it (lanes catch up from their checkpoints)");
        tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn read_shared(ctx: &Partition, joins: &mut mpsc::Receiver<Request>) {
    let ctx = ctx.clone();
    let Some(mut reader) = open_reader(&ctx, StartAt::End, "shared").await else {
        return; // shutdown
    };
    // Malformed records before the start are dead-lettered by a scan of their own;
    // the cursor moves only once that is done.
    let start = reader.position();
    let scanned = Arc::new(AtomicBool::new(false));
    match ctx.malformed.cursor(ctx.partition, start).await {
        Some(c) if c < start => {
            ctx.tasks.spawn(malformed::scan(
                ctx.malformed.clone(),
                ctx.partition,
                c,
                start,
                scanned.clone(),
                ctx.shutdown.clone(),
            ));
        }
        Some(_) => scanned.store(true, Ordering::Release),
        None => {}
    }
    let mut cursor = start;
    let mut cursor_stored = tokio::time::Instant::now();
    let mut tables = ctx.table.clone();
    let mut table = tables.borrow_and_update().clone();
    let mut attached: Vec<Option<Attached>> = Vec::new();
    resync(&table, &mut attached, ctx.partition, reader.position());
    let mut last_skip = tokio::time::Instant::now();
    // Some attached lane's watermark is behind the reader's position.
    let mut stale = false;
    // Batches are sized by bytes (see `held`).
    let mut sizes = BatchSize::new(BATCH);
    let mut matches = Vec::new();
    loop {
        tokio::select! {
            biased;
            () = ctx.shutdown.cancelled() => {
                // Every record read so far is handled.
                if reader.position() > cursor && scanned.load(Ordering::Acquire) {
                    ctx.malformed.advance(ctx.partition, reader.position(), ctx.epoch).await;
                }
                break;
            }
            // The config changed: lanes of removed or changed triggers are let go
            // (their lanes stopped taking events already), new ones join.
            Ok(()) = tables.changed() => {
                table = tables.borrow_and_update().clone();
                resync(&table, &mut attached, ctx.partition, reader.position());
            }
            Some(request) = joins.recv() => {
                if tables.has_changed().unwrap_or(false) {
                    table = tables.borrow_and_update().clone();
                    resync(&table, &mut attached, ctx.partition, reader.position());
                }
                match request {
                    Request::Join(join) => {
                        handle_join(&ctx, &table, reader.position(), &mut attached, join).await;
                    }
                    Request::Park(park) => handle_park(&ctx.parked, &mut attached, park),
                    Request::Attach(a) => {
                        handle_attach(&ctx.parked, &table, reader.position(), &mut attached, a);
                    }
                }
            }
            // Idle: the cursor passes what was read, so that it never holds back
            // retention (which deletes only what every cursor passed) while the
            // log waits for new events.
            () = tokio::time::sleep_until(cursor_stored + CURSOR_EVERY),
                if reader.position() > cursor && scanned.load(Ordering::Acquire) => {
                let pos = reader.position();
                ctx.malformed.advance(ctx.partition, pos, ctx.epoch).await;
                cursor = pos;
                cursor_stored = tokio::time::Instant::now();
            }
            // Idle: bring watermarks up to date so checkpoints pass filtered-out events.
            () = tokio::time::sleep_until(last_skip + SKIP_EVERY), if stale => {
                last_skip = tokio::time::Instant::now();
                stale = !send_skips(&mut attached, ctx.partition, reader.position(), true);
            }
            batch = reader.next_batch(sizes.next(ctx.read_room)) => {
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(broker = %ctx.broker(), partition = ctx.partition, error = %e, "shared reader failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                let lanes = attached.iter().flatten().map(|a| &*a.info);
                report_skipped(&ctx, reader.as_mut(), lanes, "shared");
                let mut handled_malformed = false;
                let mut largest = 0;
                let read = batch.len();
                for record in batch {
                    if let Err(m) = &record.event {
                        if !ctx.malformed.handle(ctx.partition, record.offset, m, &ctx.shutdown).await {
                            return; // shutdown
                        }
                        handled_malformed = true;
                        continue;
                    }
                    largest = largest.max(approx_size(&record));
                    fan_out(&ctx, &table, &mut attached, record, &mut matches);
                }
                sizes.saw(read, largest);
                // The cursor moves at once past a dead-lettered record (so a restart
                // does not store it again), else every few seconds.
                let pos = reader.position();
                let due = handled_malformed || cursor_stored.elapsed() >= CURSOR_EVERY;
                if pos > cursor && due && scanned.load(Ordering::Acquire) {
                    ctx.malformed.advance(ctx.partition, pos, ctx.epoch).await;
                    cursor = pos;
                    cursor_stored = tokio::time::Instant::now();
                }
                let refresh = last_skip.elapsed() >= SKIP_EVERY;
                if refresh {
                    last_skip = tokio::time::Instant::now();
                }
                stale = !send_skips(&mut attached, ctx.partition, reader.position(), refresh);
            }
        }
    }
}

/// Lets go of attached lanes whose trigger incarnation is no longer the table's
/// (changed or removed) and makes room for new slots. A parked lane let go has had
/// every event up to `pos` judged by its old filter (a match would have woken it):
/// its mark moves there, so the next incarnation starts with the events read after
/// the change.
fn resync(table: &Table, attached: &mut Vec<Option<Attached>>, partition: u32, pos: Offset) {
    if attached.len() < table.lanes.len() {
        attached.resize_with(table.lanes.len(), || None);
    }
    for (slot, a) in attached.iter_mut().enumerate() {
        let current = table.lanes.get(slot).and_then(Option::as_ref);
        if a.as_ref()
            .is_some_and(|a| current.map(|c| c.incarnation) != Some(a.info.incarnation))
        {
            if let Some(Attached {
                feed: Feed::Parked { marks, wake, .. },
                last_sent,
                skip_below,
                ..
            }) = a.take()
            {
                if pos > last_sent && pos > skip_below {
                    marks.mark(partition).publish(pos, false);
                }
                // Only now: the woken lane starts from its mark.
                drop(wake);
            }
        }
    }
}

/// Sends `Skip(pos)` to attached lanes whose watermark is behind: all of them with
/// `all`, else only those far behind; a parked lane's mark is moved here instead.
/// Returns whether every lane is up to date.
fn send_skips(attached: &mut [Option<Attached>], partition: u32, pos: Offset, all: bool) -> bool {
    let mut up_to_date = true;
    for a in attached.iter_mut().flatten() {
        if a.last_sent >= pos || pos <= a.skip_below {
            continue;
        }
        if !all && pos - a.last_sent < BATCH as u64 * 4 {
            up_to_date = false;
            continue;
        }
        let sent = match &a.feed {
            Feed::Queue(tx) => tx.try_send(Item::Skip(pos)).is_ok(),
            // Nothing of it is in flight: everything below `pos` is done for it.
            Feed::Parked { marks, .. } => {
                marks.mark(partition).publish(pos, false);
                true
            }
        };
        if sent {
            a.last_sent = pos;
        } else {
            up_to_date = false;
        }
    }
    up_to_date
}

/// Attaches the lane of `attach` parked if it starts at the reader's position or
/// past it, in the table's incarnation.
fn handle_attach(
    parked: &prometheus_client::metrics::gauge::Gauge,
    table: &Table,
    head: Offset,
    attached: &mut [Option<Attached>],
    attach: Attach,
) {
    let Attach {
        lane,
        info,
        from,
        marks,
        wake,
        reply,
    } = attach;
    let current = table
        .lanes
        .get(lane)
        .and_then(Option::as_ref)
        .map(|l| l.incarnation);
    let slot = attached.get_mut(lane);
    match slot {
        Some(slot) if current == Some(info.incarnation) && from >= head => {
            *slot = Some(Attached {
                info,
                feed: Feed::Parked {
                    marks,
                    wake,
                    _counted: Counted::new(parked),
                },
                skip_below: from,
                last_sent: from,
            });
            let _ = reply.send(true);
        }
        _ => {
            let _ = reply.send(false);
        }
    }
}

/// Parks the lane of `park` if it is attached with that incarnation and its queue is
/// empty (this reader is its only sender, so nothing can arrive meanwhile); else
/// hands the queue back.
fn handle_park(
    parked: &prometheus_client::metrics::gauge::Gauge,
    attached: &mut [Option<Attached>],
    park: Park,
) {
    let Park {
        lane,
        incarnation,
        rx,
        marks,
        wake,
        reply,
    } = park;
    let a = attached.get_mut(lane).and_then(Option::as_mut);
    match a {
        Some(a)
            if a.info.incarnation == incarnation
                && matches!(a.feed, Feed::Queue(_))
                && rx.is_empty() =>
        {
            // The queue (sender here, receiver in `rx`) is freed now.
            a.feed = Feed::Parked {
                marks,
                wake,
                _counted: Counted::new(parked),
            };
            let _ = reply.send(Ok(()));
        }
        _ => {
            let _ = reply.send(Err(rx));
        }
    }
}

/// About the bytes a record read holds, for sizing read batches: its data and a
/// fixed allowance for its attributes (which `--max-attribute-bytes` bounds).
fn approx_size(record: &Record) -> usize {
    let data = match &record.event {
        Ok(e) => e.data().map_or(0, |d| d.len()),
        Err(m) => m.data.as_ref().map_or(0, |d| d.len()),
    };
    data + 512
}

/// Offers `record` to every attached lane whose filter matches. `matches` is
/// scratch space, reused across records.
fn fan_out(
    ctx: &Partition,
    table: &Table,
    attached: &mut [Option<Attached>],
    record: Record,
    matches: &mut Vec<usize>,
) {
    // Malformed records are the shared reader's (see `malformed`).
    let Ok(event) = record.event else { return };
    // Every trigger's filter is evaluated once per event; triggers pinned to another
    // exact `type` or `source` cost a hash lookup, not an evaluation.
    matches.clear();
    table.for_each_match(&event, |i| matches.push(i));
    // Charged on the first match, once for all lanes; `None` inside: the budget
    // could not hold it now.
    let mut held: Option<Option<Arc<Held>>> = None;
    let mut event = Some(event);
    let mut size = 0;
    for &i in matches.iter() {
        let Some(slot) = attached.get_mut(i) else {
            continue;
        };
        let Some(a) = slot else { continue };
        if record.offset < a.skip_below {
            continue;
        }
        let account = &a.info.account;
        let shared = held.get_or_insert_with(|| {
            let e = event.take().expect("taken once");
            size = size_of(&e, account.budget());
            account
                .budget()
                .try_charge(size)
                .map(|c| Arc::new(Held::new(e, c)))
        });
        let item = shared.as_ref().and_then(|h| {
            let charge = account.try_charge(size)?;
            Some(Item::Event(record.offset, h.clone(), charge))
        });
        let Some(tx) = a.queue(ctx.lane_queue) else {
            // A parked lane whose task is gone.
            *slot = None;
            continue;
        };
        let sent = match item {
            Some(item) => tx.try_send(item),
            // Over its share, or the budget is full: like a full queue.
            None => Err(TrySendError::Full(Item::Skip(record.offset))),
        };
        match sent {
            Ok(()) => a.last_sent = record.offset + 1,
            Err(TrySendError::Full(_)) => {
                // The lane is behind: hand its queue to a catch-up reader from here.
                if let Some(Attached {
                    info,
                    feed: Feed::Queue(tx),
                    ..
                }) = slot.take()
                {
                    tracing::debug!(broker = %ctx.broker(), partition = ctx.partition, trigger = %info.trigger, offset = record.offset, "lane detached to catch up on its own");
                    ctx.tasks
                        .spawn(catch_up(ctx.clone(), i, info, record.offset, tx));
                }
            }
            Err(TrySendError::Closed(_)) => *slot = None,
        }
    }
}

async fn handle_join(
    ctx: &Partition,
    table: &Table,
    head: Offset,
    attached: &mut [Option<Attached>],
    join: Join,
) {
    let Join {
        lane,
        info,
        from,
        tx,
        reply,
    } = join;
    let current = table
        .lanes
        .get(lane)
        .and_then(Option::as_ref)
        .map(|l| l.incarnation);
    match current {
        // The table does not show this incarnation yet (it is published just after
        // the lanes are told): the catch-up reader asks again shortly.
        Some(c) if c < info.incarnation => {
            let _ = reply.send(Err(tx));
            return;
        }
        Some(c) if c == info.incarnation && !tx.is_closed() => {}
        // A changed or removed trigger's old lane: its catch-up reader ends.
        _ => return,
    }
    let Some(slot) = attached.get_mut(lane) else {
        return;
    };
    if from >= head {
        *slot = Some(Attached::queued(info, tx, from));
        let _ = reply.send(Ok(()));
        return;
    }
    // Back-fill [from, head) for this lane alone, then attach.
    let filled = backfill(ctx, &info, from, head, &tx).await;
    if filled {
        *slot = Some(Attached::queued(info, tx, head));
        let _ = reply.send(Ok(()));
    } else {
        let _ = reply.send(Err(tx));
    }
}

async fn backfill(
    ctx: &Partition,
    info: &LaneInfo,
    from: Offset,
    head: Offset,
    tx: &mpsc::Sender<Item>,
) -> bool {
    let Ok(mut reader) = ctx.log.reader(ctx.partition, StartAt::Offset(from)).await else {
        return false;
    };
    // Queue nothing unless everything fits. The bound counts records, not offsets
    // (offsets may be sparse within a partition, as on NATS).
    let mut items = Vec::new();
    let mut read = 0u64;
    while reader.position() < head {
        if read > MAX_BACKFILL {
            return false;
        }
        let Ok(batch) = reader.try_batch(BATCH).await else {
            return false;
        };
        if batch.is_empty() {
            break;
        }
        read += batch.len() as u64;
        report_skipped(ctx, reader.as_mut(), [info], "back-fill");
        for r in batch {
            if r.offset >= head {
                break;
            }
            if let Ok(e) = r.event {
                if info.filter.matches(&e) {
                    // Within the trigger's share and the budget now, or not at all.
                    let size = size_of(&e, info.account.budget());
                    let Some(charge) = info.account.try_charge(size) else {
                        return false;
                    };
                    let Some(bytes) = info.account.budget().try_charge(size) else {
                        return false;
                    };
                    items.push(Item::Event(r.offset, Arc::new(Held::new(e, bytes)), charge));
                }
            }
        }
    }
    items.push(Item::Skip(head));
    if tx.capacity() < items.len() {
        return false;
    }
    // We hold the only sender and checked the capacity: this fails only when the
    // lane itself is gone.
    items.into_iter().all(|item| tx.try_send(item).is_ok())
}

/// Opens a reader of the partition, retrying with backoff (a remote log may be
/// unreachable for a while); `None` once shutdown begins.
async fn open_reader(ctx: &Partition, start: StartAt, what: &str) -> Option<Box<dyn LogReader>> {
    let mut wait = Duration::from_millis(100);
    loop {
        match ctx.log.reader(ctx.partition, start).await {
            Ok(r) => return Some(r),
            Err(e) => {
                tracing::warn!(broker = %ctx.broker(), partition = ctx.partition, error = %e, "cannot open the {what} reader; retrying");
            }
        }
        tokio::select! {
            () = ctx.shutdown.cancelled() => return None,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Reads the log for one lane (trigger incarnation `info`) from `from` until it can
/// rejoin the shared reader; ends when the lane does (its queue's receiver goes).
pub async fn catch_up(
    ctx: Partition,
    lane: usize,
    info: Arc<LaneInfo>,
    from: Offset,
    tx: mpsc::Sender<Item>,
) {
    let ended = tx.clone();
    tokio::select! {
        () = ended.closed() => {}
        () = read_for(ctx, lane, info, from, tx) => {}
    }
}

async fn read_for(
    ctx: Partition,
    lane: usize,
    info: Arc<LaneInfo>,
    from: Offset,
    mut tx: mpsc::Sender<Item>,
) {
    let Some(mut reader) = open_reader(&ctx, StartAt::Offset(from), "catch-up").await else {
        return; // shutdown
    };
    // Batches sized by bytes, within half the trigger's share (see `held`).
    let room = info.account.share() / 2;
    let mut sizes = BatchSize::new(BATCH);
    loop {
        report_skipped(&ctx, reader.as_mut(), [&*info], "catch-up");
        let batch = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            b = reader.try_batch(sizes.next(room)) => b,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(broker = %ctx.broker(), partition = ctx.partition, trigger = %info.trigger, error = %e, "catch-up read failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if batch.is_empty() {
            // At the end: ask to rejoin.
            let (reply, answer) = oneshot::channel();
            let join = Join {
                lane,
                info: info.clone(),
                from: reader.position(),
                tx,
                reply,
            };
            if ctx.joins.send(Request::Join(join)).await.is_err() {
                return; // shared reader gone: shutting down
            }
            match answer.await {
                Ok(Ok(())) => return,
                Ok(Err(back)) => {
                    tx = back;
                    // Wait for more data before trying again.
                    tokio::select! {
                        () = ctx.shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                    continue;
                }
                Err(_) => return,
            }
        }
        sizes.saw(
            batch.len(),
            batch.iter().map(approx_size).max().unwrap_or(0),
        );
        for r in batch {
            match r.event {
                Ok(e) if info.filter.matches(&e) => {
                    let size = size_of(&e, info.account.budget());
                    // Waits for the trigger's share, then for the budget.
                    let charged = async {
                        let charge = info.account.charge(size).await;
                        let bytes = info.account.budget().charge(size).await;
                        (charge, bytes)
                    };
                    let (charge, bytes) = tokio::select! {
                        () = ctx.shutdown.cancelled() => return,
                        c = charged => c,
                    };
                    let item = Item::Event(r.offset, Arc::new(Held::new(e, bytes)), charge);
                    if !send(&ctx, &tx, item).await {
                        return;
                    }
                }
                // Malformed records go to the dead-letter log once, from the shared
                // reader or the partition's scan, not from every lane.
                Ok(_) | Err(_) => {}
            }
        }
        if !send(&ctx, &tx, Item::Skip(reader.position())).await {
            return;
        }
    }
}

/// Counts and logs, for each of `lanes`, the offsets `reader` passed over because
/// retention had deleted them: never a silent move up (README, "What happens to an
/// accepted event").
fn report_skipped<'a>(
    ctx: &Partition,
    reader: &mut dyn LogReader,
    lanes: impl IntoIterator<Item = &'a LaneInfo>,
    what: &str,
) {
    let Some(s) = reader.take_skipped() else {
        return;
    };
    let mut any = false;
    for lane in lanes {
        any = true;
        lane.metrics.skipped(s.count);
        tracing::error!(broker = %ctx.broker(), partition = ctx.partition, trigger = %lane.trigger,
            from = s.from, to = s.to, skipped = s.count, reader = what,
            "events were deleted by retention before this trigger received them");
    }
    if !any {
        tracing::error!(broker = %ctx.broker(), partition = ctx.partition, from = s.from, to = s.to,
            skipped = s.count, reader = what, "events were deleted by retention before they were read");
    }
}

/// Sends with backpressure; false when the lane is gone or shutdown began.
async fn send(ctx: &Partition, tx: &mpsc::Sender<Item>, item: Item) -> bool {
    tokio::select! {
        () = ctx.shutdown.cancelled() => false,
        r = tx.send(item) => r.is_ok(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::checkpoints::Marks;
    use prometheus_client::metrics::gauge::Gauge;

    fn info(incarnation: u64) -> Arc<LaneInfo> {
        Arc::new(LaneInfo {
            incarnation,
            filter: Filter::match_all(),
            trigger: "t".into(),
            metrics: broker::telemetry::Metrics::new().trigger("ns/b", "t"),
            account: LaneAccount::new(1 << 20, broker::budget::MemoryBudget::unlimited()),
        })
    }

    type Woken = oneshot::Receiver<mpsc::Receiver<Item>>;
    type Answer = oneshot::Receiver<Result<(), mpsc::Receiver<Item>>>;

    fn park(
        incarnation: u64,
        rx: mpsc::Receiver<Item>,
        marks: &Arc<Marks>,
    ) -> (Park, Woken, Answer) {
        let (wake, woken) = oneshot::channel();
        let (reply, answer) = oneshot::channel();
        let p = Park {
            lane: 0,
            incarnation,
            rx,
            marks: marks.clone(),
            wake,
            reply,
        };
        (p, woken, answer)
    }

    fn parked(attached: &[Option<Attached>]) -> bool {
        matches!(
            attached[0],
            Some(Attached {
                feed: Feed::Parked { .. },
                ..
            })
        )
    }

    /// The race parking must not lose: the reader queued an event after the lane
    /// asked to park. The lane gets its queue back, event included.
    #[test]
    fn a_lane_whose_queue_is_not_empty_is_not_parked_and_keeps_its_events() {
        let gauge = Gauge::default();
        let marks = Marks::at("t", &[10]);
        let (tx, rx) = mpsc::channel(4);
        let mut attached = vec![Some(Attached::queued(info(1), tx.clone(), 10))];
        tx.try_send(Item::Skip(12)).unwrap();
        let (p, _woken, mut answer) = park(1, rx, &marks);
        handle_park(&gauge, &mut attached, p);
        let mut back = answer.try_recv().unwrap().expect_err("refused");
        assert!(
            matches!(back.try_recv(), Ok(Item::Skip(12))),
            "the event is still there"
        );
        assert!(!parked(&attached));
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn a_detached_lane_or_an_old_incarnation_is_not_parked() {
        let gauge = Gauge::default();
        let marks = Marks::at("t", &[0]);
        // Detached (a catch-up reader feeds it).
        let mut attached: Vec<Option<Attached>> = vec![None];
        let (_tx, rx) = mpsc::channel(4);
        let (p, _w, mut answer) = park(1, rx, &marks);
        handle_park(&gauge, &mut attached, p);
        assert!(answer.try_recv().unwrap().is_err());
        // Attached in incarnation 2, asked by incarnation 1.
        let (tx, rx) = mpsc::channel(4);
        attached[0] = Some(Attached::queued(info(2), tx, 0));
        let (p, _w, mut answer) = park(1, rx, &marks);
        handle_park(&gauge, &mut attached, p);
        assert!(answer.try_recv().unwrap().is_err());
        assert!(!parked(&attached));
    }

    /// Parked: the reader moves the mark; the next match wakes the lane with a queue
    /// holding it; a trigger change lets the parked lane go with its mark at the
    /// reader's position (everything before was judged by the old filter).
    #[test]
    fn a_parked_lane_has_its_mark_moved_and_is_woken_with_its_next_event() {
        let gauge = Gauge::default();
        let marks = Marks::at("t", &[0, 5]);
        let (tx, rx) = mpsc::channel(4);
        let mut attached = vec![Some(Attached::queued(info(1), tx, 5))];
        let (p, mut woken, mut answer) = park(1, rx, &marks);
        handle_park(&gauge, &mut attached, p);
        assert!(answer.try_recv().unwrap().is_ok());
        assert!(parked(&attached));
        assert_eq!(gauge.get(), 1);
        // Watermarks: the mark itself (partition 1), no queue.
        assert!(send_skips(&mut attached, 1, 40, true));
        assert_eq!(marks.mark(1).reached(), 40);
        assert_eq!(marks.mark(0).reached(), 0, "another partition's mark");
        // A match: woken with a queue.
        let a = attached[0].as_mut().unwrap();
        let tx = a.queue(4).unwrap().clone();
        tx.try_send(Item::Skip(41)).unwrap();
        let mut rx = woken.try_recv().unwrap();
        assert!(matches!(rx.try_recv(), Ok(Item::Skip(41))));
        assert!(!parked(&attached));
        assert_eq!(gauge.get(), 0, "counted while parked only");

        // Parked again, then its trigger changes: mark at the reader's position.
        let (p, mut woken, mut answer) = park(1, rx, &marks);
        handle_park(&gauge, &mut attached, p);
        assert!(answer.try_recv().unwrap().is_ok());
        let table = Table::build(Vec::new(), Vec::new());
        resync(&table, &mut attached, 1, 77);
        assert!(attached[0].is_none());
        assert_eq!(marks.mark(1).reached(), 77);
        assert!(
            woken.try_recv().is_err(),
            "the wake is dropped: start from the mark"
        );
        assert_eq!(gauge.get(), 0);
    }
}
