//! The triggers of one running broker, and how a config change reaches them: the
//! one owner of the broker's trigger *slots*.
//!
//! Each trigger has a slot (its place in the readers' table) for as long as it is
//! configured and, once removed, for its grace period. A slot holds what outlives
//! config changes: the trigger's done marks ([`crate::checkpoints::Marks`]), its
//! account of the memory budget, its metrics and its delivery health; and a watch
//! of what it runs now ([`Run`]), which the slot's lanes (one per owned partition,
//! [`crate::lane::supervise`]) follow.
//!
//! [`Roster::apply`] turns a new list of triggers into the difference, and touches
//! nothing else:
//!
//! - a **new** trigger's start (the end of the log on every partition) is stored
//!   first, for all new triggers in one batch ([`BrokerLog::init_checkpoints`]),
//!   then read back (another process may have stored one first); it gets a slot,
//!   and the coordinator starts its lanes when it sees the new [`Table`];
//! - a **changed** trigger (filter, subscriber, delivery, order, concurrency) gets
//!   a new incarnation: its lanes stop taking events, settle those they took, and
//!   the new incarnation starts from the mark the old one left, so every event is
//!   handled under exactly one of the two configs;
//! - a **removed** trigger's lanes stop the same way and its slot stays, with its
//!   marks, stored checkpoint and hold on retention, for the grace period: re-added
//!   under the same name within it, the trigger resumes where it stopped;
//!   [`Roster::expire`] deletes slots whose grace is over, and their checkpoints.
//!
//! Lanes are told first ([`Run`]), then the table is published: a shared reader
//! that still offers events to an old incarnation's queue is harmless, since that
//! lane no longer takes them, and the new incarnation re-reads from its mark.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use broker::channel::{BrokerLog, ChannelError, Offset};
use broker::config::{BrokerId, TriggerConfig};
use broker::event::Event;
use broker::filter::FilterIndex;
use broker::telemetry::{Metrics, TriggerMetrics};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::checkpoints::{Book, Marks};
use crate::fanout::LaneInfo;
use crate::held::LaneAccount;
use crate::trigger::{BrokerSinks, Health, TriggerRuntime};
use crate::trust::Trust;

/// What a trigger slot runs now.
#[derive(Clone)]
pub enum Run {
    /// This incarnation of the trigger.
    Active(Arc<TriggerRuntime>),
    /// Removed from the config, within its grace period: nothing runs, the marks
    /// stay.
    Removed,
    /// The slot is gone: its lanes end.
    Deleted,
}

/// A trigger's slot: what outlives its config changes (see the module docs).
pub struct SlotHandle {
    /// Its place in the table.
    pub slot: usize,
    /// The trigger's name.
    pub name: Arc<str>,
    /// Its done marks.
    pub marks: Arc<Marks>,
    /// Its account of the memory budget.
    pub account: Arc<LaneAccount>,
    /// Its metrics.
    pub metrics: TriggerMetrics,
    /// Its delivery health.
    pub health: Arc<Health>,
    run: RunCell,
}

impl SlotHandle {
    /// Follows what the slot runs, from version `seen` ([`RunWatch::seen`]; 0: not
    /// seen anything yet).
    pub fn watch_from(&self, seen: u64) -> RunWatch<'_> {
        RunWatch {
            cell: &self.run,
            seen,
        }
    }

    /// What the slot runs now.
    pub fn run(&self) -> Run {
        self.run.lock().1.clone()
    }
}

/// What a slot runs, with a version, and a way to wait for it to change: the part
/// of a `tokio::sync::watch` channel a slot needs, inline in the slot (a watch
/// channel is a 360-byte allocation of its own, mostly an eight-way notifier).
struct RunCell {
    run: std::sync::Mutex<(u64, Run)>,
    changed: tokio::sync::Notify,
}

impl RunCell {
    fn new(run: Run) -> RunCell {
        RunCell {
            run: std::sync::Mutex::new((1, run)),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Run)> {
        self.run.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send_replace(&self, run: Run) {
        {
            let mut g = self.lock();
            g.0 += 1;
            g.1 = run;
        }
        self.changed.notify_waiters();
    }
}

/// One follower of what a slot runs (see [`SlotHandle::subscribe`]).
pub struct RunWatch<'a> {
    cell: &'a RunCell,
    seen: u64,
}

impl RunWatch<'_> {
    /// The version last seen.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// What the slot runs now, marked seen.
    pub fn borrow_and_update(&mut self) -> Run {
        let g = self.cell.lock();
        self.seen = g.0;
        g.1.clone()
    }

    /// Waits until the slot runs something not seen yet, and marks it seen.
    pub async fn changed(&mut self) {
        loop {
            let notified = self.cell.changed.notified();
            tokio::pin!(notified);
            // Registered before the version is read, so no change is missed.
            notified.as_mut().enable();
            {
                let g = self.cell.lock();
                if g.0 != self.seen {
                    self.seen = g.0;
                    return;
                }
            }
            notified.await;
        }
    }
}

/// The broker's triggers as the readers see them: immutable, replaced as a whole
/// on each change.
pub struct Table {
    /// Every slot (configured or within its grace period), by slot.
    pub slots: Vec<Option<Arc<SlotHandle>>>,
    /// The current incarnation of each configured trigger, by slot.
    pub lanes: Vec<Option<Arc<LaneInfo>>>,
    index: FilterIndex,
    /// Index position to slot.
    positions: Vec<usize>,
}

impl Table {
    pub(crate) fn build(
        slots: Vec<Option<Arc<SlotHandle>>>,
        lanes: Vec<Option<Arc<LaneInfo>>>,
    ) -> Table {
        let positions: Vec<usize> = lanes
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.as_ref().map(|_| i))
            .collect();
        let filters: Vec<&broker::filter::Filter> =
            lanes.iter().flatten().map(|l| &l.filter).collect();
        Table {
            index: FilterIndex::build(&filters),
            slots,
            lanes,
            positions,
        }
    }

    /// Calls `f` with the slot of every configured trigger whose filter matches.
    pub fn for_each_match(&self, event: &Event, mut f: impl FnMut(usize)) {
        self.index.for_each_match(event, |i| f(self.positions[i]));
    }
}

struct Live {
    handle: Arc<SlotHandle>,
    /// Its config, while configured.
    rt: Option<Arc<TriggerRuntime>>,
    /// When it was removed (its grace period runs from then).
    removed_at: Option<Instant>,
    /// The config generation that last added or changed it.
    changed_in: u64,
}

/// What one [`Roster::apply`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Triggers added.
    pub added: Vec<String>,
    /// Triggers whose config changed.
    pub changed: Vec<String>,
    /// Triggers removed (now within their grace period).
    pub removed: Vec<String>,
    /// Triggers re-added within their grace period (they resume).
    pub resumed: Vec<String>,
}

impl Changes {
    /// Whether anything changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
            && self.resumed.is_empty()
    }

    /// Adds `other`'s changes, their names prefixed by `broker`.
    pub fn extend(&mut self, broker: &BrokerId, other: Changes) {
        let named = |v: Vec<String>| v.into_iter().map(move |t| format!("{broker}/{t}"));
        self.added.extend(named(other.added));
        self.changed.extend(named(other.changed));
        self.removed.extend(named(other.removed));
        self.resumed.extend(named(other.resumed));
    }
}

/// A trigger as status shows it.
pub struct TriggerView {
    /// Its slot (lanes, marks, metrics).
    pub handle: Arc<SlotHandle>,
    /// Its config; `None` while removed.
    pub config: Option<Arc<TriggerConfig>>,
    /// How long ago it was removed.
    pub removed_for: Option<Duration>,
    /// The config generation that last added or changed it.
    pub changed_in: u64,
}

/// The trigger slots of one broker; see the module docs.
pub struct Roster {
    id: BrokerId,
    log: Arc<dyn BrokerLog>,
    book: Arc<Book>,
    sinks: Arc<BrokerSinks>,
    /// Where the triggers' HTTPS clients come from.
    trust: Arc<Trust>,
    metrics: Arc<Metrics>,
    budget: Arc<broker::budget::MemoryBudget>,
    table: watch::Sender<Arc<Table>>,
    slots: Vec<Option<Live>>,
    by_name: HashMap<Arc<str>, usize>,
    free: Vec<usize>,
    incarnations: Arc<AtomicU64>,
    /// The checkpoints last registered with [`BrokerLog::retain_for`].
    retained: Option<Vec<String>>,
    share: usize,
}

/// Checkpoints read back at once after a batch of starts is stored.
const LOAD_CONCURRENCY: usize = 64;

impl Roster {
    /// A broker with no triggers yet.
    pub fn new(
        log: Arc<dyn BrokerLog>,
        book: Arc<Book>,
        sinks: Arc<BrokerSinks>,
        trust: Arc<Trust>,
        metrics: Arc<Metrics>,
        incarnations: Arc<AtomicU64>,
    ) -> Roster {
        let (table, _) = watch::channel(Arc::new(Table::build(Vec::new(), Vec::new())));
        Roster {
            id: log.broker().clone(),
            budget: sinks.budget.clone(),
            log,
            book,
            sinks,
            trust,
            metrics,
            table,
            slots: Vec::new(),
            by_name: HashMap::new(),
            free: Vec::new(),
            incarnations,
            retained: None,
            share: usize::MAX,
        }
    }

    /// Follows the table.
    pub fn tables(&self) -> watch::Receiver<Arc<Table>> {
        self.table.subscribe()
    }

    /// The book of the broker's checkpoints.
    pub fn book(&self) -> &Arc<Book> {
        &self.book
    }

    /// How many triggers are configured.
    pub fn configured(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|l| l.rt.is_some())
            .count()
    }

    /// Sets every trigger's share of the lanes' part of the budget.
    pub fn set_share(&mut self, share: usize) {
        self.share = share;
        for l in self.slots.iter().flatten() {
            l.handle.account.set_share(share);
        }
    }

    /// Every slot, for status.
    pub fn views(&self) -> Vec<TriggerView> {
        let now = Instant::now();
        self.slots
            .iter()
            .flatten()
            .map(|l| TriggerView {
                handle: l.handle.clone(),
                config: l.rt.as_ref().map(|rt| rt.cfg.clone()),
                removed_for: l.removed_at.map(|at| now.duration_since(at)),
                changed_in: l.changed_in,
            })
            .collect()
    }

    fn runtime(&self, cfg: &Arc<TriggerConfig>, handle: &SlotHandle) -> Arc<TriggerRuntime> {
        let incarnation = self.incarnations.fetch_add(1, Ordering::Relaxed) + 1;
        Arc::new(TriggerRuntime {
            lane: Arc::new(LaneInfo {
                incarnation,
                filter: cfg.filter.clone(),
                trigger: handle.name.clone(),
                metrics: handle.metrics.clone(),
                account: handle.account.clone(),
            }),
            cfg: cfg.clone(),
            metrics: handle.metrics.clone(),
            sinks: self.sinks.clone(),
            health: handle.health.clone(),
            clients: self.trust.for_trigger(cfg),
        })
    }

    /// Brings the broker's triggers to `triggers` (see the module docs); `generation`
    /// is the config's. On error (the start points of new triggers could not be
    /// stored) nothing changed.
    pub async fn apply(
        &mut self,
        triggers: &[Arc<TriggerConfig>],
        generation: u64,
    ) -> Result<Changes, ChannelError> {
        let now = Instant::now();
        let new: Vec<&Arc<TriggerConfig>> = triggers
            .iter()
            .filter(|t| !self.by_name.contains_key(t.name.as_str()))
            .collect();
        // Retention holds the new triggers from now on (at 0 until their starts
        // are stored), so nothing they need can go meanwhile.
        let mut holders: Vec<String> = self.by_name.keys().map(|n| n.to_string()).collect();
        holders.extend(new.iter().map(|t| t.name.clone()));
        self.retain(holders).await?;
        let starts = self.store_starts(&new).await?;
        // From here on nothing fails.
        let mut changes = Changes::default();
        let mut wanted: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut lanes_changed = false;
        for (t, start) in new.iter().zip(starts) {
            let slot = self.free.pop().unwrap_or(self.slots.len());
            if slot == self.slots.len() {
                self.slots.push(None);
            }
            let name: Arc<str> = Arc::from(t.name.as_str());
            let marks = self.book.add(slot, name.clone(), &start).await;
            let run = RunCell::new(Run::Removed);
            let handle = Arc::new(SlotHandle {
                slot,
                name: name.clone(),
                marks,
                account: LaneAccount::new(self.share, self.budget.clone()),
                metrics: self.metrics.trigger(&self.id.to_string(), &t.name),
                health: Arc::default(),
                run,
            });
            let rt = self.runtime(t, &handle);
            handle.run.send_replace(Run::Active(rt.clone()));
            self.slots[slot] = Some(Live {
                handle,
                rt: Some(rt),
                removed_at: None,
                changed_in: generation,
            });
            self.by_name.insert(name, slot);
            changes.added.push(t.name.clone());
            lanes_changed = true;
        }
        for t in triggers {
            wanted.insert(t.name.as_str());
            let Some(&slot) = self.by_name.get(t.name.as_str()) else {
                continue;
            };
            let Some(live) = self.slots[slot].as_ref() else {
                continue;
            };
            let unchanged = live.rt.as_ref().is_some_and(|rt| rt.cfg.same_as(t));
            if unchanged {
                continue;
            }
            let rt = self.runtime(t, &live.handle);
            let resumed = live.removed_at.is_some();
            let live = self.slots[slot].as_mut().expect("present");
            live.rt = Some(rt.clone());
            live.removed_at = None;
            live.changed_in = generation;
            live.handle.run.send_replace(Run::Active(rt));
            if resumed {
                changes.resumed.push(t.name.clone());
            } else {
                changes.changed.push(t.name.clone());
            }
            lanes_changed = true;
        }
        for live in self.slots.iter_mut().flatten() {
            if live.rt.is_some() && !wanted.contains(&*live.handle.name) {
                live.rt = None;
                live.removed_at = Some(now);
                live.handle.run.send_replace(Run::Removed);
                changes.removed.push(live.handle.name.to_string());
                lanes_changed = true;
            }
        }
        if lanes_changed {
            self.publish();
        }
        Ok(changes)
    }

    /// Deletes the slots of triggers removed more than `grace` ago, and their
    /// stored checkpoints; returns their names. A checkpoint that cannot be deleted
    /// now is tried again next time.
    pub async fn expire(&mut self, grace: Duration) -> Vec<String> {
        let now = Instant::now();
        let due: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let l = l.as_ref()?;
                (l.rt.is_none()
                    && l.removed_at
                        .is_some_and(|at| now.duration_since(at) >= grace))
                .then_some(i)
            })
            .collect();
        let mut gone = Vec::new();
        for slot in due {
            let Some(live) = &self.slots[slot] else {
                continue;
            };
            let name = live.handle.name.clone();
            if let Err(e) = self.log.delete_checkpoint(&name).await {
                tracing::warn!(broker = %self.id, trigger = %name, error = %e,
                    "cannot delete the checkpoint of a trigger whose grace period is over; will retry");
                continue;
            }
            live.handle.run.send_replace(Run::Deleted);
            self.book.remove(slot).await;
            self.slots[slot] = None;
            self.by_name.remove(&name);
            self.free.push(slot);
            tracing::info!(broker = %self.id, trigger = %name, "removed trigger's grace period is over; its checkpoint is deleted");
            gone.push(name.to_string());
        }
        if !gone.is_empty() {
            self.publish();
            let holders: Vec<String> = self.by_name.keys().map(|n| n.to_string()).collect();
            if let Err(e) = self.retain(holders).await {
                tracing::warn!(broker = %self.id, error = %e, "cannot update what retention keeps");
            }
        }
        gone
    }

    /// Stops every trigger of the broker (the broker was removed): its lanes settle
    /// what they took; marks and checkpoints stay.
    pub fn remove_all(&mut self) {
        let now = Instant::now();
        for live in self.slots.iter_mut().flatten() {
            if live.rt.take().is_some() {
                live.removed_at = Some(now);
                live.handle.run.send_replace(Run::Removed);
            }
        }
        self.publish();
    }

    fn publish(&self) {
        let slots: Vec<Option<Arc<SlotHandle>>> = self
            .slots
            .iter()
            .map(|l| l.as_ref().map(|l| l.handle.clone()))
            .collect();
        let lanes: Vec<Option<Arc<LaneInfo>>> = self
            .slots
            .iter()
            .map(|l| l.as_ref()?.rt.as_ref().map(|rt| rt.lane.clone()))
            .collect();
        self.table
            .send_replace(Arc::new(Table::build(slots, lanes)));
    }

    /// Registers `holders` (and the malformed-record cursor, when there are any)
    /// as what retention keeps, when that changed.
    async fn retain(&mut self, mut holders: Vec<String>) -> Result<(), ChannelError> {
        // Triggers first: a producer held at the limit is told of a trigger before
        // the cursor when both are at the floor.
        holders.sort();
        if !holders.is_empty() {
            holders.push(crate::malformed::MALFORMED_CURSOR.to_owned());
        }
        if self.retained.as_ref() == Some(&holders) {
            return Ok(());
        }
        self.log.retain_for(&holders).await?;
        self.retained = Some(holders);
        Ok(())
    }

    /// Stores the start of every new trigger that has none (the end of the log on
    /// each partition) in one batch, then reads back what is stored: another
    /// process may have stored one first, or the trigger may have run before.
    async fn store_starts(
        &self,
        new: &[&Arc<TriggerConfig>],
    ) -> Result<Vec<Vec<Offset>>, ChannelError> {
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let log = &self.log;
        let mut ends = Vec::with_capacity(log.partitions() as usize);
        for p in 0..log.partitions() {
            ends.push(log.end_offset(p).await?);
        }
        let initial: Vec<(u32, Offset)> = ends
            .iter()
            .enumerate()
            .map(|(p, &o)| (p as u32, o))
            .collect();
        let inits: Vec<(String, Vec<(u32, Offset)>)> = new
            .iter()
            .map(|t| (t.name.clone(), initial.clone()))
            .collect();
        log.init_checkpoints(&inits).await?;
        let names: Vec<String> = new.iter().map(|t| t.name.clone()).collect();
        let loaded: Vec<Result<Vec<Option<Offset>>, ChannelError>> =
            futures_util::stream::iter(names)
                .map(|name| {
                    // Owned, so the future is `Send` for any borrow of the roster.
                    let log = log.clone();
                    async move { log.load_checkpoint(&name).await }
                })
                .buffered(LOAD_CONCURRENCY)
                .collect()
                .await;
        let mut out = Vec::with_capacity(new.len());
        for (t, l) in new.iter().zip(loaded) {
            let l = l?;
            if l.iter().zip(&ends).any(|(s, e)| s.is_some_and(|s| s < *e)) {
                tracing::info!(broker = %self.id, trigger = %t.name, checkpoints = ?l,
                    "trigger resumes from its stored checkpoint");
            }
            out.push(
                l.into_iter()
                    .zip(&ends)
                    .map(|(s, e)| s.unwrap_or(*e))
                    .collect(),
            );
        }
        tracing::info!(broker = %self.id, triggers = new.len(), "new triggers start at the end of the log");
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_logs::Recording;
    use broker::config::{DeliveryOrder, TriggerConfig};
    use broker::delivery::DeliverySpec;
    use broker::filter::Filter;

    fn trigger(name: &str, spec_hash: u64) -> Arc<TriggerConfig> {
        Arc::new(TriggerConfig {
            name: name.into(),
            broker: BrokerId::new("ns", "b"),
            filter: Filter::match_all(),
            subscriber: url::Url::parse("http://127.0.0.1:9/").unwrap(),
            delivery: DeliverySpec::broker_default().into(),
            order: DeliveryOrder::Unordered,
            concurrency: 1,
            annotations: Default::default(),
            spec_hash,
            subscriber_ca_certs: None,
        })
    }

    fn roster(log: &Arc<Recording>) -> Roster {
        let sinks = Arc::new(BrokerSinks {
            events: log.clone(),
            dead_letters: log.clone(),
            max_ttl: 255,
            shutdown: tokio_util::sync::CancellationToken::new(),
            fault: None,
            limits: Default::default(),
            max_reply_bytes: 1 << 20,
            budget: broker::budget::MemoryBudget::unlimited(),
        });
        Roster::new(
            log.clone(),
            Arc::new(Book::new(log.clone(), Duration::from_secs(5))),
            sinks,
            crate::trust::Trust::new(None, None),
            Arc::new(Metrics::new()),
            Arc::new(AtomicU64::new(0)),
        )
    }

    fn slot<'a>(r: &'a Roster, name: &str) -> &'a SlotHandle {
        &r.slots[r.by_name[name]].as_ref().unwrap().handle
    }

    fn incarnation(r: &Roster, name: &str) -> Option<u64> {
        match slot(r, name).run() {
            Run::Active(rt) => Some(rt.lane.incarnation),
            _ => None,
        }
    }

    #[tokio::test]
    async fn only_the_difference_is_applied() {
        let log = Recording::new(2);
        log.end.store(10, std::sync::atomic::Ordering::Relaxed);
        let mut r = roster(&log);
        let mut tables = r.tables();
        let c = r
            .apply(&[trigger("a", 1), trigger("b", 1)], 1)
            .await
            .unwrap();
        assert_eq!(c.added, ["a", "b"]);
        assert!(tables.has_changed().unwrap());
        tables.borrow_and_update();
        // Both starts stored at the end of the log, in one batch.
        assert_eq!(slot(&r, "a").marks.reached(), [10, 10]);
        assert_eq!(
            log.load_checkpoint("b").await.unwrap(),
            [Some(10), Some(10)]
        );
        let (a1, b1) = (incarnation(&r, "a"), incarnation(&r, "b"));

        // The same config again: nothing changes, not even the table.
        let c = r
            .apply(&[trigger("a", 1), trigger("b", 1)], 2)
            .await
            .unwrap();
        assert!(c.is_empty());
        assert!(!tables.has_changed().unwrap());
        assert_eq!(incarnation(&r, "a"), a1);

        // `a` changed: a new incarnation of `a` only.
        let c = r
            .apply(&[trigger("a", 2), trigger("b", 1)], 3)
            .await
            .unwrap();
        assert_eq!(c.changed, ["a"]);
        assert_ne!(incarnation(&r, "a"), a1);
        assert_eq!(incarnation(&r, "b"), b1);
        let table = tables.borrow_and_update().clone();
        assert_eq!(table.lanes.iter().flatten().count(), 2);
    }

    #[tokio::test]
    async fn a_removed_trigger_resumes_within_its_grace_period_and_starts_afresh_after() {
        let log = Recording::new(1);
        let mut r = roster(&log);
        r.apply(&[trigger("keep", 1), trigger("gone", 1)], 1)
            .await
            .unwrap();
        // `gone` delivered up to 40, then is removed.
        slot(&r, "gone").marks.mark(0).publish(40, true);
        let c = r.apply(&[trigger("keep", 1)], 2).await.unwrap();
        assert_eq!(c.removed, ["gone"]);
        assert!(matches!(slot(&r, "gone").run(), Run::Removed));
        // Retention still holds it.
        assert!(r.retained.as_ref().unwrap().contains(&"gone".to_owned()));
        log.end.store(100, std::sync::atomic::Ordering::Relaxed);

        // Re-added within the grace period: it resumes at 40, not at the end (100).
        let c = r
            .apply(&[trigger("keep", 1), trigger("gone", 1)], 3)
            .await
            .unwrap();
        assert_eq!(c.resumed, ["gone"]);
        assert_eq!(slot(&r, "gone").marks.reached(), [40]);
        assert!(
            r.expire(Duration::ZERO).await.is_empty(),
            "configured: never expires"
        );

        // Removed again and past its grace period: slot and checkpoint deleted, and
        // no longer held by retention.
        r.apply(&[trigger("keep", 1)], 4).await.unwrap();
        assert!(r.expire(Duration::from_secs(3600)).await.is_empty());
        assert_eq!(r.expire(Duration::ZERO).await, ["gone"]);
        assert_eq!(*log.deleted.lock().unwrap(), ["gone"]);
        assert!(!r.retained.as_ref().unwrap().contains(&"gone".to_owned()));
        // Added once more: a new trigger, at the end of the log.
        let c = r
            .apply(&[trigger("keep", 1), trigger("gone", 1)], 5)
            .await
            .unwrap();
        assert_eq!(c.added, ["gone"]);
        assert_eq!(slot(&r, "gone").marks.reached(), [100]);
    }
}
