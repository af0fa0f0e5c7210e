//! Partition leases on a JetStream key-value bucket, so that dispatcher replicas split
//! a broker's partitions (see [`crate::channel::lease`]).
//!
//! One bucket per installation, `<prefix>_leases`, whose entries expire: its stream's
//! max age is the lease TTL (default 9 s), and leases are renewed every third of it.
//! For a broker `<ns>/<name>` (parts encoded by [`super::token`]; its dead-letter
//! log's leases, which redrive takes, under `<ns>.<name>.deadletters.`):
//!
//! | key | value | written |
//! |---|---|---|
//! | `<ns>.<name>.members.<owner>` | owner | `put` on every refresh; removed (stream purge of its subject, leaving no marker) when the process gives up its last lease |
//! | `<ns>.<name>.partitions.<p>` | owner | `create` to acquire (fails while another holds it), `update` at the last revision to renew, `delete` at that revision to release |
//!
//! Each refresh puts the member key, counts the live member keys `M` (one request:
//! stream info with a subject filter; expired and purged keys are gone from the
//! stream), renews the held leases, and then either hands over the ones over the fair
//! share `ceil(P / M)` (listed as revoking: the dispatcher stops them, writes their
//! final checkpoints and calls [`PartitionLeases::release`], and until then the lease
//! is still renewed, so nobody else can create it) or tries to acquire free ones up
//! to it. So a dispatcher that joins gets its share about one refresh period after
//! the others finished draining what they hand over, and the leases of a process that
//! died expire after the TTL and are taken by the others.
//!
//! Once per TTL a refresh also checks which partitions nobody holds (a `get` of each
//! lease key it does not hold) and reports them as unowned. A member that announces
//! itself but never takes its share (hung, or unable to create leases) leaves its
//! share free while the others stay at theirs; after twice the TTL the dispatcher
//! calls `rejoin`, which creates those leases regardless of the share, and nothing
//! is handed over for rebalancing for 30 TTLs afterwards (it would only be left
//! unowned again).
//!
//! A lease's epoch is the revision that created it: KV revisions are the bucket
//! stream's sequence numbers, so every later creation of the same key (a later owner)
//! has a greater one. Checkpoints are written with it (see `checkpoint.rs`).
//!
//! A renewal that finds another revision means the lease expired and someone else took
//! it: the partition is lost at once. A renewal that fails for other reasons (NATS
//! unreachable) keeps the lease until it has gone unrenewed for the TTL.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::TryStreamExt;
use tokio::time::Instant;

use super::token;
use crate::channel::lease::{HandOver, Lease, Leased, PartitionLeases};
use crate::channel::{ChannelError, Epoch, LogKind};
use crate::config::BrokerId;

/// Opens (creating if needed) the lease bucket, with `ttl` as its entries' lifetime.
pub(super) async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    ttl: Duration,
    timeout: Duration,
) -> Result<kv::Store, ChannelError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| ChannelError::Unreachable {
        reason: format!("NATS lease bucket {bucket}: {what}: {e}"),
    };
    let elapsed = |_| fail("timed out", &"no answer");
    let stream_name = format!("KV_{bucket}");
    // As for the checkpoint bucket, the stream is created directly (ADR-8 layout).
    let config = super::checkpoint::kv_stream_config(
        bucket,
        "Triggerfish dispatcher partition leases",
        replicas,
        Some(ttl),
    );
    let existing = tokio::time::timeout(timeout, js.get_stream(&stream_name))
        .await
        .map_err(elapsed)?;
    match existing {
        Ok(s) if s.cached_info().config.max_age != ttl => {
            // Another TTL configured: every process must agree, the last start wins.
            let mut updated = s.cached_info().config.clone();
            updated.max_age = ttl;
            updated.duplicate_window = ttl;
            tokio::time::timeout(timeout, js.update_stream(updated))
                .await
                .map_err(elapsed)?
                .map_err(|e| fail("cannot update its TTL", &e))?;
        }
        Ok(_) => {}
        Err(_) => {
            // Absent (or created by another process meanwhile: opened below).
            let created = tokio::time::timeout(timeout, js.create_stream(config))
                .await
                .map_err(elapsed)?;
            if let Err(e) = created {
                tracing::debug!(bucket, error = %e, "lease bucket creation raced");
            }
        }
    }
    tokio::time::timeout(timeout, js.get_key_value(bucket))
        .await
        .map_err(elapsed)?
        .map_err(|e| fail("cannot open", &e))
}

struct Held {
    revision: u64,
    renewed: Instant,
    /// The revision that created the lease: its epoch.
    epoch: Epoch,
}

#[derive(Default)]
struct State {
    held: BTreeMap<u32, Held>,
    /// Held leases being handed over (over the fair share), since when: renewed until
    /// `release` (or [`HandOver::deadline`]), so nobody acquires them while this
    /// process still drains them.
    revoking: BTreeMap<u32, Instant>,
    /// Partitions no process held a lease on at the last probe, and when that was.
    unowned: Vec<u32>,
    probed: Option<Instant>,
    /// After `rejoin` took partitions nobody took, no hand-over for rebalancing until
    /// then: it would only leave partitions unowned again (a member that announces
    /// itself but never takes its share).
    keep_until: Option<Instant>,
}

/// How long after a `rejoin` nothing is handed over, in lease TTLs.
const KEEP_AFTER_REJOIN: u32 = 30;

/// The leases of one dispatcher process on one broker.
pub struct NatsLeases {
    kv: kv::Store,
    broker: BrokerId,
    partitions: u32,
    owner: String,
    member_key: String,
    /// `$KV.<bucket>.<ns>.<name>.members.*`.
    members_filter: String,
    /// `<ns>.<name>.partitions.`.
    lease_prefix: String,
    ttl: Duration,
    timeout: Duration,
    hand_over: HandOver,
    /// Where this process starts looking for free partitions (spreads contention).
    first: u32,
    state: tokio::sync::Mutex<State>,
}

/// Which log's partitions the leases are of.
pub(super) struct Scope<'a> {
    pub broker: &'a BrokerId,
    pub kind: LogKind,
    pub partitions: u32,
}

impl NatsLeases {
    pub(super) fn new(
        kv: kv::Store,
        scope: Scope<'_>,
        owner: &str,
        ttl: Duration,
        timeout: Duration,
        hand_over: HandOver,
    ) -> Result<NatsLeases, ChannelError> {
        let Scope {
            broker,
            kind,
            partitions,
        } = scope;
        let mut base = format!(
            "{}.{}",
            token(&broker.namespace, broker)?,
            token(&broker.name, broker)?
        );
        if kind == LogKind::DeadLetters {
            // One token more than any events key: the two never collide.
            base.push_str(".deadletters");
        }
        let owner_token = token(owner, broker)?;
        let first = (owner
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))))
            % partitions.max(1);
        Ok(NatsLeases {
            members_filter: format!("{}{base}.members.*", kv.prefix),
            member_key: format!("{base}.members.{owner_token}"),
            lease_prefix: format!("{base}.partitions."),
            kv,
            broker: broker.clone(),
            partitions,
            owner: owner.to_owned(),
            ttl,
            timeout,
            hand_over,
            first,
            state: tokio::sync::Mutex::new(State::default()),
        })
    }

    fn unavailable(&self, what: impl std::fmt::Display) -> ChannelError {
        ChannelError::Unavailable {
            broker: self.broker.clone(),
            reason: format!("partition leases: {what}"),
        }
    }

    fn lease_key(&self, p: u32) -> String {
        format!("{}{p}", self.lease_prefix)
    }

    /// Live dispatcher processes of this broker, this one included.
    async fn members(&self) -> Result<u32, ChannelError> {
        let count = async {
            let mut info = self
                .kv
                .stream
                .info_with_subjects(&self.members_filter)
                .await?;
            let mut n = 0u32;
            while info.try_next().await?.is_some() {
                n += 1;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(n)
        };
        let n = tokio::time::timeout(self.timeout, count)
            .await
            .map_err(|_| self.unavailable("timed out counting members"))?
            .map_err(|e| self.unavailable(format!("cannot count members: {e}")))?;
        Ok(n.max(1))
    }

    async fn renew(&self, p: u32, revision: u64) -> Result<u64, kv::UpdateErrorKind> {
        let value = Bytes::from(self.owner.clone());
        match tokio::time::timeout(
            self.timeout,
            self.kv.update(self.lease_key(p), value, revision),
        )
        .await
        {
            Ok(Ok(rev)) => Ok(rev),
            Ok(Err(e)) => Err(e.kind()),
            Err(_) => Err(kv::UpdateErrorKind::TimedOut),
        }
    }

    /// Creates partition `p`'s lease: `None` when another process holds it.
    async fn create(&self, p: u32) -> Result<Option<Held>, String> {
        let created = tokio::time::timeout(
            self.timeout,
            self.kv
                .create(self.lease_key(p), Bytes::from(self.owner.clone())),
        )
        .await
        .map_err(|_| "timed out".to_owned())?;
        match created {
            Ok(revision) => Ok(Some(Held {
                revision,
                renewed: Instant::now(),
                epoch: revision,
            })),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn delete(&self, p: u32, revision: u64) {
        let deleted = tokio::time::timeout(
            self.timeout,
            self.kv
                .delete_expect_revision(self.lease_key(p), Some(revision)),
        )
        .await;
        if !matches!(deleted, Ok(Ok(()))) {
            // It expires by itself after the TTL.
            tracing::debug!(broker = %self.broker, partition = p, "lease not deleted; it will expire");
        }
    }

    async fn leave(&self) {
        let subject = format!("{}{}", self.kv.prefix, self.member_key);
        let purged =
            tokio::time::timeout(self.timeout, self.kv.stream.purge().filter(subject)).await;
        if !matches!(purged, Ok(Ok(_))) {
            tracing::debug!(broker = %self.broker, "member key not removed; it will expire");
        }
    }
}

/// The fair share of `partitions` among `members`: `ceil(P / M)`.
pub fn fair_share(partitions: u32, members: u32) -> u32 {
    partitions.div_ceil(members.max(1))
}

#[async_trait]
impl PartitionLeases for NatsLeases {
    async fn refresh(&self) -> Result<Leased, ChannelError> {
        let mut st = self.state.lock().await;
        tokio::time::timeout(
            self.timeout,
            self.kv
                .put(&self.member_key, Bytes::from(self.owner.clone())),
        )
        .await
        .map_err(|_| self.unavailable("timed out announcing this process"))?
        .map_err(|e| self.unavailable(format!("cannot announce this process: {e}")))?;
        let members = self.members().await?;

        // Renew what is held (being handed over included), concurrently.
        let renewals = join_all(
            st.held
                .iter()
                .map(|(&p, h)| async move { (p, self.renew(p, h.revision).await) }),
        )
        .await;
        for (p, result) in renewals {
            match result {
                Ok(revision) => {
                    if let Some(h) = st.held.get_mut(&p) {
                        h.revision = revision;
                        h.renewed = Instant::now();
                    }
                }
                Err(kv::UpdateErrorKind::WrongLastRevision) => {
                    tracing::warn!(broker = %self.broker, partition = p, "partition lease expired and was taken by another process");
                    st.held.remove(&p);
                    st.revoking.remove(&p);
                }
                Err(kind) => {
                    let expired = st
                        .held
                        .get(&p)
                        .is_none_or(|h| h.renewed.elapsed() >= self.ttl);
                    tracing::warn!(broker = %self.broker, partition = p, error = %kind, expired, "cannot renew partition lease");
                    if expired {
                        st.held.remove(&p);
                        st.revoking.remove(&p);
                    }
                }
            }
        }

        // A hand-over the dispatcher never finished: the lease goes regardless.
        let overdue: Vec<u32> = st
            .revoking
            .iter()
            .filter(|(_, since)| since.elapsed() >= self.hand_over.deadline)
            .map(|(&p, _)| p)
            .collect();
        for p in overdue {
            tracing::warn!(broker = %self.broker, partition = p, deadline = ?self.hand_over.deadline,
                "partition not handed over within the deadline; giving up its lease");
            st.revoking.remove(&p);
            if let Some(h) = st.held.remove(&p) {
                self.delete(p, h.revision).await;
            }
        }

        let share = fair_share(self.partitions, members) as usize;
        let active = st.held.len() - st.revoking.len();
        let keeping = st.keep_until.is_some_and(|t| Instant::now() < t);
        if active > share && !keeping {
            // Hand over the highest-numbered extras once they are stopped.
            let extras: Vec<u32> = st
                .held
                .keys()
                .rev()
                .filter(|p| !st.revoking.contains_key(p))
                .take(active - share)
                .copied()
                .collect();
            tracing::info!(broker = %self.broker, members, share, handing_over = ?extras, "handing over partitions to rebalance");
            let now = Instant::now();
            for p in extras {
                st.revoking.insert(p, now);
            }
        } else if active < share {
            let mut active = active;
            for i in 0..self.partitions {
                if active >= share {
                    break;
                }
                let p = (self.first + i) % self.partitions;
                if st.held.contains_key(&p) {
                    continue;
                }
                match self.create(p).await {
                    Ok(Some(held)) => {
                        st.held.insert(p, held);
                        active += 1;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(broker = %self.broker, partition = p, error = %e, "cannot acquire partition lease");
                        break;
                    }
                }
            }
        }
        // At most once per TTL: which partitions nobody holds (one `get` each).
        if st.probed.is_none_or(|t| t.elapsed() >= self.ttl) {
            let others: Vec<u32> = (0..self.partitions)
                .filter(|p| !st.held.contains_key(p))
                .collect();
            let probes = join_all(others.iter().map(|&p| async move {
                let got = tokio::time::timeout(self.timeout, self.kv.get(self.lease_key(p))).await;
                (p, matches!(got, Ok(Ok(None))))
            }))
            .await;
            st.unowned = probes
                .into_iter()
                .filter(|(_, free)| *free)
                .map(|(p, _)| p)
                .collect();
            st.probed = Some(Instant::now());
        }
        Ok(Leased {
            unowned: st
                .unowned
                .iter()
                .copied()
                .filter(|p| !st.held.contains_key(p))
                .collect(),
            owned: st
                .held
                .iter()
                .filter(|(p, _)| !st.revoking.contains_key(p))
                .map(|(&partition, h)| Lease {
                    partition,
                    epoch: h.epoch,
                })
                .collect(),
            revoking: st.revoking.keys().copied().collect(),
        })
    }

    async fn release(&self, partitions: &[u32]) {
        if partitions.is_empty() {
            return;
        }
        let mut st = self.state.lock().await;
        for p in partitions {
            st.revoking.remove(p);
            if let Some(h) = st.held.remove(p) {
                self.delete(*p, h.revision).await;
            }
        }
        if st.held.is_empty() {
            // Not dispatching anything (leases lost): stop counting as a member so the
            // others take the whole broker. The next refresh rejoins.
            self.leave().await;
        }
    }

    async fn rejoin(&self, unowned: &[u32]) {
        let mut st = self.state.lock().await;
        for &p in unowned {
            if st.held.contains_key(&p) {
                continue;
            }
            if let Ok(Some(held)) = self.create(p).await {
                tracing::warn!(broker = %self.broker, partition = p, "took an unowned partition beyond the fair share");
                st.keep_until = Some(Instant::now() + self.ttl * KEEP_AFTER_REJOIN);
                st.held.insert(p, held);
            }
        }
        st.probed = None;
    }

    async fn close(&self) {
        let mut st = self.state.lock().await;
        let held = std::mem::take(&mut st.held);
        st.revoking.clear();
        join_all(held.iter().map(|(&p, h)| self.delete(p, h.revision))).await;
        self.leave().await;
    }

    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::fair_share;

    #[test]
    fn fair_share_rounds_up() {
        assert_eq!(fair_share(4, 1), 4);
        assert_eq!(fair_share(4, 2), 2);
        assert_eq!(fair_share(4, 3), 2);
        assert_eq!(fair_share(4, 5), 1);
        assert_eq!(fair_share(4, 0), 4);
        assert_eq!(fair_share(1, 2), 1);
    }
}
