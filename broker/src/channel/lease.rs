//! Partition ownership among dispatcher processes.
//!
//! Several dispatcher replicas of one broker split its partitions: each partition is
//! dispatched by the one process holding its lease, which keeps one shared reader per
//! partition and per-partition order. A backend whose log is local to one process (the
//! embedded log) owns every partition forever ([`AllPartitions`]); shared backends
//! implement [`PartitionLeases`] on their own coordination primitives (JetStream KV,
//! Kafka consumer groups).
//!
//! A process must stop dispatching a partition when [`PartitionLeases::refresh`] no
//! longer returns it, and must stop everything when it cannot refresh within
//! [`PartitionLeases::ttl`] (another process may have taken over by then). Two holders
//! overlapping for a moment only cause duplicates, which at-least-once allows.

use std::time::Duration;

use async_trait::async_trait;

use super::ChannelError;

/// Acquires, renews and releases partition leases for one process.
#[async_trait]
pub trait PartitionLeases: Send + Sync + 'static {
    /// Renews held leases and acquires free ones up to this process's fair share;
    /// returns the partitions owned now, ascending.
    async fn refresh(&self) -> Result<Vec<u32>, ChannelError>;

    /// Gives up these partitions (after their final checkpoints are written).
    async fn release(&self, partitions: &[u32]);

    /// How often [`PartitionLeases::refresh`] should run.
    fn renew_every(&self) -> Duration;

    /// How long a lease lasts without renewal.
    fn ttl(&self) -> Duration;
}

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
    async fn refresh(&self) -> Result<Vec<u32>, ChannelError> {
        Ok((0..self.partitions).collect())
    }

    async fn release(&self, _partitions: &[u32]) {}

    fn renew_every(&self) -> Duration {
        Duration::from_secs(3600)
    }

    fn ttl(&self) -> Duration {
        Duration::MAX
    }
}

/// No partition, ever: for a process that must not dispatch (its leases could not be
/// set up), rather than one that owns everything and duplicates every delivery.
#[derive(Debug, Clone, Copy)]
pub struct NoPartitions;

#[async_trait]
impl PartitionLeases for NoPartitions {
    async fn refresh(&self) -> Result<Vec<u32>, ChannelError> {
        Ok(Vec::new())
    }

    async fn release(&self, _partitions: &[u32]) {}

    fn renew_every(&self) -> Duration {
        Duration::from_secs(3600)
    }

    fn ttl(&self) -> Duration {
        Duration::MAX
    }
}
