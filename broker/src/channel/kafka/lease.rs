//! Partition leases from Kafka's group protocol.
//!
//! Every dispatcher process of a broker joins the consumer group
//! `triggerfish.dispatchers.<ns>/<broker>` on the events topic with the
//! `cooperative-sticky` assignor, and pauses whatever it is assigned: the group never
//! fetches (the readers do, from the trigger checkpoints), it only decides who
//! dispatches which partition. A thread polls the group (which also sends the
//! heartbeats); [`PartitionLeases::refresh`] reads its current assignment.
//!
//! - A new dispatcher joining makes Kafka move some partitions to it: the others see
//!   them revoked at their next refresh and stop them.
//! - A dispatcher that dies loses its partitions after the session timeout (the lease
//!   TTL); a dispatcher that stops cleanly leaves the group at once.
//! - While two processes both think they own a partition (a revocation not yet seen),
//!   events may be delivered twice, never lost: checkpoints only move forward past
//!   delivered events.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};

use super::{client_config, lock, Apply, KafkaOptions, Role};
use crate::channel::lease::PartitionLeases;
use crate::channel::ChannelError;
use crate::config::BrokerId;

/// How often the group is polled.
const POLL: Duration = Duration::from_millis(100);
/// How long the first refresh waits for the first assignment.
const FIRST_JOIN: Duration = Duration::from_secs(15);

#[derive(Default)]
struct State {
    owned: Vec<u32>,
    /// A rebalance completed at least once.
    joined: bool,
    /// The polling thread ended (an error it logged).
    stopped: bool,
}

struct Ctx {
    state: Arc<Mutex<State>>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn post_rebalance(&self, _base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if !matches!(rebalance, Rebalance::Error(_)) {
            lock(&self.state).joined = true;
        }
    }
}

/// Leases of one dispatcher process on one broker.
pub struct KafkaLeases {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    /// Closed when the polling thread has closed its client.
    done: Mutex<std::sync::mpsc::Receiver<()>>,
    ttl: Duration,
    started: Instant,
}

impl KafkaLeases {
    /// Joins the group (in the background) as `owner`.
    pub fn start(
        opts: &KafkaOptions,
        broker: &BrokerId,
        topic: &str,
        partitions: u32,
        owner: &str,
    ) -> Result<KafkaLeases, String> {
        let state = Arc::new(Mutex::new(State::default()));
        let ttl_ms = opts.lease_ttl.as_millis().max(1000);
        let consumer: BaseConsumer<Ctx> = client_config(opts)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "latest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("queued.max.messages.kbytes", "64")
            .apply_for(&opts.client_options, Role::Consumer)
            .set(
                "group.id",
                format!(
                    "triggerfish.dispatchers.{}/{}",
                    broker.namespace, broker.name
                ),
            )
            .set("client.id", format!("triggerfish-dispatcher-{owner}"))
            .set("session.timeout.ms", ttl_ms.to_string())
            .set("heartbeat.interval.ms", (ttl_ms / 4).max(250).to_string())
            .set("max.poll.interval.ms", (ttl_ms * 6).max(30_000).to_string())
            .create_with_context(Ctx {
                state: state.clone(),
            })
            .map_err(|e| e.to_string())?;
        consumer.subscribe(&[topic]).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stop2, topic, id) = (
            state.clone(),
            stop.clone(),
            topic.to_owned(),
            broker.clone(),
        );
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name(format!("kafka-leases-{}", broker.name))
            .spawn(move || {
                poll_group(consumer, st, stop2, topic, partitions, id);
                drop(done_tx);
            })
            .map_err(|e| e.to_string())?;
        Ok(KafkaLeases {
            state,
            stop,
            done: Mutex::new(done),
            ttl: opts.lease_ttl,
            started: Instant::now(),
        })
    }
}

fn poll_group(
    consumer: BaseConsumer<Ctx>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    topic: String,
    partitions: u32,
    broker: BrokerId,
) {
    let mut paused: Vec<u32> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // Serves the group protocol; any fetched message (before its partition was
        // paused) is dropped: the readers read the log themselves.
        if let Some(Err(e)) = consumer.poll(POLL) {
            tracing::warn!(broker = %broker, error = %e, "dispatcher group");
        }
        let assigned = match consumer.assignment() {
            Ok(tpl) => tpl,
            Err(e) => {
                tracing::warn!(broker = %broker, error = %e, "cannot read the dispatcher group's assignment");
                continue;
            }
        };
        let mut owned: Vec<u32> = assigned
            .elements_for_topic(&topic)
            .iter()
            .filter_map(|e| u32::try_from(e.partition()).ok())
            .filter(|&p| p < partitions)
            .collect();
        owned.sort_unstable();
        let new: Vec<u32> = owned
            .iter()
            .copied()
            .filter(|p| !paused.contains(p))
            .collect();
        if !new.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for &p in &new {
                let _ = tpl.add_partition(&topic, p as i32);
            }
            if let Err(e) = consumer.pause(&tpl) {
                tracing::debug!(broker = %broker, error = %e, "cannot pause the group's partitions");
            }
        }
        paused.clone_from(&owned);
        let mut s = lock(&state);
        if s.owned != owned {
            tracing::info!(broker = %broker, partitions = ?owned, "Kafka assigned partitions to this dispatcher");
            s.owned = owned;
        }
    }
    // Dropping the consumer closes it: it leaves the group, and the others take its
    // partitions at once.
    drop(consumer);
    lock(&state).stopped = true;
}

impl Drop for KafkaLeases {
    /// Stops the polling thread and waits (bounded) until it has closed its client:
    /// a librdkafka client still closing while the process exits can crash it.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = lock(&self.done).recv_timeout(self.ttl.saturating_add(Duration::from_secs(2)));
    }
}

#[async_trait]
impl PartitionLeases for KafkaLeases {
    async fn refresh(&self) -> Result<Vec<u32>, ChannelError> {
        // The first refresh (at dispatcher start) waits for the group to form, so a
        // lone dispatcher starts with its partitions.
        loop {
            {
                let s = lock(&self.state);
                if s.stopped {
                    return Err(ChannelError::Other(
                        "the dispatcher group client stopped".to_owned(),
                    ));
                }
                if s.joined || self.started.elapsed() >= FIRST_JOIN {
                    return Ok(s.owned.clone());
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn release(&self, _partitions: &[u32]) {
        // Partitions are given back by the group protocol itself (revocation, or
        // leaving the group when this process stops).
    }

    fn renew_every(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }
}
