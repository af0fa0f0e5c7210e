//! End to end on NATS JetStream with the real binary as separate processes:
//! `triggerfish ingress` and `triggerfish dispatcher` replicas sharing one broker, a
//! dispatcher killed mid-run, and NATS itself stopped for 10 s under load.
//!
//! Needs `TRIGGERFISH_TEST_NATS_URL` (`scripts/test` starts nats-server through
//! `scripts/dev-services`); fails without it unless `TRIGGERFISH_SKIP_NATS=1`. The
//! outage test stops and restarts that server with `scripts/dev-services stop-nats` /
//! `start-nats` (same `TRIGGERFISH_DEV_SERVICES_DIR` as the run that started it), so
//! the tests of this file run one at a time. Every test uses its own stream prefix.
//! Figures (duplicates, 503s) are printed; run with `--nocapture` to see them.

#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::procs::{
    all_delivered, both_dispatchers_share_the_work, config, dev_services, kill_mid_run, produce,
    unique, Proc, Sent,
};
use common::{eventually, Subscriber};

/// The tests of this file share one nats-server, and one of them stops it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The flags that put a process on this NATS server with this prefix.
fn storage<'a>(url: &'a str, prefix: &'a str) -> [&'a str; 6] {
    [
        "--storage",
        url,
        "--nats-prefix",
        prefix,
        "--nats-max-bytes",
        "67108864",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_ingress_and_two_dispatchers_deliver_everything_even_when_one_is_killed() {
    let Some(url) = common::nats_url() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), config(&sub)).unwrap();
    let prefix = unique("e2e");
    let lease = ["--nats-lease-ttl", "PT3S"];
    let storage = storage(&url, &prefix);
    let d1 = Proc::start("dispatcher", dir.path(), &storage, &lease).await;
    let d2 = Proc::start("dispatcher", dir.path(), &storage, &lease).await;
    let ingress = Proc::start("ingress", dir.path(), &storage, &[]).await;
    let health = reqwest::get(format!("http://{}/readyz", d1.addr))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // The second dispatcher gets its share within a few lease renewals.
    let owners = lease_owners(&url, &prefix, Duration::from_secs(30)).await;
    eprintln!("partition leases: {owners:?}");

    // Both dispatchers running: the partitions split between them.
    both_dispatchers_share_the_work(&sub, &ingress, &d1, &d2, 3000).await;

    // Again, killing dispatcher 2 (SIGKILL) in the middle of the run.
    let (accepted, _) = kill_mid_run(&sub, &ingress, d2, 4000, 1500).await;
    let dups = all_delivered(&sub, &accepted, Duration::from_secs(120)).await;
    eprintln!(
        "dispatcher killed mid-run: {} events accepted, {} deliveries expected, none lost, {dups} duplicates",
        accepted.len(),
        accepted.len() * 3 / 2
    );
    ingress.stop().await;
    d1.stop().await;
}

/// Waits until the 4 partitions of `default/default` are leased by 2 processes, 2
/// each; returns the owner of each partition.
async fn lease_owners(url: &str, prefix: &str, within: Duration) -> Vec<String> {
    use broker::channel::nats::async_nats;
    let client = async_nats::connect(url.trim_start_matches("nats://"))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let kv = js.get_key_value(format!("{prefix}_leases")).await.unwrap();
    let deadline = Instant::now() + within;
    loop {
        let mut owners = Vec::new();
        for p in 0..4 {
            let v = kv
                .get(format!("default.default.partitions.{p}"))
                .await
                .unwrap();
            owners.push(v.map(|b| String::from_utf8_lossy(&b).into_owned()));
        }
        let distinct: HashSet<&String> = owners.iter().flatten().collect();
        let split = distinct.len() == 2
            && distinct
                .iter()
                .all(|o| owners.iter().flatten().filter(|x| x == o).count() == 2);
        if split {
            return owners.into_iter().flatten().collect();
        }
        assert!(
            Instant::now() < deadline,
            "partitions not split 2/2 within {within:?}: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_under_load_gives_503_then_recovers_and_loses_nothing() {
    let Some(url) = common::nats_url() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), config(&sub)).unwrap();
    let prefix = unique("outage");
    let timeouts = ["--append-timeout", "PT3S", "--nats-request-timeout", "PT2S"];
    let server = Proc::start("serve", dir.path(), &storage(&url, &prefix), &timeouts).await;

    let sent = Arc::new(Sent::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = produce(server.addr, "o", 8, usize::MAX, stop.clone(), sent.clone());
    eventually(
        "events accepted before the outage",
        Duration::from_secs(20),
        || {
            let n = sent.accepted.load(Ordering::Relaxed);
            async move { n >= 300 }
        },
    )
    .await;

    let stopping = Instant::now();
    tokio::task::spawn_blocking(|| dev_services("stop-nats"))
        .await
        .unwrap();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await; // the outage itself
    let restarting = Instant::now();
    tokio::task::spawn_blocking(|| dev_services("start-nats"))
        .await
        .unwrap();
    let up = Instant::now();

    // Recovered: new events are accepted again.
    let at_restart = sent.accepted.load(Ordering::Relaxed);
    eventually("202s after NATS returned", Duration::from_secs(60), || {
        let n = sent.accepted.load(Ordering::Relaxed);
        async move { n >= at_restart + 300 }
    })
    .await;
    let recovered = up.elapsed();
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    let results = sent.status.lock().unwrap().clone();
    // Requests made entirely while NATS was down.
    let during: Vec<u16> = results
        .iter()
        .filter(|(_, _, start, end)| *start >= down && *end <= restarting)
        .map(|(_, s, _, _)| *s)
        .collect();
    let refused = during.iter().filter(|&&s| s == 503).count();
    let max_answer = results
        .iter()
        .filter(|(_, _, start, _)| *start >= stopping && *start <= up)
        .map(|(_, _, start, end)| end.duration_since(*start))
        .max()
        .unwrap_or_default();
    let other: Vec<u16> = results
        .iter()
        .map(|(_, s, _, _)| *s)
        .filter(|s| *s != 202 && *s != 503)
        .collect();
    let accepted = sent.accepted_ids();
    eprintln!(
        "NATS outage of {:?}: {} requests while down, {refused} answered 503 (slowest answer {max_answer:?}); \
         202s again {recovered:?} after restart; {} accepted in total",
        restarting - down,
        during.len(),
        accepted.len()
    );
    assert!(!during.is_empty(), "load continued during the outage");
    assert_eq!(
        refused,
        during.len(),
        "only 503 while NATS is down: {during:?}"
    );
    assert!(other.is_empty(), "no other statuses: {other:?}");
    assert!(
        max_answer < Duration::from_secs(5),
        "answers stay bounded ({max_answer:?})"
    );
    let dups = all_delivered(&sub, &accepted, Duration::from_secs(120)).await;
    eprintln!("after the outage: every accepted event delivered, {dups} duplicates");
    server.stop().await;
}
