//! Partition leases from Kafka's group protocol.
//!
//! Every dispatcher process of a broker joins the consumer group
//! `triggerfish.dispatchers.<events topic>` on the events topic with the
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
//! - **No unowned partitions.** Every 2 s the polling thread describes the group and
//!   reports partitions no member is assigned (or, where the cluster describes no
//!   members, as tansu 0.6.0, every partition while this member's assignment was
//!   lost and nothing was assigned since); once the dispatcher saw them so for
//!   twice the session timeout it calls `rejoin`: the member joins again with a new
//!   client (after handing over what it owns, if anything).
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
    /// Partitions no member of the group is assigned, at the last look.
    unowned: Vec<u32>,
    /// `rejoin` asked this client to hand over what it owns and leave.
    rejoin: bool,
    /// The group declared this member's assignment lost (its session expired) and
    /// nothing was assigned since.
    lost: bool,
}

/// How often the polling thread describes the group to find unassigned partitions.
const DESCRIBE_EVERY: Duration = Duration::from_secs(2);

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
            st.lost = true;
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

/// The dispatchers' group of a broker's events topic: named after the topic, which
/// is unique per broker and installation (two installations sharing a Kafka cluster
/// with different topic templates must not share a group, nor must a test's).
fn group_id(topic: &str) -> String {
    format!("triggerfish.dispatchers.{topic}")
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
            .set("group.id", group_id(&self.topic))
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

/// The partitions of `topic` in a member's assignment, as the consumer protocol
/// encodes it (`ConsumerProtocolAssignment`: version, then per topic its name and
/// partitions, then user data); `None` when the bytes are not one.
fn assigned_partitions(bytes: &[u8], topic: &str) -> Option<Vec<u32>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    fn i16_(b: &mut &[u8]) -> Option<i16> {
        take(b, 2).map(|h| i16::from_be_bytes([h[0], h[1]]))
    }
    fn i32_(b: &mut &[u8]) -> Option<i32> {
        take(b, 4).map(|h| i32::from_be_bytes([h[0], h[1], h[2], h[3]]))
    }
    let mut b = bytes;
    let _version = i16_(&mut b)?;
    let topics = usize::try_from(i32_(&mut b)?).ok()?;
    let mut out = Vec::new();
    for _ in 0..topics {
        let len = usize::try_from(i16_(&mut b)?).ok()?;
        let name = take(&mut b, len)?;
        let n = usize::try_from(i32_(&mut b)?).ok()?;
        for _ in 0..n {
            let p = i32_(&mut b)?;
            if name == topic.as_bytes() {
                out.push(u32::try_from(p).ok()?);
            }
        }
    }
    Some(out)
}

/// Partitions of `topic` (`0..partitions`) no member of `consumer`'s group is
/// assigned, from the group's description; `None` when it cannot be read or lists no
/// member (this process is one, so that is no description).
fn unassigned(
    consumer: &BaseConsumer<Ctx>,
    group: &str,
    topic: &str,
    partitions: u32,
) -> Option<Vec<u32>> {
    let list = consumer
        .fetch_group_list(Some(group), Duration::from_secs(2))
        .ok()?;
    let info = list.groups().iter().find(|g| g.name() == group)?;
    if info.members().is_empty() {
        // tansu 0.6.0 describes every group as Stable without members: no answer.
        return None;
    }
    let mut taken = std::collections::BTreeSet::new();
    for m in info.members() {
        for p in m.assignment().and_then(|a| assigned_partitions(a, topic))? {
            taken.insert(p);
        }
    }
    Some((0..partitions).filter(|p| !taken.contains(p)).collect())
}

fn poll_group(
    consumer: BaseConsumer<Ctx>,
    shared: &Shared,
    stop: &AtomicBool,
    topic: &str,
    partitions: u32,
    broker: &BrokerId,
) {
    let group = group_id(topic);
    let mut paused: Vec<u32> = Vec::new();
    let mut described: Option<Instant> = None;
    // Leaving the group to join it afresh with a new client, once nothing is assigned.
    let mut leaving = false;
    while !stop.load(Ordering::Relaxed) {
        let rejoin = std::mem::take(&mut lock(&shared.state).rejoin);
        if rejoin && !leaving {
            // Revokes everything through the callback (a hand-over, as any other).
            consumer.unsubscribe();
            leaving = true;
        }
        if described.is_none_or(|t| t.elapsed() >= DESCRIBE_EVERY) {
            described = Some(Instant::now());
            let free = unassigned(&consumer, &group, topic, partitions);
            let mut st = lock(&shared.state);
            st.unowned = match free {
                Some(free) => free,
                // Without a description: a member whose assignment was lost and that
                // got nothing since (a group stuck without a live leader, as tansu
                // 0.6.0 after its leader died) counts every partition as unowned.
                None if st.lost && st.assigned.is_empty() => (0..partitions).collect(),
                None => Vec::new(),
            };
        }
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
        if leaving && owned.is_empty() {
            // Handed over: this client closes, and `refresh` joins with a new one.
            break;
        }
        let mut s = lock(&shared.state);
        if !owned.is_empty() {
            s.lost = false;
        }
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
            // Left for a fresh join (`rejoin`), or ended on an error it logged.
            *group = None;
            lock(&self.epochs).clear();
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
        let (assigned, revoking, unowned) = loop {
            {
                let s = lock(&g.shared.state);
                if s.joined || g.started.elapsed() >= FIRST_JOIN || s.stopped {
                    break (s.assigned.clone(), s.revoking.clone(), s.unowned.clone());
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
            unowned: unowned
                .into_iter()
                .filter(|p| !assigned.contains(p))
                .collect(),
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

    /// A fresh group join with a new client (a new member). A member that owns
    /// partitions first hands them over (it unsubscribes: the revocation waits for
    /// the release as any other) and its client then closes, to be replaced at the
    /// next refresh. A member that owns nothing is replaced at once: the new client
    /// joins before the old one leaves. (tansu 0.6.0 keeps a dead leader's member id
    /// as the group's leader; only a JoinGroup from another connection makes it
    /// reload the group and elect a live one, see docs/design/kafka.md.)
    async fn rejoin(&self, unowned: &[u32]) {
        let mut group = self.group.lock().await;
        let owns = group
            .as_ref()
            .is_some_and(|g| !lock(&g.shared.state).assigned.is_empty());
        tracing::warn!(broker = %self.broker, partitions = ?unowned, handing_over_first = owns,
            "joining the dispatcher group afresh with a new client");
        if owns {
            if let Some(g) = group.as_ref() {
                lock(&g.shared.state).rejoin = true;
            }
            return;
        }
        match self.join() {
            Ok(fresh) => {
                // The old client leaves in its thread, after the new one joined.
                drop(group.replace(fresh));
                lock(&self.epochs).clear();
            }
            Err(e) => {
                tracing::warn!(broker = %self.broker, error = %e, "cannot create a new group client; retrying later")
            }
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

#[cfg(test)]
mod tests {
    use super::assigned_partitions;

    #[test]
    fn assignments_are_read_from_the_consumer_protocol() {
        let mut b = vec![0, 1]; // version 1
        b.extend(2i32.to_be_bytes()); // two topics
        for (name, parts) in [("t", &[0i32, 3][..]), ("other", &[1][..])] {
            b.extend((name.len() as i16).to_be_bytes());
            b.extend(name.as_bytes());
            b.extend((parts.len() as i32).to_be_bytes());
            for p in parts {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes()); // no user data
        assert_eq!(assigned_partitions(&b, "t"), Some(vec![0, 3]));
        assert_eq!(assigned_partitions(&b, "other"), Some(vec![1]));
        assert_eq!(assigned_partitions(&b, "none"), Some(vec![]));
        for cut in 0..b.len() - 4 {
            let r = assigned_partitions(&b[..cut], "t");
            assert!(
                r.is_none() || cut >= 2 + 4 + 2 + 1 + 4 + 8,
                "cut {cut}: {r:?}"
            );
        }
        let mut neg = b.clone();
        neg[2..6].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(assigned_partitions(&neg, "t"), None);
    }
}
