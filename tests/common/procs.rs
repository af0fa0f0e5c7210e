//! Separate `triggerfish` processes on a shared channel (NATS, Kafka): starting,
//! killing and stopping them, producing load through the ingress, and checking that
//! every accepted event reached every matching trigger.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Subscriber;

/// A name no other process or test of this run uses.
pub fn unique(tag: &str) -> String {
    static SERIAL: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{tag}-{}-{}-{nanos}",
        std::process::id(),
        SERIAL.fetch_add(1, Ordering::Relaxed)
    )
}

/// A broker `default/default` with `all` (every event) and `orders` (type `order`).
pub fn config(sub: &Subscriber) -> String {
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
pub struct Proc {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// Its admin API.
    pub admin: Option<SocketAddr>,
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
    /// Starts `triggerfish <role>` with `storage` (the `--storage` flag and the
    /// backend's own) and `extra`, and waits for its `listening on` line.
    pub async fn start<S: AsRef<std::ffi::OsStr>>(
        role: &str,
        dir: &Path,
        storage: &[S],
        extra: &[&str],
    ) -> Proc {
        let log = std::fs::File::create(dir.join(format!("{role}-{}.log", unique("p")))).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_triggerfish"));
        cmd.arg(role);
        // `dir/config.yaml` unless the test names its own.
        if !extra.contains(&"--config") {
            cmd.arg("--config").arg(dir.join("config.yaml"));
        }
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(storage)
            .args(["--drain-seconds", "5"])
            .args(["--log", "warn"])
            .args(extra)
            // No readiness grace before the listener stops, unless a test asks.
            .args(if extra.contains(&"--shutdown-delay") {
                &[][..]
            } else {
                &["--shutdown-delay", "PT0S"][..]
            })
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut proc = Proc {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let second = lines.next();
            let _ = tx.send(first.map(|f| f.map(|f| (f, second.and_then(Result::ok)))));
            // Keep reading so the process never blocks on a full pipe.
            for _ in lines {}
        });
        let first = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("{role} did not start within 30 s (logs in {dir:?})"))
            .unwrap()
            .unwrap_or_else(|| panic!("{role} exited during start-up (logs in {dir:?})"))
            .unwrap();
        let (first, second) = first;
        proc.admin = second
            .as_deref()
            .and_then(|s| {
                s.strip_prefix("admin API on http://")
                    .or_else(|| s.strip_prefix("admin API on https://"))
            })
            .and_then(|a| a.parse().ok());
        proc.addr = first
            .strip_prefix("listening on http://")
            .or_else(|| first.strip_prefix("listening on https://"))
            .unwrap_or_else(|| panic!("unexpected first line of {role}: {first}"))
            .parse()
            .unwrap();
        proc
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL, as a crash.
    pub fn kill(mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        let status = c.wait().unwrap();
        assert!(!status.success(), "killed");
    }

    /// Deliveries this process made (all triggers), from its `/metrics`.
    pub async fn delivered(&self) -> f64 {
        super::metrics_text(self.addr)
            .await
            .lines()
            .filter(|l| {
                l.starts_with("triggerfish_dispatcher_deliveries_total")
                    && l.contains("outcome=\"delivered\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let status = self.exited().await;
        assert!(status.success(), "exit status {status}");
    }

    /// Waits up to 20 s for the process to exit (a signal was sent).
    pub async fn exited(mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        tokio::task::spawn_blocking(move || {
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
        .unwrap()
    }
}

/// What the producers saw: per event id, the status of its request (0: no answer).
#[derive(Default)]
pub struct Sent {
    pub status: Mutex<Vec<(String, u16, Instant, Instant)>>,
    pub accepted: AtomicUsize,
}

impl Sent {
    pub fn accepted_ids(&self) -> HashSet<String> {
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
pub async fn send(client: &reqwest::Client, addr: SocketAddr, id: &str, i: usize) -> (u16, bool) {
    let ty = if i.is_multiple_of(2) {
        "order"
    } else {
        "other"
    };
    let resp = client
        .post(format!("http://{addr}/default/default"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/e2e")
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
pub fn produce(
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
pub fn counts(sub: &Subscriber, path: &str) -> HashMap<String, usize> {
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
pub async fn all_delivered(
    sub: &Subscriber,
    accepted: &HashSet<String>,
    within: Duration,
) -> usize {
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

/// With two dispatchers running, `n` events through `ingress` reach every matching
/// trigger exactly once, and both dispatchers deliver some of them.
pub async fn both_dispatchers_share_the_work(
    sub: &Subscriber,
    ingress: &Proc,
    d1: &Proc,
    d2: &Proc,
    n: usize,
) {
    let sent = Arc::new(Sent::default());
    let stop = Arc::new(AtomicBool::new(false));
    produce(ingress.addr, "a", 16, n, stop, sent.clone())
        .await
        .unwrap();
    let accepted = sent.accepted_ids();
    assert_eq!(accepted.len(), n, "every request accepted");
    let dups = all_delivered(sub, &accepted, Duration::from_secs(90)).await;
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
}

/// Sends `n` events through `ingress` and kills `victim` (SIGKILL) once `kill_after`
/// deliveries of them arrived; returns the accepted ids once every request is
/// answered (every one must be accepted) and when the kill happened.
pub async fn kill_mid_run(
    sub: &Subscriber,
    ingress: &Proc,
    victim: Proc,
    n: usize,
    kill_after: usize,
) -> (HashSet<String>, Instant) {
    let sent = Arc::new(Sent::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = produce(ingress.addr, "b", 16, n, stop, sent.clone());
    let before = sub.received().len();
    super::eventually(
        "deliveries before the kill",
        Duration::from_secs(30),
        || {
            let got = sub.received().len();
            async move { got >= before + kill_after }
        },
    )
    .await;
    let killed = Instant::now();
    victim.kill();
    load.await.unwrap();
    let accepted = sent.accepted_ids();
    assert_eq!(accepted.len(), n, "every request accepted");
    (accepted, killed)
}

/// Runs `scripts/dev-services <cmd>` against the server the tests were given.
pub fn dev_services(cmd: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dev-services");
    let status = std::process::Command::new(script)
        .arg(cmd)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "scripts/dev-services {cmd} failed: run the tests with the same \
         TRIGGERFISH_DEV_SERVICES_DIR as the dev-services that started the servers"
    );
}

/// Sends one small event with a partition key to `default/default`, again every
/// 50 ms until it is accepted (a producer retrying 503s).
pub async fn send_keyed_until_accepted(
    client: &reqwest::Client,
    addr: SocketAddr,
    id: &str,
    ty: &str,
    key: &str,
) {
    loop {
        let r = client
            .post(format!("http://{addr}/default/default"))
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/keyed")
            .header("ce-type", ty)
            .header("ce-partitionkey", key)
            .body("x")
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 202) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
