//! End to end on Kafka with the real binary as separate processes: `triggerfish
//! ingress` and two `triggerfish dispatcher` replicas sharing one broker topic, the
//! partitions split by Kafka's group protocol, and one dispatcher killed mid-run.
//!
//! Needs `TRIGGERFISH_TEST_KAFKA_BOOTSTRAP` (`scripts/test` starts tansu, a
//! Kafka-protocol broker, through `scripts/dev-services`); fails without it unless
//! `TRIGGERFISH_SKIP_KAFKA=1`. Every test uses its own topic. The outage test stops
//! and restarts that broker with `scripts/dev-services stop-kafka` / `start-kafka`, so
//! the tests of this file run one at a time. Figures (duplicates, 503s) are printed;
//! run with `--nocapture` to see them.

#![cfg(feature = "kafka")]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::procs::{
    all_delivered, both_dispatchers_share_the_work, config, dev_services, kill_mid_run, produce,
    send_keyed_until_accepted, unique, Proc, Sent,
};
use common::{eventually, Subscriber};

/// The flags that put a process on this Kafka cluster, on a topic of its own.
fn storage(bootstrap: &str, tag: &str, partitions: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--storage".to_owned(),
        format!("kafka://{bootstrap}"),
        "--kafka-topic-template".to_owned(),
        format!("{}-{{namespace}}-{{name}}", unique(tag)),
        "--partitions".to_owned(),
        partitions.to_owned(),
        // tansu reads exact offsets only from one-record batches (docs/design/kafka.md).
        "--kafka-option".to_owned(),
        "batch.num.messages=1".to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// The tests of this file share one Kafka broker, and one of them stops it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Partitions this dispatcher process owns now, from its `/metrics`.
async fn owned(p: &Proc) -> f64 {
    common::metric(
        p.addr,
        "triggerfish_dispatcher_partitions{broker=\"default/default\"}",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_ingress_and_two_dispatchers_deliver_everything_even_when_one_is_killed() {
    let Some(bootstrap) = common::kafka_bootstrap() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), config(&sub)).unwrap();
    let storage = storage(&bootstrap, "e2e", "4", &["--kafka-session-timeout", "PT6S"]);
    let d1 = Proc::start("dispatcher", dir.path(), &storage, &[]).await;
    let d2 = Proc::start("dispatcher", dir.path(), &storage, &[]).await;
    let ingress = Proc::start("ingress", dir.path(), &storage, &[]).await;
    // Kafka's group protocol splits the 4 partitions 2/2.
    let started = Instant::now();
    eventually(
        "the partitions split between the dispatchers",
        Duration::from_secs(60),
        || async { owned(&d1).await == 2.0 && owned(&d2).await == 2.0 },
    )
    .await;
    eprintln!("partitions split 2/2 {:?} after start", started.elapsed());

    both_dispatchers_share_the_work(&sub, &ingress, &d1, &d2, 2000).await;

    // Again, killing dispatcher 2 (SIGKILL) in the middle of the run: after the
    // session timeout, Kafka gives its partitions to dispatcher 1, which resumes from
    // their checkpoints.
    let (accepted, killed) = kill_mid_run(&sub, &ingress, d2, 3000, 1200).await;
    eventually(
        "dispatcher 1 takes over every partition",
        Duration::from_secs(60),
        || async { owned(&d1).await == 4.0 },
    )
    .await;
    let took_over = killed.elapsed();
    let dups = all_delivered(&sub, &accepted, Duration::from_secs(120)).await;
    eprintln!(
        "dispatcher killed mid-run: partitions moved {took_over:?} after the kill; {} events accepted, \
         {} deliveries expected, none lost, {dups} duplicates",
        accepted.len(),
        accepted.len() * 3 / 2
    );
    ingress.stop().await;
    d1.stop().await;
}

/// The issue 13 scenario: 1,000 events over 7 partition keys, and the dispatcher that
/// leads the group killed (SIGKILL) at event 500. tansu 0.6.0 then keeps the dead
/// member as the group's leader, and the survivor's joins fail for good with an empty
/// assignment; the survivor sees the partitions unassigned for twice the session
/// timeout, joins afresh with a new client, and delivers every accepted event.
/// `scripts/kafka-failover-stress` runs this 20 times in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_survivor_of_a_killed_group_leader_takes_every_partition() {
    let Some(bootstrap) = common::kafka_bootstrap() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), config(&sub)).unwrap();
    let storage = storage(
        &bootstrap,
        "leader",
        "4",
        &["--kafka-session-timeout", "PT6S"],
    );
    // The first dispatcher forms the group alone, so it is the leader.
    let leader = Proc::start("dispatcher", dir.path(), &storage, &[]).await;
    eventually(
        "the leader owns every partition",
        Duration::from_secs(60),
        || async { owned(&leader).await == 4.0 },
    )
    .await;
    let survivor = Proc::start("dispatcher", dir.path(), &storage, &[]).await;
    let ingress = Proc::start("ingress", dir.path(), &storage, &[]).await;
    eventually("the partitions split", Duration::from_secs(60), || async {
        owned(&leader).await == 2.0 && owned(&survivor).await == 2.0
    })
    .await;

    let http = reqwest::Client::new();
    let accepted: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut producers = Vec::new();
    for _ in 0..8 {
        let (http, addr, accepted, next) =
            (http.clone(), ingress.addr, accepted.clone(), next.clone());
        producers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= 1000 {
                    break;
                }
                let id = format!("f-{i}");
                let ty = if i % 2 == 0 { "order" } else { "other" };
                send_keyed_until_accepted(&http, addr, &id, ty, &format!("key-{}", i % 7)).await;
                accepted.lock().unwrap().insert(id);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    eventually("500 events delivered", Duration::from_secs(60), || {
        let n = sub.received_on("/all").len();
        async move { n >= 500 }
    })
    .await;
    let killed = Instant::now();
    leader.kill();
    for p in producers {
        p.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 1000);
    eventually(
        "the survivor owns every partition",
        Duration::from_secs(120),
        || async { owned(&survivor).await == 4.0 },
    )
    .await;
    let took_over = killed.elapsed();
    let dups = all_delivered(&sub, &accepted, Duration::from_secs(120)).await;
    let rejoined = common::metrics_text(survivor.addr).await;
    let unowned = rejoined
        .lines()
        .find(|l| l.starts_with("triggerfish_dispatcher_unowned_partitions{"))
        .unwrap_or("")
        .to_owned();
    eprintln!(
        "FAILOVER leader killed at 500: survivor owned all partitions {took_over:?} after the kill; \
         {} accepted, all delivered, {dups} duplicates; {unowned}",
        accepted.len()
    );
    ingress.stop().await;
    survivor.stop().await;
}

/// Kafka unreachable: the ingress answers 503 with Retry-After within the request
/// timeout instead of hanging, and nothing it accepted before is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_gives_503_with_retry_after_within_the_timeout() {
    let Some(bootstrap) = common::kafka_bootstrap() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), config(&sub)).unwrap();
    let storage = storage(
        &bootstrap,
        "outage",
        "2",
        &["--kafka-request-timeout", "PT2S"],
    );
    let server = Proc::start("serve", dir.path(), &storage, &[]).await;
    let sent = Arc::new(Sent::default());
    let stop = Arc::new(AtomicBool::new(false));
    produce(server.addr, "before", 4, 200, stop.clone(), sent.clone())
        .await
        .unwrap();
    let accepted = sent.accepted_ids();
    assert_eq!(accepted.len(), 200);
    let dups = all_delivered(&sub, &accepted, Duration::from_secs(60)).await;
    assert_eq!(dups, 0);

    tokio::task::spawn_blocking(|| dev_services("stop-kafka"))
        .await
        .unwrap();
    let during = Arc::new(Sent::default());
    produce(server.addr, "during", 4, 20, stop.clone(), during.clone())
        .await
        .unwrap();
    // The server stops (drains and exits cleanly) while Kafka is still down. Not after
    // the restart: tansu's memory storage comes back empty, and its metadata answers
    // for the topics it lost carry a null topic name, on which librdkafka 2.12 crashes
    // (strcmp(NULL) in rd_kafka_metadata_cache_find). Kafka itself neither loses topics
    // nor sends such answers.
    let stopping = Instant::now();
    server.stop().await;
    let stop_took = stopping.elapsed();
    // Back up for the tests that follow.
    tokio::task::spawn_blocking(|| dev_services("start-kafka"))
        .await
        .unwrap();
    let results = during.status.lock().unwrap().clone();
    let statuses: Vec<u16> = results.iter().map(|(_, s, _, _)| *s).collect();
    let slowest = results
        .iter()
        .map(|(_, _, start, end)| end.duration_since(*start))
        .max()
        .unwrap();
    eprintln!(
        "Kafka down: {} requests, statuses {statuses:?}, slowest answer {slowest:?}; \
         clean shutdown took {stop_took:?}",
        results.len()
    );
    // `produce` asserts that every 503 carries Retry-After.
    assert!(
        statuses.iter().all(|&s| s == 503),
        "only 503 while Kafka is down: {statuses:?}"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "answers bounded by the 2 s request timeout ({slowest:?})"
    );
}
