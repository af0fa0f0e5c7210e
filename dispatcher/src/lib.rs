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
//! - [`dead_letter`]: the broker's own dead-letter log: its entries, storing them,
//!   paged listing, and redrive as a background job in batches (the admin API's).
//! - [`malformed`]: stored records that are not CloudEvents go to the dead-letter log
//!   once per partition, never to a trigger.
//! - [`trigger`]: a trigger as it runs and where its replies and dead letters go, the
//!   state `lane` and `settle` share (a leaf, so that neither imports the other).
//!
//! Only [`dead_letter`], [`deliver`] and [`settle`] are public (the admin API and
//! tests use them); the rest is the crate's own. Imports go one way: `lib` →
//! `coordinator` → `lane` → `fanout` → `malformed` → `settle` → `dead_letter` →
//! `deliver`/`trigger`, with `checkpoints` a leaf.
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
mod lane;
mod malformed;
pub mod settle;
#[cfg(test)]
mod settle_tests;
#[cfg(test)]
mod test_logs;
mod trigger;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use broker::channel::{BrokerLog, ChannelError, Offset};
use broker::config::{BrokerConfig, BrokerId, Config};
use broker::telemetry::Metrics;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use coordinator::{BrokerRun, Coordinator};
use fanout::LaneInfo;
use trigger::TriggerRuntime;

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
        }
    }
}

/// A running dispatcher.
pub struct Dispatcher {
    tasks: TaskTracker,
    flushers: TaskTracker,
    lanes_done: CancellationToken,
}

impl Dispatcher {
    /// Waits until shutdown completes: lanes drained, final checkpoints written.
    pub async fn wait(self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.lanes_done.cancel();
        self.flushers.close();
        self.flushers.wait().await;
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

/// Starts dispatching every broker of `config`. `logs` holds each broker's opened
/// logs. New triggers start at the current end of the log, and that position is stored
/// durably before this returns, so events accepted after it are never missed. The
/// partitions this process dispatches come from the log's partition leases (all of
/// them for the embedded log); the first lease refresh happens before this returns.
pub async fn start(
    config: &Config,
    logs: &HashMap<BrokerId, BrokerLogs>,
    metrics: &Metrics,
    opts: &DispatcherOptions,
    shutdown: CancellationToken,
) -> Result<Dispatcher, ChannelError> {
    let tasks = TaskTracker::new();
    let flushers = TaskTracker::new();
    let lanes_done = CancellationToken::new();
    let client = deliver::client();
    let hand_over = broker::channel::lease::HandOver::for_drain(opts.drain_timeout);
    // Each trigger's fair share of the lanes' part of the budget, and how much the
    // shared readers read at once (see `held`).
    let lanes_part = held::lanes_part(&opts.budget);
    let all_triggers: usize = config.brokers.iter().map(|b| b.triggers.len()).sum();
    let share = lanes_part / all_triggers.max(1);
    let read_room = (lanes_part / 8).max(64 << 10);
    for broker in &config.brokers {
        let Some(logs) = logs.get(&broker.id) else {
            return Err(ChannelError::Invalid {
                reason: format!("no log opened for broker {}", broker.id),
            });
        };
        let log = &logs.events;
        let sinks = Arc::new(settle::BrokerSinks {
            events: logs.events.clone(),
            dead_letters: logs.dead_letters.clone(),
            max_ttl: opts.max_ttl,
            shutdown: shutdown.clone(),
            fault: opts.fault.clone(),
            limits: opts.reply_limits,
            max_reply_bytes: opts.max_reply_bytes,
            budget: opts.budget.clone(),
        });
        metrics
            .dead_letter_gauge(&broker.id.to_string())
            .set(dead_letter::backlog(logs.dead_letters.as_ref()).await? as i64);
        let (triggers, starts) = start_points(broker, log.as_ref(), metrics, &sinks).await?;
        // Retention keeps what a trigger (or the malformed-record scan) has not passed.
        let mut holders: Vec<String> = triggers.iter().map(|t| t.cfg.name.clone()).collect();
        if !holders.is_empty() {
            holders.push(malformed::MALFORMED_CURSOR.to_owned());
        }
        log.retain_for(&holders).await?;
        if triggers.is_empty() {
            continue;
        }
        let lanes: Arc<[LaneInfo]> = triggers
            .iter()
            .map(|rt| LaneInfo {
                filter: rt.cfg.filter.clone(),
                trigger: Arc::from(rt.cfg.name.as_str()),
                metrics: rt.metrics.clone(),
                account: held::LaneAccount::new(share, opts.budget.clone()),
            })
            .collect();
        let index = Arc::new(broker::filter::FilterIndex::build(
            &lanes.iter().map(|l| &l.filter).collect::<Vec<_>>(),
        ));
        let book = Arc::new(checkpoints::Book::new(
            log.clone(),
            triggers
                .iter()
                .map(|t| Arc::from(t.cfg.name.as_str()))
                .collect(),
            &starts,
            opts.skips_stored_every,
        ));
        let malformed = Arc::new(malformed::Sink {
            events: logs.events.clone(),
            dead_letters: logs.dead_letters.clone(),
            counter: metrics.malformed_counter(&broker.id.to_string()),
            backlog: metrics.dead_letter_gauge(&broker.id.to_string()),
        });
        let run = Arc::new(BrokerRun {
            id: broker.id.clone(),
            malformed,
            partitions_gauge: metrics.partitions_gauge(&broker.id.to_string()),
            unowned_gauge: metrics.unowned_partitions_gauge(&broker.id.to_string()),
            log: log.clone(),
            triggers,
            lanes,
            index,
            book: book.clone(),
            client: client.clone(),
            lane_queue: opts.lane_queue,
            drain: opts.drain_timeout,
            read_room,
        });
        let mut coordinator = Coordinator::new(
            run.clone(),
            log.leases(&opts.owner, hand_over),
            shutdown.clone(),
        );
        coordinator.step().await;
        tasks.spawn(coordinator.run());
        flushers.spawn(flush_checkpoints(book, lanes_done.clone()));
        tracing::info!(broker = %broker.id, triggers = broker.triggers.len(), partitions = log.partitions(), "dispatching");
    }
    Ok(Dispatcher {
        tasks,
        flushers,
        lanes_done,
    })
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
/// current end of the log, stored durably (where another process has not stored one
/// first). Returns each trigger's checkpoints as stored. Events accepted after this
/// returns are delivered to these triggers; the ingress role calls it too, so that the
/// order in which ingress and dispatcher processes start does not matter.
pub async fn init_checkpoints(
    broker: &BrokerConfig,
    log: &dyn BrokerLog,
) -> Result<Vec<Vec<Offset>>, ChannelError> {
    let mut out = Vec::with_capacity(broker.triggers.len());
    let mut ends: Option<Vec<Offset>> = None;
    for t in &broker.triggers {
        let mut loaded = log.load_checkpoint(&t.name).await?;
        let missing: Vec<u32> = (0..log.partitions())
            .filter(|&p| loaded.get(p as usize).copied().flatten().is_none())
            .collect();
        if !missing.is_empty() {
            if ends.is_none() {
                let mut e = Vec::with_capacity(log.partitions() as usize);
                for p in 0..log.partitions() {
                    e.push(log.end_offset(p).await?);
                }
                ends = Some(e);
            }
            let ends = ends.as_deref().unwrap_or_default();
            let initial: Vec<(u32, Offset)> = missing
                .iter()
                .map(|&p| (p, ends.get(p as usize).copied().unwrap_or(0)))
                .collect();
            log.init_checkpoint(&t.name, &initial).await?;
            // Read back: where another process stored one first, it won.
            loaded = log.load_checkpoint(&t.name).await?;
            tracing::info!(broker = %broker.id, trigger = %t.name, partitions = ?missing, "new trigger starts at the end of the log");
        }
        out.push(loaded.into_iter().map(|o| o.unwrap_or(0)).collect());
    }
    Ok(out)
}

async fn start_points(
    broker: &BrokerConfig,
    log: &dyn BrokerLog,
    metrics: &Metrics,
    sinks: &Arc<settle::BrokerSinks>,
) -> Result<(Vec<Arc<TriggerRuntime>>, Vec<Vec<Offset>>), ChannelError> {
    let broker_name = broker.id.to_string();
    let starts = init_checkpoints(broker, log).await?;
    let out = broker
        .triggers
        .iter()
        .map(|t| {
            Arc::new(TriggerRuntime {
                cfg: t.clone(),
                metrics: metrics.trigger(&broker_name, &t.name),
                sinks: sinks.clone(),
            })
        })
        .collect();
    Ok((out, starts))
}

/// Writes changed checkpoints every [`CHECKPOINT_EVERY`] until `done`, then once more
/// durably.
async fn flush_checkpoints(book: Arc<checkpoints::Book>, done: CancellationToken) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            () = done.cancelled() => true,
            _ = tick.tick() => false,
        };
        book.flush(last).await;
        if last {
            break;
        }
    }
}
