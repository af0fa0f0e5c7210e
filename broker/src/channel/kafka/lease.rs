//! Partition leases from Kafka's group protocol.
//!
//! Every dispatcher process of a broker joins the consumer group
//! `triggerfish.dispatchers.<ns>/<broker>` on the events topic with the
//! `cooperative-sticky` assignor, and pauses whatever it is assigned: the group never
//! fetches (the readers do, from the trigger checkpoints), it only decides who
//! dispatches which partition. A thread polls the group (which also sends the
//! heartbeats); [`PartitionLeases::refresh`] reads its current assignment.
//!
//! - **Hand-over.** A new dispatcher joining makes Kafka move some partitions to it.
//!   With the cooperative protocol the old owner is told first (the revocation), and
//!   the partitions are assigned to the new owner only in the next rebalance, once the
//!   old one has given them up. So the revocation callback waits: it lists the
//!   partitions as revoking, and returns only once the dispatcher has stopped them,
//!   written their final checkpoints and called [`PartitionLeases::release`] (or the
//!   hand-over deadline passed). `max.poll.interval.ms` is set above that deadline.
//! - **Epochs.** Kafka's group generation is not readable through librdkafka, so a
//!   newly assigned partition's epoch is claimed in the checkpoint topic (a record
//!   whose position is the epoch, see `checkpoint.rs`) before it is returned as owned.
//! - **Lost.** A dispatcher that dies loses its partitions after the session timeout
//!   (the lease TTL); one that stops cleanly ([`PartitionLeases::close`]) leaves the
//!   group at once. A process that finds its own assignment lost (its session expired)
//!   stops those partitions at once: their checkpoint writes are fenced by the claims
//!   of the new owner.
//! - **Never stuck on an error.** The group client is created at the first refresh
//!   and again after it failed or stopped; until then refreshes return the error.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};

use super::checkpoint::CheckpointTopic;
use super::{client_config, lock, Apply, KafkaOptions, Role};
use crate::channel::lease::{HandOver, Lease, Leased, PartitionLeases};
use crate::channel::{ChannelError, Epoch};
use crate::config::BrokerId;

/// How often the group is polled.
const POLL: Duration = Duration::from_millis(100);
/// How long the first refresh waits for the first assignment.
const FIRST_JOIN: Duration = Duration::from_secs(15);

#[derive(Default)]
struct State {
    /// The group's current assignment, as the polling thread last read it.
    assigned: Vec<u32>,
    /// Being revoked: the rebalance callback waits until they are released.
    revoking: Vec<u32>,
    /// Released by the dispatcher (final checkpoints written).
    released: Vec<u32>,
    /// A rebalance completed at least once.
    joined: bool,
    /// The polling thread ended (an error it logged, or `close`).
    stopped: bool,
    /// Leaving: the revocation callback no longer waits.
    closing: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

struct Ctx {
    shared: Arc<Shared>,
    topic: String,
    broker: BrokerId,
    hand_over: HandOver,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let parts: Vec<u32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .filter_map(|e| u32::try_from(e.partition()).ok())
            .collect();
        let mut st = lock(&self.shared.state);
        if base.assignment_lost() {
            // The session expired: another process may own them already.
            tracing::warn!(broker = %self.broker, partitions = ?parts, "the dispatcher group considers this process gone; its partitions are lost");
            st.assigned.retain(|p| !parts.contains(p));
            return;
        }
        st.revoking = parts.clone();
        st.released.retain(|p| !parts.contains(p));
        self.shared.changed.notify_all();
        let deadline = Instant::now() + self.hand_over.deadline;
        while !st.closing && !parts.iter().all(|p| st.released.contains(p)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(broker = %self.broker, partitions = ?parts, deadline = ?self.hand_over.deadline,
                    "partitions not handed over within the deadline; giving them up");
                break;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        st.revoking.clear();
        st.assigned.retain(|p| !parts.contains(p));
    }

    fn post_rebalance(&self, _base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if !matches!(rebalance, Rebalance::Error(_)) {
            lock(&self.shared.state).joined = true;
        }
    }
}

/// A running group membership: its polling thread.
struct Group {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    /// Closed when the polling thread has closed its client.
    done: Mutex<std::sync::mpsc::Receiver<()>>,
    started: Instant,
}

/// Leases of one dispatcher process on one broker.
pub struct KafkaLeases {
    opts: KafkaOptions,
    broker: BrokerId,
    topic: String,
    partitions: u32,
    owner: String,
    hand_over: HandOver,
    checkpoints: Arc<CheckpointTopic>,
    /// The checkpoint prefix of the events topic (`<topic>/`).
    prefix: String,
    group: tokio::sync::Mutex<Option<Group>>,
    /// Owned partitions' claimed epochs.
    epochs: Mutex<BTreeMap<u32, Epoch>>,
}

impl KafkaLeases {
    /// Leases of `owner`; the group is joined at the first refresh.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        opts: &KafkaOptions,
        broker: &BrokerId,
        topic: &str,
        partitions: u32,
        owner: &str,
        hand_over: HandOver,
        checkpoints: Arc<CheckpointTopic>,
        prefix: String,
    ) -> KafkaLeases {
        KafkaLeases {
            opts: opts.clone(),
            broker: broker.clone(),
            topic: topic.to_owned(),
            partitions,
            owner: owner.to_owned(),
            hand_over,
            checkpoints,
            prefix,
            group: tokio::sync::Mutex::new(None),
            epochs: Mutex::new(BTreeMap::new()),
        }
    }

    fn unavailable(&self, reason: String) -> ChannelError {
        ChannelError::Unavailable {
            broker: self.broker.clone(),
            reason: format!("dispatcher group: {reason}"),
        }
    }

    /// Joins the group (in the background).
    fn join(&self) -> Result<Group, String> {
        let opts = &self.opts;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let ttl_ms = opts.lease_ttl.as_millis().max(1000);
        // The revocation callback may wait for the hand-over: the group must not
        // expel this process for not polling meanwhile.
        let poll_ms = (ttl_ms * 6)
            .max(30_000)
            .max((self.hand_over.deadline + opts.lease_ttl).as_millis());
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
                    self.broker.namespace, self.broker.name
                ),
            )
            .set(
                "client.id",
                format!("triggerfish-dispatcher-{}", self.owner),
            )
            .set("session.timeout.ms", ttl_ms.to_string())
            .set("heartbeat.interval.ms", (ttl_ms / 4).max(250).to_string())
            .set("max.poll.interval.ms", poll_ms.to_string())
            .create_with_context(Ctx {
                shared: shared.clone(),
                topic: self.topic.clone(),
                broker: self.broker.clone(),
                hand_over: self.hand_over,
            })
            .map_err(|e| e.to_string())?;
        consumer
            .subscribe(&[&self.topic])
            .map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, stop2, topic, id, partitions) = (
            shared.clone(),
            stop.clone(),
            self.topic.clone(),
            self.broker.clone(),
            self.partitions,
        );
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name(format!("kafka-leases-{}", self.broker.name))
            .spawn(move || {
                poll_group(consumer, &sh, &stop2, &topic, partitions, &id);
                drop(done_tx);
            })
            .map_err(|e| e.to_string())?;
        Ok(Group {
            shared,
            stop,
            done: Mutex::new(done),
            started: Instant::now(),
        })
    }
}

fn poll_group(
    consumer: BaseConsumer<Ctx>,
    shared: &Shared,
    stop: &AtomicBool,
    topic: &str,
    partitions: u32,
    broker: &BrokerId,
) {
    let mut paused: Vec<u32> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // Serves the group protocol (rebalance callbacks run in here); any fetched
        // message (before its partition was paused) is dropped: the readers read the
        // log themselves.
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
            .elements_for_topic(topic)
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
                let _ = tpl.add_partition(topic, p as i32);
            }
            if let Err(e) = consumer.pause(&tpl) {
                tracing::debug!(broker = %broker, error = %e, "cannot pause the group's partitions");
            }
        }
        paused.clone_from(&owned);
        let mut s = lock(&shared.state);
        if s.assigned != owned {
            tracing::info!(broker = %broker, partitions = ?owned, "Kafka assigned partitions to this dispatcher");
            s.assigned = owned;
        }
    }
    // Closing the consumer revokes everything (the callback no longer waits: the
    // partitions were finished before `close`) and leaves the group, so the others
    // take the partitions at once.
    lock(&shared.state).closing = true;
    drop(consumer);
    let mut s = lock(&shared.state);
    s.stopped = true;
    s.assigned.clear();
    shared.changed.notify_all();
}

impl Group {
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        lock(&self.shared.state).closing = true;
        self.shared.changed.notify_all();
    }
}

impl Drop for Group {
    /// Tells the polling thread to leave; it closes its client by itself. Never
    /// blocks (an async caller's worker thread): [`PartitionLeases::close`] is where
    /// the wait for the close happens.
    fn drop(&mut self) {
        self.stop();
    }
}

#[async_trait]
impl PartitionLeases for KafkaLeases {
    async fn refresh(&self) -> Result<Leased, ChannelError> {
        let mut group = self.group.lock().await;
        if group
            .as_ref()
            .is_some_and(|g| lock(&g.shared.state).stopped)
        {
            *group = None;
            return Err(self.unavailable("the group client stopped; joining again".to_owned()));
        }
        if group.is_none() {
            *group = Some(
                self.join()
                    .map_err(|e| self.unavailable(format!("cannot join: {e}")))?,
            );
        }
        let Some(g) = group.as_ref() else {
            return Err(self.unavailable("not joined".to_owned()));
        };
        // The first refresh (at dispatcher start) waits for the group to form, so a
        // lone dispatcher starts with its partitions.
        let (assigned, revoking) = loop {
            {
                let s = lock(&g.shared.state);
                if s.joined || g.started.elapsed() >= FIRST_JOIN || s.stopped {
                    break (s.assigned.clone(), s.revoking.clone());
                }
            }
            tokio::time::sleep(POLL).await;
        };
        let mut owned = Vec::with_capacity(assigned.len());
        for &p in assigned.iter().filter(|p| !revoking.contains(p)) {
            let known = lock(&self.epochs).get(&p).copied();
            let epoch = match known {
                Some(e) => e,
                None => {
                    let e = self.checkpoints.claim(&self.prefix, p, &self.owner).await?;
                    lock(&self.epochs).insert(p, e);
                    e
                }
            };
            owned.push(Lease {
                partition: p,
                epoch,
            });
        }
        lock(&self.epochs).retain(|p, _| assigned.contains(p));
        Ok(Leased {
            owned,
            revoking,
            unowned: Vec::new(),
        })
    }

    async fn release(&self, partitions: &[u32]) {
        lock(&self.epochs).retain(|p, _| !partitions.contains(p));
        let group = self.group.lock().await;
        if let Some(g) = group.as_ref() {
            let mut s = lock(&g.shared.state);
            s.released.extend_from_slice(partitions);
            g.shared.changed.notify_all();
        }
    }

    async fn close(&self) {
        let Some(g) = self.group.lock().await.take() else {
            return;
        };
        g.stop();
        // Wait (bounded, off the async workers) until the client is closed: one still
        // closing while the process exits can crash it.
        let wait = self.opts.lease_ttl.saturating_add(Duration::from_secs(2));
        let _ = tokio::task::spawn_blocking(move || {
            let _ = lock(&g.done).recv_timeout(wait);
        })
        .await;
    }

    fn renew_every(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn ttl(&self) -> Duration {
        self.opts.lease_ttl
    }
}
