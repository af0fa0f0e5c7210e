//! The checkpoint book of one broker: the one owner of every (trigger, partition)
//! checkpoint this process keeps, and the one place that writes them to the log.
//!
//! For each (trigger, partition) it holds
//! - the **done mark**, the offset the lane has reached (everything below it is
//!   delivered, dead-lettered or did not match), published by the lane ([`Mark`]);
//! - whether a delivery finished since the last store (a mark that moved only past
//!   events the trigger did not match is stored less often: losing it costs a
//!   re-scan, not a redelivery);
//! - the **stored mark**, the offset last written to the log;
//!
//! and, per partition, whether this process owns it now. A flush writes the marks
//! that moved, of owned partitions only, so dispatcher replicas never overwrite each
//! other's. [`Book::acquire`] loads the stored checkpoints of partitions about to
//! start (another process may have dispatched them since); [`Book::finish`] writes a
//! stopped partition's final checkpoints durably and disowns it, before its lease
//! goes. Time is `tokio::time`, so tests can pause it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use broker::channel::lease::Lease;
use broker::channel::{BrokerLog, ChannelError, CheckpointUpdate, Epoch, Offset};
use futures_util::StreamExt;
use tokio::time::Instant;

/// Checkpoint loads or stores in flight at once (a shared channel takes a network
/// round trip for each; a thousand triggers one after another would take seconds).
const CONCURRENCY: usize = 32;

/// One (trigger, partition)'s done mark, written by its lane.
#[derive(Debug, Default)]
pub struct Mark {
    reached: AtomicU64,
    delivered: AtomicBool,
}

impl Mark {
    /// The offset the lane has reached: where it starts (again).
    pub fn reached(&self) -> Offset {
        self.reached.load(Ordering::Acquire)
    }

    /// The lane has reached `offset`; `delivered` when that move passed a delivery
    /// (so the next flush stores it, durably).
    pub fn publish(&self, offset: Offset, delivered: bool) {
        self.reached.store(offset, Ordering::Release);
        if delivered {
            self.delivered.store(true, Ordering::Release);
        }
    }
}

/// One trigger's done marks, one per partition, shared by the trigger's lanes
/// (their writer) and the book (their reader). A trigger keeps its marks while it
/// is in the book, across config changes and its removal's grace period, which is
/// what lets a trigger re-added within it resume where it stopped.
#[derive(Debug)]
pub struct Marks {
    name: Arc<str>,
    marks: Box<[Mark]>,
}

impl Marks {
    /// The trigger's name (its checkpoint's).
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The done mark on `partition`.
    pub fn mark(&self, partition: u32) -> &Mark {
        &self.marks[partition as usize]
    }

    /// Every partition's reached offset.
    pub fn reached(&self) -> Vec<Offset> {
        self.marks.iter().map(Mark::reached).collect()
    }

    /// Marks outside a book, for tests.
    #[cfg(test)]
    pub(crate) fn at(name: &str, reached: &[Offset]) -> Arc<Marks> {
        Arc::new(Marks {
            name: name.into(),
            marks: reached
                .iter()
                .map(|&o| Mark {
                    reached: AtomicU64::new(o),
                    delivered: AtomicBool::new(false),
                })
                .collect(),
        })
    }
}

/// One trigger's stored state.
struct Entry {
    marks: Arc<Marks>,
    /// Per partition: the offset last stored.
    offsets: Vec<Offset>,
    /// When its checkpoints were last stored.
    at: Instant,
}

/// What the book's lock guards: the triggers' stored marks and ownership.
struct Stored {
    /// By slot (the trigger's place in its broker's roster); `None` where free.
    triggers: Vec<Option<Entry>>,
    /// Per partition, the epoch of this process's lease on it, while it owns it.
    owned: Vec<Option<Epoch>>,
}

/// The checkpoint book of one broker; see the module docs.
pub struct Book {
    log: Arc<dyn BrokerLog>,
    partitions: usize,
    stored: tokio::sync::Mutex<Stored>,
    skips_stored_every: Duration,
}

impl Book {
    /// An empty book, owning no partition yet.
    pub fn new(log: Arc<dyn BrokerLog>, skips_stored_every: Duration) -> Book {
        let partitions = log.partitions() as usize;
        Book {
            stored: tokio::sync::Mutex::new(Stored {
                triggers: Vec::new(),
                owned: vec![None; partitions],
            }),
            log,
            partitions,
            skips_stored_every,
        }
    }

    /// Adds trigger `name` at `slot`, starting at `starts` (per partition: its stored
    /// checkpoint), and returns its marks. A slot in use is replaced.
    pub async fn add(&self, slot: usize, name: Arc<str>, starts: &[Offset]) -> Arc<Marks> {
        let offsets: Vec<Offset> = (0..self.partitions)
            .map(|p| starts.get(p).copied().unwrap_or(0))
            .collect();
        let marks = Arc::new(Marks {
            name,
            marks: offsets
                .iter()
                .map(|&o| Mark {
                    reached: AtomicU64::new(o),
                    delivered: AtomicBool::new(false),
                })
                .collect(),
        });
        let mut st = self.stored.lock().await;
        if st.triggers.len() <= slot {
            st.triggers.resize_with(slot + 1, || None);
        }
        st.triggers[slot] = Some(Entry {
            marks: marks.clone(),
            offsets,
            at: Instant::now(),
        });
        marks
    }

    /// Removes the trigger at `slot` (its grace period is over): its checkpoints are
    /// written no more.
    pub async fn remove(&self, slot: usize) {
        let mut st = self.stored.lock().await;
        if let Some(e) = st.triggers.get_mut(slot) {
            *e = None;
        }
    }

    /// Whether this process owns `partition` now (writes its checkpoints).
    pub async fn owned(&self) -> Vec<bool> {
        self.stored
            .lock()
            .await
            .owned
            .iter()
            .map(Option::is_some)
            .collect()
    }

    /// Loads the stored checkpoints of `leases`' partitions (another process may have
    /// dispatched them since this one last did), sets the marks to them, and owns the
    /// partitions from now on, writing under the leases' epochs. On error nothing is
    /// owned and the caller retries.
    pub async fn acquire(&self, leases: &[Lease]) -> Result<(), ChannelError> {
        let partitions: Vec<u32> = leases.iter().map(|l| l.partition).collect();
        let mut st = self.stored.lock().await;
        type Loaded = (usize, Result<Vec<Option<Offset>>, ChannelError>);
        let names: Vec<(usize, Arc<str>)> = st
            .triggers
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((i, e.as_ref()?.marks.name.clone())))
            .collect();
        let loads: Vec<Loaded> = futures_util::stream::iter(names)
            .map(|(t, name)| {
                // Owned, so the future is `Send` for any borrow of the book.
                let log = self.log.clone();
                async move { (t, log.load_checkpoint(&name).await) }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut loaded = Vec::with_capacity(loads.len());
        for (t, r) in loads {
            loaded.push((t, r?));
        }
        for (t, stored) in loaded {
            let Some(entry) = st.triggers.get_mut(t).and_then(Option::as_mut) else {
                continue;
            };
            for &p in &partitions {
                // Every trigger got a start on every partition when it was added.
                let Some(offset) = stored.get(p as usize).copied().flatten() else {
                    continue;
                };
                if let (Some(mark), Some(slot)) = (
                    entry.marks.marks.get(p as usize),
                    entry.offsets.get_mut(p as usize),
                ) {
                    mark.reached.store(offset, Ordering::Release);
                    *slot = offset;
                }
            }
        }
        for l in leases {
            if let Some(o) = st.owned.get_mut(l.partition as usize) {
                *o = Some(l.epoch);
            }
        }
        Ok(())
    }

    /// Writes the checkpoints that changed since the last store (all of them when
    /// `durable`) of the partitions this process owns.
    pub async fn flush(&self, durable: bool) {
        let mut st = self.stored.lock().await;
        let mine: Vec<usize> = (0..self.partitions)
            .filter(|&p| st.owned[p].is_some())
            .collect();
        self.store(&mut st, &mine, durable, None).await;
    }

    /// Writes the checkpoints of the trigger at `slot` on every owned partition
    /// durably (its lanes stopped: it was removed).
    pub async fn flush_one(&self, slot: usize) {
        let mut st = self.stored.lock().await;
        let mine: Vec<usize> = (0..self.partitions)
            .filter(|&p| st.owned[p].is_some())
            .collect();
        self.store(&mut st, &mine, true, Some(slot)).await;
    }

    /// Writes the final checkpoints of `partitions`, whose lanes have stopped,
    /// durably, and disowns them: after this, their leases may go.
    pub async fn finish(&self, partitions: &[u32]) {
        let mut st = self.stored.lock().await;
        let mine: Vec<usize> = partitions
            .iter()
            .map(|&p| p as usize)
            .filter(|&p| st.owned.get(p).is_some_and(Option::is_some))
            .collect();
        self.store(&mut st, &mine, true, None).await;
        for p in mine {
            st.owned[p] = None;
        }
    }

    async fn store(&self, st: &mut Stored, mine: &[usize], durable: bool, only: Option<usize>) {
        if mine.is_empty() {
            return;
        }
        // A checkpoint that moved only past events the trigger did not match is stored
        // every `skips_stored_every` (5 s): with a thousand triggers of which few
        // match, storing each one every flush was thousands of file writes a second,
        // and losing such a move costs only a re-scan of events filtered out again.
        let now = Instant::now();
        let mut pending = Vec::new();
        let owned = &st.owned;
        for (t, entry) in st.triggers.iter().enumerate() {
            let Some(entry) = entry else { continue };
            if only.is_some_and(|o| o != t) {
                continue;
            }
            let marks = &entry.marks.marks;
            // Every partition's mark is taken (no short cut), so none is left set for
            // a store that is about to happen anyway.
            let delivered = mine.iter().fold(false, |any, &p| {
                any | marks[p].delivered.swap(false, Ordering::AcqRel)
            });
            let stale = now.duration_since(entry.at) >= self.skips_stored_every;
            let due = durable || delivered || stale;
            let updates: Vec<CheckpointUpdate> = mine
                .iter()
                .filter_map(|&p| {
                    let reached = marks[p].reached();
                    let epoch = owned[p]?;
                    (durable || (due && entry.offsets[p] != reached))
                        .then_some(CheckpointUpdate::new(p as u32, reached, epoch))
                })
                .collect();
            if !updates.is_empty() {
                pending.push((t, entry.marks.clone(), updates, delivered));
            } else if delivered {
                // Nothing to store after all: keep the mark for the next flush.
                restore_delivered(&entry.marks, mine.iter().copied());
            }
        }
        let log = &self.log;
        let results: Vec<_> = futures_util::stream::iter(pending)
            .map(|(t, marks, updates, delivered)| async move {
                // A checkpoint that moved past deliveries is synced (with the embedded
                // log's `--fsync always`, on a par with the events it covers); one that
                // moved only past filtered-out events is not: losing it costs a re-scan.
                let r = log
                    .store_checkpoint(&marks.name, &updates, durable || delivered)
                    .await;
                (t, marks, updates, delivered, r)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (t, marks, updates, delivered, result) in results {
            match result {
                Ok(()) => {
                    // Still the same trigger (not removed and re-added meanwhile:
                    // the lock is held, so it is).
                    if let Some(entry) = st.triggers.get_mut(t).and_then(Option::as_mut) {
                        entry.at = now;
                        for u in updates {
                            entry.offsets[u.partition as usize] = u.offset;
                        }
                    }
                }
                Err(ChannelError::Fenced {
                    partition,
                    epoch,
                    current,
                    ..
                }) => {
                    // Another process owns the partition now: this one writes no more
                    // of its checkpoints (the coordinator stops it at its next refresh).
                    if let Some(o) = st.owned.get_mut(partition as usize) {
                        if o.take().is_some() {
                            tracing::warn!(broker = %log.broker(), trigger = %marks.name, partition, epoch, current,
                                "partition has a newer owner; its checkpoints are no longer written from here");
                        }
                    }
                    if delivered {
                        restore_delivered(&marks, updates.iter().map(|u| u.partition as usize));
                    }
                }
                Err(e) => {
                    if delivered {
                        restore_delivered(&marks, updates.iter().map(|u| u.partition as usize));
                    }
                    tracing::warn!(broker = %log.broker(), trigger = %marks.name, error = %e, "cannot store checkpoint; will retry");
                }
            }
        }
    }
}

fn restore_delivered(marks: &Marks, partitions: impl Iterator<Item = usize>) {
    for p in partitions {
        marks.marks[p].delivered.store(true, Ordering::Release);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_logs::Recording;

    fn up(partition: u32, offset: Offset, epoch: Epoch) -> CheckpointUpdate {
        CheckpointUpdate::new(partition, offset, epoch)
    }

    fn lease(partition: u32, epoch: Epoch) -> Lease {
        Lease { partition, epoch }
    }

    struct Two {
        book: Book,
        marks: [Arc<Marks>; 2],
    }

    impl Two {
        fn mark(&self, t: usize, partition: u32) -> &Mark {
            self.marks[t].mark(partition)
        }
    }

    impl std::ops::Deref for Two {
        type Target = Book;
        fn deref(&self) -> &Book {
            &self.book
        }
    }

    async fn book(log: &Arc<Recording>) -> Two {
        let book = Book::new(log.clone(), Duration::from_secs(5));
        let a = book.add(0, "a".into(), &[10, 20]).await;
        let b = book.add(1, "b".into(), &[30, 40]).await;
        Two {
            book,
            marks: [a, b],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn flush_stores_moved_marks_of_owned_partitions_only() {
        let log = Recording::new(2);
        let book = book(&log).await;
        book.flush(true).await;
        assert!(
            log.take_stores().is_empty(),
            "nothing owned, nothing written"
        );

        book.acquire(&[lease(0, 3)]).await.unwrap();
        book.mark(0, 0).publish(11, true);
        book.mark(0, 1).publish(21, true); // not owned: never written from here
        book.mark(1, 0).publish(31, false); // only past filtered-out events
        book.flush(false).await;
        assert_eq!(
            log.take_stores(),
            vec![("a".into(), vec![up(0, 11, 3)], true)]
        );

        // The filtered-only move waits for `skips_stored_every`, then goes unsynced.
        book.flush(false).await;
        assert!(log.take_stores().is_empty());
        tokio::time::advance(Duration::from_secs(5)).await;
        book.flush(false).await;
        assert_eq!(
            log.take_stores(),
            vec![("b".into(), vec![up(0, 31, 3)], false)]
        );

        // A final store writes every owned partition durably, then disowns it.
        book.mark(0, 0).publish(12, false);
        book.finish(&[0, 1]).await;
        assert_eq!(
            log.take_stores(),
            vec![
                ("a".into(), vec![up(0, 12, 3)], true),
                ("b".into(), vec![up(0, 31, 3)], true)
            ]
        );
        book.mark(0, 0).publish(13, true);
        book.flush(true).await;
        assert!(log.take_stores().is_empty(), "disowned");
    }

    #[tokio::test]
    async fn acquire_loads_what_another_process_stored_since() {
        let log = Recording::new(2);
        let book = book(&log).await;
        log.stored.lock().unwrap().insert(("b".into(), 1), 44);
        book.acquire(&[lease(1, 2)]).await.unwrap();
        assert_eq!(book.mark(1, 1).reached(), 44, "moved on by another process");
        assert_eq!(
            book.mark(0, 1).reached(),
            20,
            "none stored: the start stays"
        );
        assert_eq!(book.mark(1, 0).reached(), 30, "not acquired: untouched");
        book.flush(true).await;
        assert_eq!(
            log.take_stores(),
            vec![
                ("a".into(), vec![up(1, 20, 2)], true),
                ("b".into(), vec![up(1, 44, 2)], true)
            ]
        );
    }

    #[tokio::test]
    async fn a_fenced_partition_is_written_no_more() {
        let log = Recording::new(2);
        let book = book(&log).await;
        book.acquire(&[lease(0, 3), lease(1, 3)]).await.unwrap();
        book.mark(0, 0).publish(11, true);
        book.flush(false).await;
        assert_eq!(
            log.take_stores(),
            vec![("a".into(), vec![up(0, 11, 3)], true)]
        );

        // Another process took partition 0 under epoch 9.
        log.fence.store(9, Ordering::Relaxed);
        book.mark(0, 0).publish(12, true);
        book.flush(false).await;
        assert!(log.take_stores().is_empty());
        assert_eq!(log.load_checkpoint("a").await.unwrap()[0], Some(11));

        // Even were the log to accept it now, this process no longer writes it; its
        // other partition goes on.
        log.fence.store(0, Ordering::Relaxed);
        book.mark(0, 0).publish(13, true);
        book.mark(0, 1).publish(25, true);
        book.flush(false).await;
        assert_eq!(
            log.take_stores(),
            vec![("a".into(), vec![up(1, 25, 3)], true)]
        );
        book.finish(&[0, 1]).await;
        assert_eq!(
            log.take_stores(),
            vec![
                ("a".into(), vec![up(1, 25, 3)], true),
                ("b".into(), vec![up(1, 40, 3)], true)
            ]
        );
    }
}
