//! Partition hand-over on NATS JetStream with the real binary: three dispatcher
//! processes, one joining and one leaving gracefully while events flow, with an
//! ordered trigger. Per partition key, first deliveries arrive in append order (no
//! partition is delivered from two places), every accepted event arrives, and no
//! checkpoint is written by a process that no longer owns its partition: every
//! checkpoint write carries the epoch of a lease of its partition, and per partition
//! the epochs of the writes never go back.
//!
//! Needs `TRIGGERFISH_TEST_NATS_URL` (`scripts/test` starts nats-server); fails
//! without it unless `TRIGGERFISH_SKIP_NATS=1`. Figures are printed (`--nocapture`).

#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker::channel::nats::{async_nats, NatsLog, NatsOptions};
use common::procs::{send_keyed_until_accepted, unique, Proc};
use common::Subscriber;
use futures_util::StreamExt;

const KEYS: usize = 7;
const PER_KEY: usize = 500;
const PARTITIONS: &str = "6";

fn config(sub: &Subscriber) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {{name: default}}\n\
         ---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\n\
         metadata:\n  name: ordered\n  annotations: {{kafka.eventing.knative.dev/delivery.order: ordered}}\n\
         spec:\n  broker: default\n  subscriber: {{uri: '{}'}}\n  delivery: {{retry: 5, backoffDelay: PT0.1S}}\n",
        sub.url("/ordered")
    )
}

/// Every entry of a KV bucket from now on (and the latest of each key before), in
/// stream order: (key, revision, value).
type Entries = Arc<Mutex<Vec<(String, u64, String)>>>;

async fn watch(js: &async_nats::jetstream::Context, bucket: &str) -> Entries {
    let kv = js.get_key_value(bucket).await.unwrap();
    let mut w = kv.watch_all().await.unwrap();
    let seen: Entries = Arc::default();
    let out = seen.clone();
    tokio::spawn(async move {
        while let Some(Ok(e)) = w.next().await {
            let v = String::from_utf8_lossy(&e.value).into_owned();
            out.lock().unwrap().push((e.key, e.revision, v));
        }
    });
    seen
}

/// Owners of the 6 partitions now (`None` where no lease).
async fn owners(js: &async_nats::jetstream::Context, prefix: &str) -> Vec<Option<String>> {
    let kv = js.get_key_value(format!("{prefix}_leases")).await.unwrap();
    let mut out = Vec::new();
    for p in 0..6 {
        let v = kv
            .get(format!("default.default.partitions.{p}"))
            .await
            .unwrap();
        out.push(v.map(|b| String::from_utf8_lossy(&b).into_owned()));
    }
    out
}

async fn until_owned_by(
    js: &async_nats::jetstream::Context,
    prefix: &str,
    n: usize,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let o = owners(js, prefix).await;
        let distinct: HashSet<&String> = o.iter().flatten().collect();
        if distinct.len() == n && o.iter().all(Option::is_some) {
            eprintln!("leases: {o:?}");
            return;
        }
        assert!(Instant::now() < deadline, "not split among {n}: {o:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_joining_and_one_leaving_keep_per_key_order_and_single_owners() {
    let Some(url) = common::nats_url() else {
        return;
    };
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), config(&sub)).unwrap();
    let prefix = unique("handover");
    let storage = [
        "--storage",
        url.as_str(),
        "--nats-prefix",
        prefix.as_str(),
        "--partitions",
        PARTITIONS,
        // Test-sized streams: JetStream reserves each stream's max bytes.
        "--nats-max-bytes",
        "67108864",
    ];
    let lease = ["--nats-lease-ttl", "PT3S"];
    // The buckets exist (as the processes will open them) before anything is
    // written, so the watches see every lease and checkpoint write.
    let mut opts = NatsOptions::from_url(&url).unwrap();
    opts.prefix = prefix.clone();
    opts.lease_ttl = Duration::from_secs(3);
    opts.limits.max_bytes = Some(64 << 20);
    drop(NatsLog::connect(opts).await.unwrap());
    let client = async_nats::connect(url.trim_start_matches("nats://"))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let checkpoints = watch(&js, &format!("{prefix}_checkpoints")).await;
    let leases = watch(&js, &format!("{prefix}_leases")).await;
    let d1 = Proc::start("dispatcher", dir.path(), &storage, &lease).await;
    let d2 = Proc::start("dispatcher", dir.path(), &storage, &lease).await;
    let ingress = Proc::start("ingress", dir.path(), &storage, &[]).await;
    until_owned_by(&js, &prefix, 2, Duration::from_secs(30)).await;

    // One producer per key, each sending its key's events one after another (so the
    // append order per key is the send order), paced to last about 15 s.
    let http = reqwest::Client::new();
    let accepted: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut producers = Vec::new();
    for k in 0..KEYS {
        let (http, addr, accepted) = (http.clone(), ingress.addr, accepted.clone());
        producers.push(tokio::spawn(async move {
            for n in 0..PER_KEY {
                let id = format!("k{k}-{n}");
                send_keyed_until_accepted(&http, addr, &id, "order", &format!("k{k}")).await;
                accepted.lock().unwrap().insert(id);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }));
    }

    // A third dispatcher joins: the others hand partitions over to it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d3 = Proc::start("dispatcher", dir.path(), &storage, &lease).await;
    until_owned_by(&js, &prefix, 3, Duration::from_secs(40)).await;
    // Then the first leaves gracefully (SIGTERM: drain, final checkpoints, release).
    let by1 = d1.delivered().await;
    d1.stop().await;
    until_owned_by(&js, &prefix, 2, Duration::from_secs(40)).await;
    for p in producers {
        p.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), KEYS * PER_KEY);

    // Every accepted event arrives.
    let deadline = Instant::now() + Duration::from_secs(120);
    let received = loop {
        let got = sub.received_on("/ordered");
        let ids: HashSet<String> = got
            .iter()
            .filter_map(|r| r.header("ce-id").map(str::to_owned))
            .collect();
        if accepted.iter().all(|id| ids.contains(id)) {
            break got;
        }
        let missing = accepted.iter().filter(|id| !ids.contains(*id)).count();
        assert!(
            Instant::now() < deadline,
            "{missing} accepted events never arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (by2, by3) = (d2.delivered().await, d3.delivered().await);

    // Per key, first deliveries in append order.
    let mut first: HashMap<String, Vec<usize>> = HashMap::new();
    let mut seen = HashSet::new();
    for r in &received {
        let id = r.header("ce-id").unwrap().to_owned();
        if !seen.insert(id.clone()) {
            continue;
        }
        let (key, n) = id.split_once('-').unwrap();
        first
            .entry(key.to_owned())
            .or_default()
            .push(n.parse().unwrap());
    }
    for (key, ns) in &first {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "key {key}: first deliveries out of append order: {:?}",
            ns.windows(2).find(|w| w[0] >= w[1])
        );
    }
    let duplicates = received.len() - seen.len();

    // Checkpoint writes: each under an epoch that is the revision of one of its
    // partition's leases, and per partition never going back.
    tokio::time::sleep(Duration::from_secs(1)).await; // the watchers catch up
    let lease_revisions: HashMap<String, HashSet<u64>> = {
        let mut m: HashMap<String, HashSet<u64>> = HashMap::new();
        for (key, rev, _) in leases.lock().unwrap().iter() {
            let p = key.rsplit('.').next().unwrap().to_owned();
            m.entry(p).or_default().insert(*rev);
        }
        m
    };
    let mut latest: BTreeMap<String, u64> = BTreeMap::new();
    let mut writes = 0;
    let mut epochs: BTreeMap<String, HashSet<u64>> = BTreeMap::new();
    for (key, _, value) in checkpoints.lock().unwrap().iter() {
        if !key.starts_with("default.default.events.") {
            continue;
        }
        let p = key.rsplit('.').next().unwrap().to_owned();
        let Some(epoch) = value
            .split_once(" epoch=")
            .map(|(_, e)| e.parse::<u64>().unwrap())
        else {
            continue; // a start point, written outside any lease
        };
        writes += 1;
        assert!(
            lease_revisions.get(&p).is_some_and(|r| r.contains(&epoch)),
            "{key} = {value}: not the epoch of a lease of partition {p}"
        );
        let last = latest.entry(p.clone()).or_insert(0);
        assert!(
            epoch >= *last,
            "{key} = {value} written after a write under epoch {last}: a previous owner wrote"
        );
        *last = epoch;
        epochs.entry(p).or_default().insert(epoch);
    }
    let moved = epochs.values().filter(|e| e.len() > 1).count();
    eprintln!(
        "{} events over {KEYS} keys, {duplicates} duplicates; deliveries by d1 {by1}, d2 {by2}, d3 {by3}; \
         {writes} checkpoint writes checked, {moved} of {PARTITIONS} partitions changed owner",
        accepted.len()
    );
    assert!(
        by1 > 0.0 && by3 > 0.0,
        "the leaving and the joining dispatcher both delivered"
    );
    assert!(moved >= 2, "partitions changed owner: {epochs:?}");
    ingress.stop().await;
    d2.stop().await;
    d3.stop().await;
}
