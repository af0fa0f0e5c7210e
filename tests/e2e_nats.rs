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

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, Subscriber};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command};

/// The tests of this file share one nats-server, and one of them stops it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn nats_url() -> Option<String> {
    match std::env::var("TRIGGERFISH_TEST_NATS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("TRIGGERFISH_SKIP_NATS").as_deref() == Ok("1") => {
            eprintln!("TRIGGERFISH_SKIP_NATS=1: NATS end-to-end tests skipped");
            None
        }
        _ => panic!(
            "TRIGGERFISH_TEST_NATS_URL is not set: run the tests through scripts/test \
             (which starts nats-server), or `scripts/dev-services start && source \
             .dev-services/env`; set TRIGGERFISH_SKIP_NATS=1 to skip the NATS tests"
        ),
    }
}

fn unique_prefix(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// A broker `default/default` with `all` (every event) and `orders` (type `order`).
fn config(sub: &Subscriber) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {{name: default}}\n\
         ---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: all}}\n\
         spec:\n  broker: default\n  subscriber: {{uri: '{all}'}}\n  delivery: {{retry: 5, backoffDelay: PT0.1S}}\n\
         ---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: orders}}\n\
         spec:\n  broker: default\n  filter: {{attributes: {{type: order}}}}\n  subscriber: {{uri: '{orders}'}}\n  delivery: {{retry: 5, backoffDelay: PT0.1S}}\n",
        all = sub.url("/all"),
        orders = sub.url("/orders"),
    )
}

/// One `triggerfish` process; killed when dropped.
struct Proc {
    child: Option<Child>,
    addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Proc {
    /// Starts `triggerfish <role>` and waits for its `listening on` line.
    async fn start(role: &str, dir: &Path, url: &str, prefix: &str, extra: &[&str]) -> Proc {
        let log =
            std::fs::File::create(dir.join(format!("{role}-{}.log", unique_prefix("p")))).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_triggerfish"));
        cmd.arg(role)
            .arg("--config")
            .arg(dir.join("config.yaml"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--storage", url, "--nats-prefix", prefix])
            .args(["--nats-max-bytes", "67108864", "--drain-seconds", "5"])
            .args(["--log", "warn"])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut proc = Proc {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep reading so the process never blocks on a full pipe.
            for _ in lines {}
        });
        let first = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("{role} did not start within 30 s (logs in {dir:?})"))
            .unwrap()
            .unwrap_or_else(|| panic!("{role} exited during start-up (logs in {dir:?})"))
            .unwrap();
        proc.addr = first
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line of {role}: {first}"))
            .parse()
            .unwrap();
        proc
    }

    /// SIGKILL, as a crash.
    fn kill(mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        let status = c.wait().unwrap();
        assert!(!status.success(), "killed");
    }

    /// Deliveries this process made (all triggers), from its `/metrics`.
    async fn delivered(&self) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| {
                l.starts_with("triggerfish_dispatcher_deliveries_total")
                    && l.contains("outcome=\"delivered\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGTERM, then waits for a clean exit.
    async fn stop(mut self) {
        let mut c = self.child.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let status = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(s) = c.try_wait().unwrap() {
                    return s;
                }
                if Instant::now() >= deadline {
                    let _ = c.kill();
                    panic!("no exit within 20 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .unwrap();
        assert!(status.success(), "exit status {status}");
    }
}

/// What the producers saw: per event id, the status of its request (0: no answer).
#[derive(Default)]
struct Sent {
    status: Mutex<Vec<(String, u16, Instant, Instant)>>,
    accepted: AtomicUsize,
}

impl Sent {
    fn accepted_ids(&self) -> HashSet<String> {
        self.status
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s, _, _)| *s == 202)
            .map(|(id, _, _, _)| id.clone())
            .collect()
    }
}

/// Event `i`: type `order` for even `i`, else `other`; 1 KiB of data.
async fn send(client: &reqwest::Client, addr: SocketAddr, id: &str, i: usize) -> (u16, bool) {
    let ty = if i.is_multiple_of(2) {
        "order"
    } else {
        "other"
    };
    let resp = client
        .post(format!("http://{addr}/default/default"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/e2e-nats")
        .header("ce-type", ty)
        .header("content-type", "application/octet-stream")
        .body(vec![b'x'; 1024])
        .send()
        .await;
    match resp {
        Ok(r) => (r.status().as_u16(), r.headers().contains_key("retry-after")),
        Err(_) => (0, false),
    }
}

/// `conc` producers send events `tag-0`, `tag-1`, ... until `stop` is set or `max`
/// were sent.
fn produce(
    addr: SocketAddr,
    tag: &str,
    conc: usize,
    max: usize,
    stop: Arc<AtomicBool>,
    sent: Arc<Sent>,
) -> tokio::task::JoinHandle<()> {
    let tag = tag.to_owned();
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..conc {
            let (client, next, stop, sent, tag) = (
                client.clone(),
                next.clone(),
                stop.clone(),
                sent.clone(),
                tag.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= max {
                        break;
                    }
                    let id = format!("{tag}-{i}");
                    let started = Instant::now();
                    let (status, retry_after) = send(&client, addr, &id, i).await;
                    if status == 503 {
                        assert!(retry_after, "503 without Retry-After");
                    }
                    if status == 202 {
                        sent.accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    sent.status
                        .lock()
                        .unwrap()
                        .push((id, status, started, Instant::now()));
                    if status != 202 {
                        // What a producer does after a 503: wait a little, go on.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    })
}

/// Per path, how many requests each event id got.
fn counts(sub: &Subscriber, path: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in sub.received_on(path) {
        if let Some(id) = r.header("ce-id") {
            *m.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    m
}

/// Waits until every accepted event reached every matching trigger; returns the
/// duplicates (deliveries beyond the first) per trigger.
async fn all_delivered(sub: &Subscriber, accepted: &HashSet<String>, within: Duration) -> usize {
    let orders: HashSet<String> = accepted
        .iter()
        .filter(|id| {
            id.rsplit('-')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| n.is_multiple_of(2))
        })
        .cloned()
        .collect();
    let deadline = Instant::now() + within;
    loop {
        let all = counts(sub, "/all");
        let ord = counts(sub, "/orders");
        let missing_all = accepted.iter().filter(|id| !all.contains_key(*id)).count();
        let missing_ord = orders.iter().filter(|id| !ord.contains_key(*id)).count();
        if missing_all == 0 && missing_ord == 0 {
            let extra = |m: &HashMap<String, usize>, want: &HashSet<String>| -> usize {
                m.iter()
                    .filter(|(id, _)| want.contains(*id))
                    .map(|(_, n)| n - 1)
                    .sum()
            };
            assert!(
                ord.keys()
                    .all(|id| orders.contains(id) || !accepted.contains(id)),
                "an event of another type reached the orders trigger"
            );
            return extra(&all, accepted) + extra(&ord, &orders);
        }
        assert!(
            Instant::now() < deadline,
            "not delivered within {within:?}: {missing_all} of {} missing on /all, {missing_ord} of {} on /orders",
            accepted.len(),
            orders.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_ingress_and_two_dispatchers_deliver_everything_even_when_one_is_killed() {
    let Some(url) = nats_url() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), config(&sub)).unwrap();
    let prefix = unique_prefix("e2e");
    let lease = ["--nats-lease-ttl", "PT3S"];
    let d1 = Proc::start("dispatcher", dir.path(), &url, &prefix, &lease).await;
    let d2 = Proc::start("dispatcher", dir.path(), &url, &prefix, &lease).await;
    let ingress = Proc::start("ingress", dir.path(), &url, &prefix, &[]).await;
    let health = reqwest::get(format!("http://{}/readyz", d1.addr))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // The second dispatcher gets its share within a few lease renewals.
    let owners = lease_owners(&url, &prefix, Duration::from_secs(30)).await;
    eprintln!("partition leases: {owners:?}");

    // Both dispatchers running: the partitions split between them.
    let sent = Arc::new(Sent::default());
    let stop = Arc::new(AtomicBool::new(false));
    produce(ingress.addr, "a", 16, 3000, stop.clone(), sent.clone())
        .await
        .unwrap();
    let accepted = sent.accepted_ids();
    assert_eq!(accepted.len(), 3000, "every request accepted");
    let dups = all_delivered(&sub, &accepted, Duration::from_secs(90)).await;
    let (by1, by2) = (d1.delivered().await, d2.delivered().await);
    eprintln!(
        "two dispatchers: {} events accepted, {} deliveries expected, {dups} duplicates; \
         deliveries by dispatcher 1: {by1}, by dispatcher 2: {by2}",
        accepted.len(),
        accepted.len() * 3 / 2
    );
    assert!(
        by1 > 0.0 && by2 > 0.0,
        "both dispatchers share the work ({by1} / {by2})"
    );
    assert_eq!(dups, 0, "no duplicates without a failure");

    // Again, killing dispatcher 2 (SIGKILL) in the middle of the run.
    let sent = Arc::new(Sent::default());
    let load = produce(ingress.addr, "b", 16, 4000, stop.clone(), sent.clone());
    let before = sub.received().len();
    eventually(
        "deliveries of the second run",
        Duration::from_secs(30),
        || {
            let n = sub.received().len();
            async move { n >= before + 1500 }
        },
    )
    .await;
    d2.kill();
    load.await.unwrap();
    let accepted = sent.accepted_ids();
    assert_eq!(accepted.len(), 4000, "every request accepted");
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

/// Runs `scripts/dev-services <cmd>` against the server the tests were given.
fn dev_services(cmd: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dev-services");
    let status = std::process::Command::new(script)
        .arg(cmd)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "scripts/dev-services {cmd} failed: run the tests with the same \
         TRIGGERFISH_DEV_SERVICES_DIR as the dev-services that started nats-server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_under_load_gives_503_then_recovers_and_loses_nothing() {
    let Some(url) = nats_url() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), config(&sub)).unwrap();
    let prefix = unique_prefix("outage");
    let timeouts = ["--append-timeout", "PT3S", "--nats-request-timeout", "PT2S"];
    let server = Proc::start("serve", dir.path(), &url, &prefix, &timeouts).await;

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
