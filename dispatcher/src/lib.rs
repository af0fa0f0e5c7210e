//! The Triggerfish dispatcher: reads each broker's channel, evaluates every trigger's
//! filter, and delivers matches to subscribers, each trigger progressing on its own.
//!
//! Layout:
//! - [`fanout`]: one shared reader per broker partition evaluates all triggers once per
//!   event and feeds trigger lanes; a lane that falls behind detaches to a catch-up
//!   reader of its own and rejoins when it reaches the end.
//! - [`lane`]: one trigger on one partition: bounded concurrency, delivery, and the
//!   checkpoint as the contiguous done prefix.
//! - [`checkpoints`]: the checkpoint book, the one owner of every (trigger, partition)
//!   done mark and stored mark, and of writing them (only for owned partitions).
//! - [`settle`]: what happens to one event: delivered, reply stored, dead-lettered
//!   to the sink or to the broker's own dead-letter log.
//! - [`deliver`]: the HTTP POST with the trigger's retry policy.
//! - [`connector`]: the HTTP(S) connector of the delivery client.
//! - [`trust`]: which CAs HTTPS calls trust (system roots, `--ca-bundle`, a
//!   destination's `CACerts`): one client per trust set, picked per trigger.
//! - [`dead_letter`]: the broker's own dead-letter log: its entries, storing them,
//!   paged listing, and redrive as a background job in batches (the admin API's).
//! - [`malformed`]: stored records that are not CloudEvents go to the dead-letter log
//!   once per partition, never to a trigger.
//! - [`trigger`]: a trigger as it runs and where its replies and dead letters go, the
//!   state `lane` and `settle` share (a leaf, so that neither imports the other).
//!
//! Only [`dead_letter`], [`deliver`], [`settle`] and [`trust`] are public (the admin
//! API and tests use them); the rest is the crate's own. Imports go one way: `lib` →
//! `coordinator` → `lane` → `fanout` → `malformed` → `settle` → `dead_letter` →
//! `deliver`/`trigger`, `trigger` → `trust` → `deliver`, with `checkpoints` a leaf.
//!
//! [`start`] wires it all for a config and returns a [`Dispatcher`] whose
//! [`Dispatcher::wait`] returns after shutdown once lanes drained and the final
//! checkpoints are written. Checkpoints are flushed every [`CHECKPOINT_EVERY`]; a
//! crash loses at most that much checkpoint progress, which means redelivery, never
//! loss. A checkpoint that moved only past events its trigger did not match is
//! stored every [`DispatcherOptions::skips_stored_every`] instead (a crash then costs
//! a re-scan of events that are filtered out again). They are stored per trigger and
//! partition, and a process writes only those of the partitions it owns
//! ([`coordinator`], [`checkpoints`]), so dispatcher replicas sharing a broker never
//! overwrite each other's.

mod checkpoints;
mod connector;
mod coordinator;
pub mod dead_letter;
pub mod deliver;
mod fanout;
mod held;
pub mod identity;
mod lane;
mod malformed;
pub mod roster;
pub mod settle;
#[cfg(test)]
mod settle_tests;
pub mod status;
#[cfg(test)]
mod test_logs;
mod trigger;
pub mod trust;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use broker::channel::{BrokerLog, ChannelError, Offset};
use broker::config::{BrokerConfig, BrokerId, Config};
use broker::telemetry::Metrics;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use coordinator::{BrokerRun, Coordinator};
use roster::{Changes, Roster};
pub use trigger::{DeliveryError, Health};

/// How often changed checkpoints are written.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Dispatcher settings.
#[derive(Debug, Clone)]
pub struct DispatcherOptions {
    /// Queue length of each lane.
    pub lane_queue: usize,
    /// How long shutdown waits for deliveries in flight.
    pub drain_timeout: Duration,
    /// `knativebrokerttl` of events that carry none (replies decrement it).
    pub max_ttl: i32,
    /// This process's name among dispatcher replicas (for partition leases).
    pub owner: String,
    /// How often a trigger's checkpoint that moved only past events it did not match
    /// is stored (one that moved past deliveries is stored every flush).
    pub skips_stored_every: Duration,
    /// Limits replies are held to (the ingress's `--max-attribute*`).
    pub reply_limits: broker::event::EventLimits,
    /// The largest reply body read (the ingress's `--max-body-bytes`).
    pub max_reply_bytes: usize,
    /// The process's account of event bytes in memory (`--memory-budget`); lanes
    /// hold at most half of it, each trigger its fair share ([`held`]).
    pub budget: Arc<broker::budget::MemoryBudget>,
    /// How long a removed trigger keeps its checkpoint (and, on the embedded log,
    /// its hold on retention): re-added within it, it resumes where it stopped
    /// (`--removed-trigger-grace`).
    pub removed_trigger_grace: Duration,
    /// How long a lane has nothing to do before it parks (see [`fanout`]):
    /// [`lane::PARK_AFTER`] unless a test wants many park and wake cycles.
    pub lane_park_after: Duration,
    /// The outgoing identity (`--delivery-token-file`): sent with every delivery,
    /// dead-letter sink call and redrive.
    pub delivery_token: Option<Arc<identity::BearerToken>>,
    /// CA certificates every HTTPS call trusts besides the system's roots
    /// (`--ca-bundle`); a destination's `CACerts` add to them for it ([`trust`]).
    pub ca_bundle: Option<broker::config::CaCerts>,
    /// Test-only fault injection ([`settle::FaultHook`]); `None` in production.
    #[doc(hidden)]
    pub fault: Option<settle::FaultHook>,
}

impl Default for DispatcherOptions {
    fn default() -> Self {
        DispatcherOptions {
            lane_queue: 512,
            drain_timeout: Duration::from_secs(30),
            max_ttl: settle::DEFAULT_MAX_TTL,
            owner: default_owner(),
            skips_stored_every: Duration::from_secs(5),
            fault: None,
            reply_limits: Default::default(),
            max_reply_bytes: deliver::MAX_RESPONSE_BYTES,
            budget: broker::budget::MemoryBudget::unlimited(),
            removed_trigger_grace: Duration::from_secs(3600),
            lane_park_after: lane::PARK_AFTER,
            delivery_token: None,
            ca_bundle: None,
        }
    }
}

/// A running dispatcher: every broker's triggers, changed in place by
/// [`Dispatcher::apply`].
pub struct Dispatcher {
    opts: DispatcherOptions,
    metrics: Arc<Metrics>,
    trust: Arc<trust::Trust>,
    hand_over: broker::channel::lease::HandOver,
    incarnations: Arc<AtomicU64>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    brokers: BTreeMap<BrokerId, BrokerHandle>,
}

/// One broker as the dispatcher runs it.
struct BrokerHandle {
    roster: Roster,
    logs: BrokerLogs,
    /// Its coordinator, once the broker had a trigger (a broker without triggers
    /// reads nothing); cancelled when the broker is removed.
    running: Option<CancellationToken>,
    /// Removed from the config: its dispatching stopped; data and checkpoints stay.
    removed: bool,
}

/// What one [`Dispatcher::apply`] did.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    /// The config generation applied.
    pub generation: u64,
    /// Brokers whose dispatching started.
    pub brokers_added: Vec<String>,
    /// Brokers whose dispatching stopped.
    pub brokers_removed: Vec<String>,
    /// Trigger changes, named `namespace/broker/trigger`.
    pub triggers: Changes,
    /// How long it took.
    pub took: Duration,
}

impl Dispatcher {
    /// Waits until shutdown completes: lanes drained, final checkpoints written.
    pub async fn wait(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Brings every broker to `config` (generation `generation`), touching only what
    /// changed ([`roster`]): new brokers start dispatching (once they have a
    /// trigger), removed ones stop after draining, and each broker's triggers are
    /// added, changed, removed or resumed. `logs` holds every configured broker's
    /// opened logs. New triggers start at the end of the log, stored durably (in
    /// one batch per broker) before this returns. On error (a start point could
    /// not be stored), the brokers applied before it keep their new triggers and
    /// the rest their old ones; applying the same config again completes it.
    pub async fn apply(
        &mut self,
        config: &Config,
        logs: &HashMap<BrokerId, BrokerLogs>,
        generation: u64,
    ) -> Result<Applied, ChannelError> {
        let began = std::time::Instant::now();
        let mut applied = Applied {
            generation,
            ..Applied::default()
        };
        // Each trigger's fair share of the lanes' part of the budget (see `held`).
        let all_triggers: usize = config.brokers.iter().map(|b| b.triggers.len()).sum();
        let share = held::lanes_part(&self.opts.budget) / all_triggers.max(1);
        for broker in &config.brokers {
            if !self.brokers.contains_key(&broker.id) {
                let Some(logs) = logs.get(&broker.id) else {
                    return Err(ChannelError::Invalid {
                        reason: format!("no log opened for broker {}", broker.id),
                    });
                };
                let handle = self.broker_handle(logs).await?;
                self.brokers.insert(broker.id.clone(), handle);
            }
            let handle = self.brokers.get_mut(&broker.id).expect("inserted above");
            let changes = handle.roster.apply(&broker.triggers, generation).await?;
            handle.roster.set_share(share);
            if handle.removed {
                handle.removed = false;
                applied.brokers_added.push(broker.id.to_string());
            }
            applied.triggers.extend(&broker.id, changes);
            if handle.running.is_none() && handle.roster.configured() > 0 {
                let token = self.start_broker(&broker.id).await;
                if let Some(h) = self.brokers.get_mut(&broker.id) {
                    h.running = Some(token);
                }
                applied.brokers_added.push(broker.id.to_string());
            }
        }
        for (id, handle) in &mut self.brokers {
            if handle.removed || config.broker(&id.namespace, &id.name).is_some() {
                continue;
            }
            handle.removed = true;
            handle.roster.remove_all();
            if let Some(token) = handle.running.take() {
                // Its lanes settle what they took, final checkpoints are written,
                // leases released.
                token.cancel();
            }
            applied.brokers_removed.push(id.to_string());
        }
        applied.took = began.elapsed();
        Ok(applied)
    }

    /// Deletes the slots and checkpoints of triggers removed longer than the grace
    /// period ago; returns their names (`namespace/broker/trigger`).
    pub async fn expire(&mut self) -> Vec<String> {
        let mut gone = Vec::new();
        for (id, h) in &mut self.brokers {
            for t in h.roster.expire(self.opts.removed_trigger_grace).await {
                gone.push(format!("{id}/{t}"));
            }
        }
        gone
    }

    /// What status shows of every broker this process dispatches (or `only`).
    pub async fn status(&self, only: Option<&BrokerId>) -> Vec<status::BrokerStatus> {
        let mut out = Vec::new();
        for (id, h) in &self.brokers {
            if only.is_some_and(|o| o != id) || h.removed {
                continue;
            }
            out.push(
                status::broker(id, &h.roster, h.logs.events.as_ref(), h.running.is_some()).await,
            );
        }
        out
    }

    async fn broker_handle(&self, logs: &BrokerLogs) -> Result<BrokerHandle, ChannelError> {
        let id = logs.events.broker().clone();
        let sinks = Arc::new(settle::BrokerSinks {
            events: logs.events.clone(),
            dead_letters: logs.dead_letters.clone(),
            max_ttl: self.opts.max_ttl,
            shutdown: self.shutdown.clone(),
            fault: self.opts.fault.clone(),
            limits: self.opts.reply_limits,
            max_reply_bytes: self.opts.max_reply_bytes,
            budget: self.opts.budget.clone(),
        });
        self.metrics
            .dead_letter_gauge(&id.to_string())
            .set(dead_letter::backlog(logs.dead_letters.as_ref()).await? as i64);
        let book = Arc::new(checkpoints::Book::new(
            logs.events.clone(),
            self.opts.skips_stored_every,
        ));
        Ok(BrokerHandle {
            roster: Roster::new(
                logs.events.clone(),
                book,
                sinks,
                self.trust.clone(),
                self.metrics.clone(),
                self.incarnations.clone(),
            ),
            logs: logs.clone(),
            running: None,
            removed: false,
        })
    }

    /// Starts the coordinator of a broker; the first lease refresh happens before
    /// this returns.
    async fn start_broker(&self, id: &BrokerId) -> CancellationToken {
        let h = &self.brokers[id];
        let log = &h.logs.events;
        let broker = id.to_string();
        let token = self.shutdown.child_token();
        let malformed = Arc::new(malformed::Sink {
            events: h.logs.events.clone(),
            dead_letters: h.logs.dead_letters.clone(),
            counter: self.metrics.malformed_counter(&broker),
            backlog: self.metrics.dead_letter_gauge(&broker),
        });
        let read_room = (held::lanes_part(&self.opts.budget) / 8).max(64 << 10);
        let run = Arc::new(BrokerRun {
            id: id.clone(),
            malformed,
            partitions_gauge: self.metrics.partitions_gauge(&broker),
            unowned_gauge: self.metrics.unowned_partitions_gauge(&broker),
            log: log.clone(),
            table: h.roster.tables(),
            book: h.roster.book().clone(),
            lane_queue: self.opts.lane_queue,
            park_after: self.opts.lane_park_after,
            parked_gauge: self.metrics.parked_lanes_gauge(&broker),
            drain: self.opts.drain_timeout,
            read_room,
        });
        let mut coordinator = Coordinator::new(
            run,
            log.leases(&self.opts.owner, self.hand_over),
            token.clone(),
        );
        coordinator.step().await;
        self.tasks.spawn(run_broker(
            coordinator,
            h.roster.book().clone(),
            h.roster.tables(),
            log.clone(),
        ));
        tracing::info!(broker = %id, triggers = h.roster.configured(), partitions = log.partitions(), "dispatching");
        token
    }
}

/// A broker's opened logs.
#[derive(Clone)]
pub struct BrokerLogs {
    /// Its events.
    pub events: Arc<dyn BrokerLog>,
    /// Its own dead-letter log.
    pub dead_letters: Arc<dyn BrokerLog>,
}

/// Starts dispatching every broker of `config` (as generation 1). `logs` holds each
/// broker's opened logs. New triggers start at the current end of the log, and that
/// position is stored durably before this returns, so events accepted after it are
/// never missed. The partitions this process dispatches come from the log's
/// partition leases (all of them for the embedded log); the first lease refresh
/// happens before this returns.
pub async fn start(
    config: &Config,
    logs: &HashMap<BrokerId, BrokerLogs>,
    metrics: &Arc<Metrics>,
    opts: &DispatcherOptions,
    shutdown: CancellationToken,
) -> Result<Dispatcher, ChannelError> {
    let mut d = Dispatcher {
        opts: opts.clone(),
        metrics: metrics.clone(),
        trust: trust::Trust::new(opts.ca_bundle.as_ref(), opts.delivery_token.clone()),
        hand_over: broker::channel::lease::HandOver::for_drain(opts.drain_timeout),
        incarnations: Arc::new(AtomicU64::new(0)),
        shutdown,
        tasks: TaskTracker::new(),
        brokers: BTreeMap::new(),
    };
    d.apply(config, logs, 1).await?;
    Ok(d)
}

/// Runs a broker's coordinator and its checkpoint flusher until the broker stops
/// (shutdown, or removed from the config).
async fn run_broker(
    coordinator: Coordinator,
    book: Arc<checkpoints::Book>,
    tables: tokio::sync::watch::Receiver<Arc<roster::Table>>,
    log: Arc<dyn BrokerLog>,
) {
    let done = CancellationToken::new();
    let flusher = tokio::spawn(flush_checkpoints(book, tables, log, done.clone()));
    coordinator.run().await;
    done.cancel();
    let _ = flusher.await;
}

/// A process name unique enough among replicas: host name and process id.
pub fn default_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}-{}", std::process::id())
}

pub use dead_letter::REDRIVE_CURSOR;

/// Gives every trigger of `broker` a checkpoint on each partition that has none: the
/// current end of the log, stored durably in one batch (where another process has
/// not stored one first). Events accepted after this returns are delivered to these
/// triggers; the ingress role calls it (on start and on each reload), so that the
/// order in which ingress and dispatcher processes start or reload does not matter.
pub async fn init_checkpoints(
    broker: &BrokerConfig,
    log: &dyn BrokerLog,
) -> Result<(), ChannelError> {
    if broker.triggers.is_empty() {
        return Ok(());
    }
    let mut initial = Vec::with_capacity(log.partitions() as usize);
    for p in 0..log.partitions() {
        initial.push((p, log.end_offset(p).await?));
    }
    let inits: Vec<(String, Vec<(u32, Offset)>)> = broker
        .triggers
        .iter()
        .map(|t| (t.name.clone(), initial.clone()))
        .collect();
    log.init_checkpoints(&inits).await
}

/// How often the lag gauges are brought up to date.
const LAG_EVERY: Duration = Duration::from_secs(2);

/// Writes changed checkpoints every [`CHECKPOINT_EVERY`] until `done`, then once more
/// durably; sets the triggers' lag gauges every [`LAG_EVERY`].
async fn flush_checkpoints(
    book: Arc<checkpoints::Book>,
    tables: tokio::sync::watch::Receiver<Arc<roster::Table>>,
    log: Arc<dyn BrokerLog>,
    done: CancellationToken,
) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lag_at = tokio::time::Instant::now();
    loop {
        let last = tokio::select! {
            () = done.cancelled() => true,
            _ = tick.tick() => false,
        };
        book.flush(last).await;
        if last {
            break;
        }
        if lag_at.elapsed() >= LAG_EVERY {
            lag_at = tokio::time::Instant::now();
            let table = tables.borrow().clone();
            status::set_lag_gauges(&table, &book, log.as_ref()).await;
        }
    }
}
