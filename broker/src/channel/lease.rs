//! Partition ownership among dispatcher processes.
//!
//! Several dispatcher replicas of one broker split its partitions: each partition is
//! dispatched by the one process holding its lease, which keeps one shared reader per
//! partition and per-partition order. A backend whose log is local to one process (the
//! embedded log) owns every partition forever ([`AllPartitions`]); shared backends
//! implement [`PartitionLeases`] on their own coordination primitives (JetStream KV,
//! Kafka consumer groups).
//!
//! # The contract (every implementation; checked by the shared conformance case
//! `leases_hand_over_explicitly` in `tests/channel_conformance/`)
//!
//! 1. **One owner at a time.** [`PartitionLeases::refresh`] returns the partitions this
//!    process owns ([`Leased::owned`]), each with the [`Epoch`] of its lease: greater
//!    than the epoch of every earlier owner of that partition. The dispatcher writes
//!    the partition's checkpoints with it; the log refuses a write with an older epoch
//!    ([`ChannelError::Fenced`](super::ChannelError::Fenced)).
//! 2. **Explicit hand-over.** A partition another process should take (a rebalance) is
//!    listed in [`Leased::revoking`] and no longer in `owned`. The dispatcher stops
//!    taking its events, finishes or abandons its in-flight deliveries within its
//!    drain bound, writes its final checkpoints, and then calls
//!    [`PartitionLeases::release`]. Only then can another process acquire it: until
//!    the release (or [`HandOver::deadline`], whichever is first) the lease is kept
//!    and renewed, so the next owner starts from the final checkpoints, never from an
//!    older one while the previous owner still delivers.
//! 3. **Lost means stopped.** A partition that leaves `owned` without being listed in
//!    `revoking` was lost (its lease expired, or the group declared this process
//!    dead): another process may own it already. The dispatcher stops it at once; any
//!    checkpoint write it still makes is fenced.
//! 4. **Errors are errors.** A refresh that cannot reach the coordination service
//!    returns `Err`, never "nothing owned": the dispatcher keeps what it has until
//!    [`PartitionLeases::ttl`] passed without a successful refresh, then stops
//!    everything (another process may own it by then).
//! 5. **Leaving.** [`PartitionLeases::close`] gives up every lease at once (after the
//!    final checkpoints), so the others take over without waiting for the TTL.
//! 6. **No partition stays unowned.** Partitions reported in [`Leased::unowned`] for
//!    longer than twice the TTL make the dispatcher call [`PartitionLeases::rejoin`]:
//!    the backend acquires them regardless of the fair share (NATS) or joins the
//!    group afresh (Kafka). The dispatcher logs it at WARN and exports the count as
//!    `triggerfish_dispatcher_unowned_partitions`.

use std::time::Duration;

use async_trait::async_trait;

use super::{ChannelError, Epoch};

/// One owned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lease {
    /// The partition.
    pub partition: u32,
    /// The epoch its checkpoints are written with.
    pub epoch: Epoch,
}

/// What [`PartitionLeases::refresh`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leased {
    /// Partitions this process owns now, ascending.
    pub owned: Vec<Lease>,
    /// Partitions this process still holds but must hand over: stop them, write their
    /// final checkpoints, then [`PartitionLeases::release`] them. Ascending.
    pub revoking: Vec<u32>,
    /// Partitions no process holds a lease on, as far as this refresh could tell
    /// (empty where the backend cannot tell). Ascending.
    pub unowned: Vec<u32>,
}

impl Leased {
    /// The owned partitions' numbers.
    pub fn partitions(&self) -> Vec<u32> {
        self.owned.iter().map(|l| l.partition).collect()
    }

    /// The epoch of an owned partition.
    pub fn epoch(&self, partition: u32) -> Option<Epoch> {
        self.owned
            .iter()
            .find(|l| l.partition == partition)
            .map(|l| l.epoch)
    }
}

/// How long a hand-over may take: a process that does not release a revoked
/// partition within this loses it anyway, so a hung process cannot keep it forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandOver {
    /// From the moment a partition is listed in [`Leased::revoking`].
    pub deadline: Duration,
}

impl HandOver {
    /// The bound for a dispatcher that drains for `drain`: the drain, the final
    /// checkpoint writes, and a margin for one refresh period.
    pub fn for_drain(drain: Duration) -> HandOver {
        HandOver {
            deadline: drain.saturating_add(Duration::from_secs(10)),
        }
    }
}

impl Default for HandOver {
    fn default() -> Self {
        HandOver::for_drain(Duration::from_secs(30))
    }
}

/// Acquires, renews, hands over and releases partition leases for one process.
#[async_trait]
pub trait PartitionLeases: Send + Sync + 'static {
    /// Renews held leases and acquires free ones up to this process's fair share;
    /// returns what is owned and what is being handed over (see the module docs).
    async fn refresh(&self) -> Result<Leased, ChannelError>;

    /// Gives up these partitions, after their final checkpoints are written.
    async fn release(&self, partitions: &[u32]);

    /// Partitions have had no owner for longer than twice the TTL: acquire them (or
    /// join the group again) so that they are dispatched; see the module docs.
    async fn rejoin(&self, unowned: &[u32]) {
        let _ = unowned;
    }

    /// Gives up every lease (after every partition's final checkpoints are written)
    /// and leaves, so that the others take over at once; waits until that is done.
    async fn close(&self) {}

    /// How often [`PartitionLeases::refresh`] should run.
    fn renew_every(&self) -> Duration;

    /// How long a lease lasts without renewal.
    fn ttl(&self) -> Duration;
}

/// The epoch of [`AllPartitions`]' leases.
pub const SOLE_OWNER: Epoch = 1;

/// Every partition, always: for logs only one process can use.
#[derive(Debug, Clone, Copy)]
pub struct AllPartitions {
    partitions: u32,
}

impl AllPartitions {
    /// Owns `0..partitions`.
    pub fn new(partitions: u32) -> AllPartitions {
        AllPartitions { partitions }
    }
}

#[async_trait]
impl PartitionLeases for AllPartitions {
    async fn refresh(&self) -> Result<Leased, ChannelError> {
        Ok(Leased {
            owned: (0..self.partitions)
                .map(|partition| Lease {
                    partition,
                    epoch: SOLE_OWNER,
                })
                .collect(),
            revoking: Vec::new(),
            unowned: Vec::new(),
        })
    }

    async fn release(&self, _partitions: &[u32]) {}

    fn renew_every(&self) -> Duration {
        Duration::from_secs(3600)
    }

    fn ttl(&self) -> Duration {
        Duration::MAX
    }
}

/// Leases that cannot work (the process's name is unusable as a lease owner): every
/// refresh fails with the reason, so the dispatcher dispatches nothing and says why
/// (rather than owning everything, which would duplicate every delivery).
#[derive(Debug, Clone)]
pub struct Unusable {
    /// Why.
    pub reason: String,
}

#[async_trait]
impl PartitionLeases for Unusable {
    async fn refresh(&self) -> Result<Leased, ChannelError> {
        Err(ChannelError::Invalid {
            reason: self.reason.clone(),
        })
    }

    async fn release(&self, _partitions: &[u32]) {}

    fn renew_every(&self) -> Duration {
        Duration::from_secs(5)
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(5)
    }
}
