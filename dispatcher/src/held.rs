//! The dispatcher's side of the memory budget ([`broker::budget`]): events held by
//! lanes, each trigger within its fair share.
//!
//! - An event read from the log and matched by at least one lane becomes a
//!   [`Held`]: its bytes (its stored encoding's length, about its size in memory)
//!   are charged to the process's budget once, however many lanes share it, and
//!   given back when the last lane lets go of it.
//! - Each trigger has a [`LaneAccount`]: the bytes of the events its lanes hold
//!   (queued, waiting for their key, in flight), counted in full for each trigger.
//!   A trigger may hold at most its *share*: the lanes' part of the budget (half of
//!   it; the rest is the ingress's and the replies') divided by the number of
//!   triggers, and always at least one event, so that a trigger with events larger
//!   than its share still progresses.
//!
//! The shared reader never waits: an event a lane cannot take within its share (or
//! that the budget cannot hold now) detaches the lane, as a full queue does, and the
//! lane's catch-up reader waits for its bytes. A trigger whose subscriber hangs thus
//! stops at its share, and every other trigger keeps its own.
//!
//! Readers size their batches by bytes too ([`batch_len`]), so that reading does
//! not hold more than a bounded part of the budget before events are charged.

use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use broker::budget::{Charge, MemoryBudget};
use broker::event::{codec, Event};
use tokio::sync::Notify;

/// The part of the memory budget all lanes together may hold: half of it.
pub fn lanes_part(budget: &MemoryBudget) -> usize {
    budget.limit() / 2
}

/// The bytes an event is charged for: its stored encoding's length, but never more
/// than the lanes' part of `budget`, so that a charge can always be granted once
/// the others are released (an event from another producer on a shared channel can
/// be larger than a small dispatcher's whole budget).
pub fn size_of(event: &Event, budget: &MemoryBudget) -> usize {
    codec::encoded_len(event).min(lanes_part(budget).max(1))
}

/// An event held by one or more lanes, its bytes charged to the budget.
#[derive(Debug)]
pub struct Held {
    event: Event,
    _charge: Charge,
}

impl Held {
    /// Wraps `event` with the charge for its bytes.
    pub fn new(event: Event, charge: Charge) -> Held {
        Held {
            event,
            _charge: charge,
        }
    }
}

impl Deref for Held {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

/// The bytes one trigger's lanes hold, against its share.
#[derive(Debug)]
pub struct LaneAccount {
    held: AtomicUsize,
    /// Changes when triggers are added or removed.
    share: AtomicUsize,
    released: Notify,
    budget: Arc<MemoryBudget>,
}

impl LaneAccount {
    /// An account with this share of `budget`.
    pub fn new(share: usize, budget: Arc<MemoryBudget>) -> Arc<LaneAccount> {
        Arc::new(LaneAccount {
            held: AtomicUsize::new(0),
            share: AtomicUsize::new(share.max(1)),
            released: Notify::new(),
            budget,
        })
    }

    /// The process's budget.
    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// The share in bytes.
    pub fn share(&self) -> usize {
        self.share.load(Ordering::Relaxed)
    }

    /// Sets the share (the number of triggers changed); a larger one lets waiting
    /// readers go on.
    pub fn set_share(&self, share: usize) {
        let old = self.share.swap(share.max(1), Ordering::Relaxed);
        if share > old {
            self.released.notify_waiters();
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) -> bool {
        let mut held = self.held.load(Ordering::Relaxed);
        loop {
            // Always one event, however large, so that the trigger progresses.
            if held != 0 && held.saturating_add(bytes) > self.share() {
                return false;
            }
            match self.held.compare_exchange_weak(
                held,
                held + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => held = now,
            }
        }
    }

    /// Charges `bytes` to this trigger if they fit its share now.
    pub fn try_charge(self: &Arc<Self>, bytes: usize) -> Option<LaneCharge> {
        self.take(bytes).then(|| LaneCharge {
            account: self.clone(),
            bytes,
        })
    }

    /// Charges `bytes` to this trigger, waiting until they fit its share.
    pub async fn charge(self: &Arc<Self>, bytes: usize) -> LaneCharge {
        broker::budget::retry_on(&self.released, || self.try_charge(bytes)).await
    }
}

/// Bytes charged to a trigger's account, given back on drop (when its lane is done
/// with the event).
#[derive(Debug)]
pub struct LaneCharge {
    account: Arc<LaneAccount>,
    bytes: usize,
}

impl Drop for LaneCharge {
    fn drop(&mut self) {
        self.account.held.fetch_sub(self.bytes, Ordering::AcqRel);
        self.account.released.notify_waiters();
    }
}

/// How many records a reader asks for: as many as its room holds at the largest
/// record size of its last batch, and while sizes are unknown or growing, at most
/// double what it asked for last time a batch came back full (one record first).
/// A batch that came back short (the reader is at the end of the log) does not
/// shrink the next one.
#[derive(Debug)]
pub struct BatchSize {
    asked: usize,
    largest: usize,
    max: usize,
}

impl BatchSize {
    /// Starts at one record, never more than `max`.
    pub fn new(max: usize) -> BatchSize {
        BatchSize {
            asked: 1,
            largest: 0,
            max: max.max(1),
        }
    }

    /// The next batch's length for `room` bytes.
    pub fn next(&mut self, room: usize) -> usize {
        let fits = match self.largest {
            0 => self.max,
            largest => (room / largest).clamp(1, self.max),
        };
        self.asked.min(fits)
    }

    /// A batch of `len` records came back, the largest of `largest` bytes.
    pub fn saw(&mut self, len: usize, largest: usize) {
        if len == 0 {
            return;
        }
        self.largest = largest.max(1);
        if len >= self.asked {
            self.asked = (self.asked * 2).min(self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_trigger_holds_its_share_and_at_least_one_event() {
        let budget = MemoryBudget::new(1000);
        let a = LaneAccount::new(100, budget);
        let big = a.try_charge(500).expect("one event always fits");
        assert!(a.try_charge(1).is_none(), "over the share");
        drop(big);
        let x = a.try_charge(60).expect("fits");
        let y = a.try_charge(40).expect("fits");
        assert!(a.try_charge(1).is_none());
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.charge(30).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(x);
        let z = waiter.await.expect("no panic");
        assert_eq!(a.held(), 70);
        drop((y, z));
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn batches_grow_from_one_and_stay_within_room() {
        let mut b = BatchSize::new(256);
        assert_eq!(b.next(1 << 20), 1, "one record first");
        b.saw(1, 100);
        assert_eq!(b.next(1 << 20), 2, "doubling while full");
        for _ in 0..10 {
            let n = b.next(1 << 20);
            b.saw(n, 100);
        }
        assert_eq!(b.next(1 << 20), 256, "up to the most");
        b.saw(3, 100);
        assert_eq!(
            b.next(1 << 20),
            256,
            "a short batch (at the end) does not shrink it"
        );
        b.saw(256, 1 << 20);
        assert_eq!(b.next(16 << 20), 16, "16 MiB of 1 MiB records");
        assert_eq!(b.next(1 << 10), 1, "at least one");
        b.saw(1, 100);
        assert_eq!(
            b.next(1 << 20),
            256,
            "small records again: back to the most"
        );
    }
}
