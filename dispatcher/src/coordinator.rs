//! Which partitions of a broker this process dispatches, and starting and stopping
//! them as partition leases come and go.
//!
//! Each owned partition runs its shared reader, the catch-up readers and one lane per
//! trigger under a cancellation token and task tracker of its own. A partition being
//! handed over (listed as revoking by the leases), lost, or shutdown cancels that
//! token: lanes stop taking events, finish deliveries in flight within the drain
//! timeout, and the partition's final checkpoints are written ([`crate::checkpoints`])
//! before the lease is released, so the next owner starts where this one stopped
//! (the lease contract, [`broker::channel::lease`]). Checkpoints carry the lease's
//! epoch: a lost partition's late writes are fenced. A process that cannot refresh
//! its leases within their TTL stops every partition, since another process may own
//! them by then.
//!
//! A partition that starts (again) begins at its stored checkpoint, loaded at that
//! moment: another process may have dispatched it in between. Checkpoints are written
//! only for the partitions this process owns ([`BrokerRun::owned`]), so replicas never
//! overwrite each other's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use broker::channel::lease::{Lease, PartitionLeases};
use broker::channel::{BrokerLog, Epoch};
use broker::config::BrokerId;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fanout::{self, Partition};
use crate::lane;
use crate::roster::{SlotHandle, Table};

/// Everything needed to run any partition of one broker.
pub struct BrokerRun {
    /// The broker.
    pub id: BrokerId,
    /// Its event log.
    pub log: Arc<dyn BrokerLog>,
    /// Its triggers as configured now ([`crate::roster`]).
    pub table: tokio::sync::watch::Receiver<Arc<Table>>,
    /// Its checkpoints.
    pub book: Arc<crate::checkpoints::Book>,
    /// Queue length of each lane.
    pub lane_queue: usize,
    /// How long a lane idles before it parks.
    pub park_after: Duration,
    /// The broker's parked lanes.
    pub parked_gauge: prometheus_client::metrics::gauge::Gauge,
    /// How long a stopping lane waits for deliveries in flight.
    pub drain: Duration,
    /// How many bytes of records a shared reader reads at once.
    pub read_room: usize,
    /// Where malformed records go.
    pub malformed: Arc<crate::malformed::Sink>,
    /// How many partitions this process dispatches now.
    pub partitions_gauge: prometheus_client::metrics::gauge::Gauge,
    /// How many partitions of the broker no process owns, as last seen.
    pub unowned_gauge: prometheus_client::metrics::gauge::Gauge,
}

struct Running {
    epoch: Epoch,
    token: CancellationToken,
    tasks: TaskTracker,
    /// What its lanes share (its readers' context among it).
    spec: Arc<lane::LaneSpec>,
    /// The slots whose lanes run here, by slot.
    spawned: Vec<Option<Arc<SlotHandle>>>,
}

/// Keeps the set of running partitions equal to the set of leased ones.
pub struct Coordinator {
    run: Arc<BrokerRun>,
    leases: Arc<dyn PartitionLeases>,
    running: BTreeMap<u32, Running>,
    /// Partitions being stopped in the background (draining, then releasing), so
    /// that lease renewal goes on meanwhile.
    stopping: Vec<(Vec<u32>, tokio::task::JoinHandle<()>)>,
    shutdown: CancellationToken,
    last_refresh: Instant,
    /// Partitions seen without an owner, since when.
    unowned_since: BTreeMap<u32, Instant>,
}

impl Coordinator {
    /// A coordinator with nothing running yet.
    pub fn new(
        run: Arc<BrokerRun>,
        leases: Arc<dyn PartitionLeases>,
        shutdown: CancellationToken,
    ) -> Coordinator {
        Coordinator {
            run,
            leases,
            running: BTreeMap::new(),
            stopping: Vec::new(),
            shutdown,
            last_refresh: Instant::now(),
            unowned_since: BTreeMap::new(),
        }
    }

    /// Refreshes leases once and starts or stops partitions to match: partitions no
    /// longer owned (handed over or lost) stop in the background, and those being
    /// handed over are released once their final checkpoints are written.
    pub async fn step(&mut self) {
        self.stopping.retain(|(_, h)| !h.is_finished());
        match self.leases.refresh().await {
            Ok(leased) => {
                self.last_refresh = Instant::now();
                self.watch_unowned(&leased.unowned).await;
                // Gone, or owned again under another epoch (lost and re-acquired
                // between two refreshes): that run stops, a new one starts later.
                let gone: Vec<u32> = self
                    .running
                    .iter()
                    .filter(|(p, r)| leased.epoch(**p) != Some(r.epoch))
                    .map(|(p, _)| *p)
                    .collect();
                self.stop_in_background(&gone);
                // Handed over before it ever ran here (or after its run stopped).
                let idle: Vec<u32> = leased
                    .revoking
                    .iter()
                    .copied()
                    .filter(|p| !self.running.contains_key(p) && !self.is_stopping(*p))
                    .collect();
                if !idle.is_empty() {
                    self.leases.release(&idle).await;
                }
                let new: Vec<Lease> = leased
                    .owned
                    .iter()
                    .copied()
                    .filter(|l| !self.running.contains_key(&l.partition))
                    // Restart a partition only once its previous run has stopped.
                    .filter(|l| !self.is_stopping(l.partition))
                    .collect();
                if !new.is_empty() {
                    match self.run.book.acquire(&new).await {
                        Ok(()) => {
                            for l in new {
                                self.start(l);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(broker = %self.run.id, partitions = ?new, error = %e, "cannot load checkpoints of newly leased partitions; will retry");
                        }
                    }
                }
                self.run.partitions_gauge.set(self.running.len() as i64);
            }
            Err(e) => {
                tracing::warn!(broker = %self.run.id, error = %e, "cannot refresh partition leases");
                if self.last_refresh.elapsed() >= self.leases.ttl() && !self.running.is_empty() {
                    tracing::error!(broker = %self.run.id, "partition leases expired; stopping every partition until they can be renewed");
                    let all: Vec<u32> = self.running.keys().copied().collect();
                    self.stop_in_background(&all);
                    self.run.partitions_gauge.set(0);
                }
            }
        }
    }

    /// Partitions without an owner for more than twice the lease TTL: rejoin.
    async fn watch_unowned(&mut self, unowned: &[u32]) {
        self.run.unowned_gauge.set(unowned.len() as i64);
        let now = Instant::now();
        self.unowned_since.retain(|p, _| unowned.contains(p));
        for &p in unowned {
            self.unowned_since.entry(p).or_insert(now);
        }
        let limit = self.leases.ttl().saturating_mul(2);
        let stuck: Vec<u32> = self
            .unowned_since
            .iter()
            .filter(|(_, since)| since.elapsed() >= limit)
            .map(|(p, _)| *p)
            .collect();
        if stuck.is_empty() {
            return;
        }
        tracing::warn!(broker = %self.run.id, partitions = ?stuck, after = ?limit,
            "partitions have had no owner for twice the lease TTL; rejoining to take them");
        self.leases.rejoin(&stuck).await;
        for p in stuck {
            self.unowned_since.insert(p, now);
        }
    }

    fn is_stopping(&self, p: u32) -> bool {
        self.stopping.iter().any(|(ps, _)| ps.contains(&p))
    }

    /// Runs until shutdown, then stops every partition and releases the leases.
    pub async fn run(mut self) {
        let mut tables = self.run.table.clone();
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                // New triggers: their lanes start on every running partition.
                Ok(()) = tables.changed() => {
                    let table = tables.borrow_and_update().clone();
                    for r in self.running.values_mut() {
                        spawn_lanes(r, &table);
                    }
                }
                () = tokio::time::sleep(self.leases.renew_every()) => self.step().await,
            }
        }
        let all: Vec<u32> = self.running.keys().copied().collect();
        self.stop_in_background(&all);
        for (_, h) in self.stopping.drain(..) {
            let _ = h.await;
        }
        // Every final checkpoint is written: leave, so the others take over now.
        self.leases.close().await;
    }

    fn start(&mut self, lease: Lease) {
        let Lease {
            partition: p,
            epoch,
        } = lease;
        let run = &self.run;
        let token = self.shutdown.child_token();
        let tasks = TaskTracker::new();
        // Room for a burst of starting lanes asking to attach (10,000 triggers).
        let (join_tx, join_rx) = mpsc::channel(1024);
        let ctx = Partition {
            log: run.log.clone(),
            partition: p,
            epoch,
            table: run.table.clone(),
            joins: join_tx,
            shutdown: token.clone(),
            tasks: tasks.clone(),
            malformed: run.malformed.clone(),
            read_room: run.read_room,
            lane_queue: run.lane_queue,
            parked: run.parked_gauge.clone(),
        };
        tasks.spawn(fanout::shared_reader(ctx.clone(), join_rx));
        let spec = Arc::new(lane::LaneSpec {
            ctx,
            drain: run.drain,
            park_after: run.park_after,
        });
        let mut running = Running {
            epoch,
            token,
            tasks,
            spec,
            spawned: Vec::new(),
        };
        let table = run.table.borrow().clone();
        spawn_lanes(&mut running, &table);
        tracing::info!(broker = %run.id, partition = p, epoch, triggers = running.spawned.iter().flatten().count(), "dispatching partition");
        self.running.insert(p, running);
    }

    /// Stops partitions without holding up lease renewal: their lanes drain, their
    /// final checkpoints are written, and then their leases are released.
    fn stop_in_background(&mut self, partitions: &[u32]) {
        let mut stopping = Vec::new();
        for p in partitions {
            if let Some(r) = self.running.remove(p) {
                r.token.cancel();
                r.tasks.close();
                stopping.push((*p, r));
            }
        }
        if stopping.is_empty() {
            return;
        }
        let run = self.run.clone();
        let leases = self.leases.clone();
        let ids: Vec<u32> = stopping.iter().map(|(p, _)| *p).collect();
        let released = ids.clone();
        let handle = tokio::spawn(async move {
            for (p, r) in &stopping {
                r.tasks.wait().await;
                tracing::info!(broker = %run.id, partition = p, "stopped dispatching partition");
            }
            // The final checkpoints of these partitions are written before the
            // leases go.
            run.book.finish(&released).await;
            leases.release(&released).await;
        });
        self.stopping.push((ids, handle));
    }
}

/// Starts the lanes of the table's slots that do not run on this partition yet (a
/// slot reused after a deleted one is a new slot).
fn spawn_lanes(r: &mut Running, table: &Table) {
    if r.spawned.len() < table.slots.len() {
        r.spawned.resize_with(table.slots.len(), || None);
    }
    for (slot, handle) in table.slots.iter().enumerate() {
        let Some(handle) = handle else { continue };
        if r.spawned[slot]
            .as_ref()
            .is_some_and(|h| Arc::ptr_eq(h, handle))
        {
            continue;
        }
        r.spawned[slot] = Some(handle.clone());
        r.tasks.spawn(lane::supervise(
            handle.clone(),
            r.spec.ctx.partition,
            r.spec.clone(),
        ));
    }
}
