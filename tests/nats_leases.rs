//! Partition leases on NATS JetStream against a real nats-server: dispatcher replicas
//! split a broker's partitions fairly, rebalance when one joins, and take over the
//! partitions of one that stops renewing once its leases expire.
//!
//! Needs `TRIGGERFISH_TEST_NATS_URL` (`scripts/test` starts nats-server); fails without
//! it unless `TRIGGERFISH_SKIP_NATS=1`.

#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::channel::lease::{HandOver, PartitionLeases};
use broker::channel::nats::{NatsLog, NatsOptions};
use broker::channel::EventLog;
use broker::config::BrokerId;

fn prefix(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

async fn connect(url: &str, prefix: &str, ttl: Duration) -> NatsLog {
    let mut opts = NatsOptions::from_url(url).unwrap();
    opts.prefix = prefix.to_owned();
    opts.partitions = 4;
    opts.limits.max_bytes = Some(16 << 20);
    opts.lease_ttl = ttl;
    NatsLog::connect(opts).await.unwrap()
}

/// What a dispatcher's coordinator does when its partitions stop at once: refresh,
/// and release what is being handed over. Returns the partitions owned now.
async fn step(l: &dyn PartitionLeases, owned: &mut BTreeSet<u32>) -> BTreeSet<u32> {
    let leased = l.refresh().await.unwrap();
    let now: BTreeSet<u32> = leased.partitions().into_iter().collect();
    l.release(&leased.revoking).await;
    *owned = now.clone();
    now
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_holders_split_four_partitions_and_one_takes_over_after_the_ttl() {
    let Some(url) = common::nats_url() else {
        return;
    };
    let ttl = Duration::from_secs(2);
    let log = connect(&url, &prefix("lease"), ttl).await;
    let broker = log
        .open(&BrokerId::new("ns", "b"), broker::channel::LogKind::Events)
        .await
        .unwrap();
    let a: Arc<dyn PartitionLeases> = broker.leases("dispatcher-a", HandOver::default());
    let b: Arc<dyn PartitionLeases> = broker.leases("dispatcher-b", HandOver::default());
    assert_eq!(a.ttl(), ttl);
    assert_eq!(a.renew_every(), ttl / 3);
    let (mut owned_a, mut owned_b) = (BTreeSet::new(), BTreeSet::new());

    // Alone, a takes every partition.
    assert_eq!(step(a.as_ref(), &mut owned_a).await.len(), 4);
    // b joins: nothing is free yet; a gives up down to its share, b takes the rest.
    assert!(step(b.as_ref(), &mut owned_b).await.is_empty());
    assert_eq!(step(a.as_ref(), &mut owned_a).await.len(), 2);
    assert_eq!(step(b.as_ref(), &mut owned_b).await.len(), 2);
    // Stable: further refreshes keep the 2/2 split, disjoint and complete.
    for _ in 0..3 {
        step(a.as_ref(), &mut owned_a).await;
        step(b.as_ref(), &mut owned_b).await;
    }
    assert_eq!(owned_a.len(), 2, "a: {owned_a:?}");
    assert_eq!(owned_b.len(), 2, "b: {owned_b:?}");
    assert!(owned_a.is_disjoint(&owned_b), "{owned_a:?} / {owned_b:?}");
    let all: BTreeSet<u32> = owned_a.union(&owned_b).copied().collect();
    assert_eq!(all, (0..4).collect());

    // b stops renewing (a crash): a keeps renewing and gets all four, but only once
    // b's leases expired.
    let stopped = Instant::now();
    drop(b);
    let deadline = stopped + ttl * 6;
    loop {
        let now = step(a.as_ref(), &mut owned_a).await;
        if now.len() == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a did not take over b's partitions: owns {now:?}"
        );
        // Not a wait for a condition: the coordinator's own renewal period.
        tokio::time::sleep(a.renew_every()).await;
    }
    let took = stopped.elapsed();
    eprintln!("takeover after {took:?} (TTL {ttl:?})");
    assert!(
        took >= ttl - Duration::from_millis(500),
        "b's leases were taken before they expired ({took:?})"
    );

    // A graceful stop releases at once: a third holder gets everything immediately.
    a.release(&owned_a.iter().copied().collect::<Vec<_>>())
        .await;
    let c = broker.leases("dispatcher-c", HandOver::default());
    let mut owned_c = BTreeSet::new();
    assert_eq!(step(c.as_ref(), &mut owned_c).await.len(), 4);
}

/// A process that announces itself but never takes its share (hung, or failing to
/// create leases) leaves partitions without an owner: they are reported as unowned,
/// and `rejoin` takes them regardless of the fair share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_nobody_takes_are_reported_and_taken_on_rejoin() {
    use broker::channel::nats::async_nats;
    let Some(url) = common::nats_url() else {
        return;
    };
    let ttl = Duration::from_secs(2);
    let prefix = prefix("unowned");
    let log = connect(&url, &prefix, ttl).await;
    let broker = log
        .open(&BrokerId::new("ns", "b"), broker::channel::LogKind::Events)
        .await
        .unwrap();
    let a = broker.leases("dispatcher-a", HandOver::default());
    // The zombie's member key, kept alive.
    let client = async_nats::connect(url.trim_start_matches("nats://"))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let bucket = js.get_key_value(format!("{prefix}_leases")).await.unwrap();
    let announce = || bucket.put("ns.b.members.zombie", "zombie".into());
    announce().await.unwrap();
    let mut owned = BTreeSet::new();
    let mut unowned = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while unowned.len() != 2 {
        announce().await.unwrap();
        let leased = a.refresh().await.unwrap();
        owned = leased.partitions().into_iter().collect();
        unowned = leased.unowned;
        assert!(
            Instant::now() < deadline,
            "owned {owned:?}, unowned {unowned:?}"
        );
        tokio::time::sleep(a.renew_every()).await;
    }
    assert_eq!(owned.len(), 2, "the fair share of 4 among 2 members");
    assert!(unowned.iter().all(|p| !owned.contains(p)));
    a.rejoin(&unowned).await;
    announce().await.unwrap();
    let leased = a.refresh().await.unwrap();
    assert_eq!(leased.owned.len(), 4, "{leased:?}");
    assert!(leased.unowned.is_empty());
    a.close().await;
}
