//! The memory budget: one account of the event bytes a process holds, in bytes,
//! with a limit (`--memory-budget`).
//!
//! Every place that holds event bytes for a while takes a [`Charge`] for them first
//! and gives it back by dropping it: the ingress for a request from its body's first
//! byte until its append is confirmed (the body, the decoded events and their stored
//! encoding), the dispatcher for each event a lane holds (queued or in flight to the
//! subscriber) and for each reply it reads. What cannot be charged waits or is
//! refused, so the process's event memory stays under the limit whatever the load:
//! the ingress answers 503 with `Retry-After`, a lane stops taking events until
//! bytes are released (see the dispatcher's fair share).
//!
//! The account is one atomic counter; waiters are woken on every release.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// Default `--memory-budget`: 256 MiB, for a container of 512 MiB with room for the
/// process's own memory (code, buffers, per-trigger state, the allocator's slack).
pub const DEFAULT_MEMORY_BUDGET: usize = 256 << 20;

/// The account (shared: `Arc<MemoryBudget>`).
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    released: Notify,
    gauge: std::sync::OnceLock<Gauge>,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
            released: Notify::new(),
            gauge: std::sync::OnceLock::new(),
        })
    }

    /// A budget that never refuses (tests, tools).
    pub fn unlimited() -> Arc<MemoryBudget> {
        MemoryBudget::new(usize::MAX / 2)
    }

    /// Reports the use on `used` and the limit on `limit` from now on (the first
    /// call wins).
    pub fn report(&self, used: Gauge, limit: Gauge) {
        limit.set(self.limit.min(i64::MAX as usize) as i64);
        if self.gauge.set(used.clone()).is_ok() {
            used.set(self.used() as i64);
        }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let Some(after) = used.checked_add(bytes).filter(|a| *a <= self.limit) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(used, after, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    if let Some(g) = self.gauge.get() {
                        g.inc_by(bytes as i64);
                    }
                    return true;
                }
                Err(now) => used = now,
            }
        }
    }

    fn give_back(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        if let Some(g) = self.gauge.get() {
            g.dec_by(bytes as i64);
        }
        self.released.notify_waiters();
    }

    /// Charges `bytes` if they fit now.
    pub fn try_charge(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        self.take(bytes).then(|| Charge {
            budget: self.clone(),
            bytes,
        })
    }

    /// Charges `bytes`, waiting for releases until they fit. A charge larger than
    /// the whole limit is never granted: callers bound their charges first.
    pub async fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        retry_on(&self.released, || self.try_charge(bytes)).await
    }

    /// An empty charge, grown with [`Charge::try_grow`].
    pub fn empty(self: &Arc<Self>) -> Charge {
        Charge {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

/// Calls `attempt` until it gives a value, once now and again after each
/// notification of `released` (registered before each attempt, so that a release
/// between the attempt and the wait is not missed).
pub async fn retry_on<T>(released: &Notify, mut attempt: impl FnMut() -> Option<T>) -> T {
    loop {
        let notified = released.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(v) = attempt() {
            return v;
        }
        notified.await;
    }
}

/// Bytes charged to a [`MemoryBudget`], given back on drop.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Charge {
    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds `more` bytes if they fit now.
    pub fn try_grow(&mut self, more: usize) -> bool {
        let ok = self.budget.take(more);
        if ok {
            self.bytes += more;
        }
        ok
    }
}

impl Charge {
    /// Takes over the bytes of `other` (of the same budget).
    pub fn absorb(&mut self, mut other: Charge) {
        debug_assert!(Arc::ptr_eq(&self.budget, &other.budget));
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn charges_fit_the_limit_and_come_back_on_drop() {
        let b = MemoryBudget::new(100);
        let a = b.try_charge(60).expect("fits");
        assert!(b.try_charge(41).is_none(), "60 + 41 > 100");
        let mut c = b.try_charge(40).expect("exactly the limit");
        assert_eq!(b.used(), 100);
        assert!(!c.try_grow(1));
        drop(a);
        assert!(c.try_grow(60));
        assert_eq!(b.used(), 100);
        assert!(b.try_charge(usize::MAX).is_none(), "no overflow");
        // A waiter gets its bytes once enough are released.
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.charge(50).await.bytes() }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(c);
        assert_eq!(waiter.await.expect("no panic"), 50);
        assert_eq!(b.used(), 0, "the waiter's charge was dropped too");
    }
}
