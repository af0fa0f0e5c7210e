//! The Triggerfish dispatcher: reads each broker's channel, evaluates every trigger's
//! filter, and delivers matches to subscribers, each trigger progressing on its own.
//!
//! Layout:
//! - [`fanout`]: one shared reader per broker partition evaluates all triggers once per
//!   event and feeds trigger lanes; a lane that falls behind detaches to a catch-up
//!   reader of its own and rejoins when it reaches the end.
//! - [`lane`]: one trigger on one partition: bounded concurrency, delivery, and the
//!   checkpoint as the contiguous done prefix.
//! - [`settle`]: what happens to one event: delivered, reply stored, dead-lettered
//!   to the sink or to the broker's own dead-letter log.
//! - [`deliver`]: the HTTP POST with the trigger's retry policy.
//!
//! [`start`] wires it all for a config and returns a [`Dispatcher`] whose
//! [`Dispatcher::wait`] returns after shutdown once lanes drained and the final
//! checkpoints are written. Checkpoints are flushed every [`CHECKPOINT_EVERY`]; a
//! crash loses at most that much checkpoint progress, which means redelivery, never
//! loss.

pub mod deliver;
pub mod fanout;
pub mod lane;
pub mod settle;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use broker::channel::{BrokerLog, ChannelError, Offset};
use broker::config::{BrokerConfig, BrokerId, Config};
use broker::telemetry::Metrics;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use fanout::{LaneInfo, Partition};
use lane::TriggerRuntime;

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
}

impl Default for DispatcherOptions {
    fn default() -> Self {
        DispatcherOptions {
            lane_queue: 512,
            drain_timeout: Duration::from_secs(30),
            max_ttl: settle::DEFAULT_MAX_TTL,
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
/// durably before this returns, so events accepted after it are never missed.
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
    for broker in &config.brokers {
        let Some(logs) = logs.get(&broker.id) else {
            return Err(ChannelError::Other(format!(
                "no log opened for broker {}",
                broker.id
            )));
        };
        let log = &logs.events;
        let sinks = Arc::new(settle::BrokerSinks {
            events: logs.events.clone(),
            dead_letters: logs.dead_letters.clone(),
            max_ttl: opts.max_ttl,
            shutdown: shutdown.clone(),
        });
        metrics
            .dead_letter_gauge(&broker.id.to_string())
            .set(dead_letter_backlog(logs.dead_letters.as_ref()).await? as i64);
        let triggers = start_points(broker, log.as_ref(), metrics, &sinks).await?;
        if triggers.is_empty() {
            continue;
        }
        let lanes: Arc<[LaneInfo]> = triggers
            .iter()
            .map(|(rt, _)| LaneInfo {
                filter: Arc::new(rt.cfg.filter.clone()),
                trigger: Arc::from(rt.cfg.name.as_str()),
            })
            .collect();
        let index = Arc::new(broker::filter::FilterIndex::build(
            &lanes.iter().map(|l| l.filter.clone()).collect::<Vec<_>>(),
        ));
        for p in 0..log.partitions() {
            let (join_tx, join_rx) = mpsc::channel(lanes.len().max(1));
            let ctx = Partition {
                log: log.clone(),
                partition: p,
                lanes: lanes.clone(),
                index: index.clone(),
                joins: join_tx,
                shutdown: shutdown.clone(),
            };
            tasks.spawn(fanout::shared_reader(ctx.clone(), join_rx));
            for (i, (rt, start)) in triggers.iter().enumerate() {
                let (tx, rx) = mpsc::channel(opts.lane_queue.max(1));
                let from = start[p as usize];
                tasks.spawn(fanout::catch_up(ctx.clone(), i, from, tx));
                tasks.spawn(lane::run_lane(
                    rt.clone(),
                    p,
                    from,
                    rx,
                    client.clone(),
                    shutdown.clone(),
                    opts.drain_timeout,
                ));
            }
        }
        let rts: Vec<Arc<TriggerRuntime>> = triggers.into_iter().map(|(rt, _)| rt).collect();
        flushers.spawn(flush_checkpoints(log.clone(), rts, lanes_done.clone()));
        tracing::info!(broker = %broker.id, triggers = broker.triggers.len(), partitions = log.partitions(), "dispatching");
    }
    Ok(Dispatcher {
        tasks,
        flushers,
        lanes_done,
    })
}

/// Entries of a dead-letter log not yet redriven.
pub async fn dead_letter_backlog(dead_letters: &dyn BrokerLog) -> Result<u64, ChannelError> {
    let end = dead_letters.end_offset(0).await?;
    let cursor = dead_letters
        .load_checkpoint(REDRIVE_CURSOR)
        .await?
        .and_then(|c| c.first().copied())
        .unwrap_or(0);
    Ok(end.saturating_sub(cursor))
}

/// Checkpoint name of the dead-letter log's redrive cursor (not a valid trigger name,
/// so it cannot collide with one).
pub const REDRIVE_CURSOR: &str = "_redrive";

async fn start_points(
    broker: &BrokerConfig,
    log: &dyn BrokerLog,
    metrics: &Metrics,
    sinks: &Arc<settle::BrokerSinks>,
) -> Result<Vec<(Arc<TriggerRuntime>, Vec<Offset>)>, ChannelError> {
    let broker_name = broker.id.to_string();
    let mut out = Vec::with_capacity(broker.triggers.len());
    for t in &broker.triggers {
        let start = match log.load_checkpoint(&t.name).await? {
            Some(offsets) => offsets,
            None => {
                let mut ends = Vec::with_capacity(log.partitions() as usize);
                for p in 0..log.partitions() {
                    ends.push(log.end_offset(p).await?);
                }
                log.store_checkpoint(&t.name, &ends, true).await?;
                tracing::info!(broker = %broker.id, trigger = %t.name, "new trigger starts at the end of the log");
                ends
            }
        };
        let rt = TriggerRuntime {
            cfg: t.clone(),
            metrics: metrics.trigger(&broker_name, &t.name),
            checkpoint: start.iter().map(|&o| AtomicU64::new(o)).collect(),
            sinks: sinks.clone(),
        };
        out.push((Arc::new(rt), start));
    }
    Ok(out)
}

async fn flush_checkpoints(
    log: Arc<dyn BrokerLog>,
    triggers: Vec<Arc<TriggerRuntime>>,
    done: CancellationToken,
) {
    let mut stored: Vec<Vec<Offset>> = triggers.iter().map(|t| snapshot(t)).collect();
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            () = done.cancelled() => true,
            _ = tick.tick() => false,
        };
        for (t, prev) in triggers.iter().zip(stored.iter_mut()) {
            let now = snapshot(t);
            if now != *prev {
                match log.store_checkpoint(&t.cfg.name, &now, last).await {
                    Ok(()) => *prev = now,
                    Err(e) => {
                        tracing::warn!(trigger = %t.cfg.name, error = %e, "cannot store checkpoint; will retry")
                    }
                }
            }
        }
        if last {
            break;
        }
    }
}

fn snapshot(t: &TriggerRuntime) -> Vec<Offset> {
    t.checkpoint
        .iter()
        .map(|a| a.load(Ordering::Acquire))
        .collect()
}
