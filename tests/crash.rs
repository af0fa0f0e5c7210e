//! Crash safety of the embedded log, against the real binary: thousands of events
//! accepted with 202, the process killed with SIGKILL while deliveries are in flight,
//! restarted on the same data directory: every accepted event is delivered at least
//! once. The duplicate count is printed (run with `--nocapture` to see it).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::sync::Semaphore;

const EVENTS: usize = 3000;
const PRODUCERS: usize = 32;

/// A server process that is killed when dropped, so a failing test leaves none behind.
struct Server(Child);

impl std::ops::Deref for Server {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_server(config: &std::path::Path, data: &std::path::Path) -> (Server, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_triggerfish"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log",
            "warn",
        ])
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(data.with_extension("log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .or_else(|| line.trim().strip_prefix("listening on https://"))
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .parse()
        .unwrap();
    (Server(child), addr)
}

/// Sends events `range` with bounded concurrency; returns the ids answered 202.
/// When `kill_after` is given, `on_kill` runs once that many were accepted, while
/// production continues (requests then fail and are not counted).
async fn produce(
    addr: SocketAddr,
    range: std::ops::Range<usize>,
    kill_after: Option<usize>,
    on_kill: impl FnOnce(),
) -> Vec<String> {
    let client = reqwest::Client::new();
    let sem = Arc::new(Semaphore::new(PRODUCERS));
    let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut on_kill = Some(on_kill);
    let mut tasks = Vec::new();
    for i in range {
        if kill_after.is_some_and(|n| accepted.lock().unwrap().len() >= n) {
            if let Some(f) = on_kill.take() {
                f();
            }
        }
        let permit = sem.clone().acquire_owned().await.unwrap();
        let client = client.clone();
        let accepted = accepted.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("evt-{i}");
            let resp = client
                .post(format!("http://{addr}/default/default"))
                .header("ce-specversion", "1.0")
                .header("ce-id", &id)
                .header("ce-source", "/crash-test")
                .header("ce-type", "t")
                .body(vec![b'x'; 512])
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            if resp.is_ok_and(|r| r.status().as_u16() == 202) {
                accepted.lock().unwrap().push(id);
            }
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = accepted.lock().unwrap().clone();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_loses_no_accepted_event() {
    let sub = Subscriber::start().await;
    // A subscriber slow enough that deliveries are in flight when the kill lands
    // (100 in flight at 20 ms each: at most 5,000 deliveries/s).
    sub.set_delay(Duration::from_millis(20));
    let dir = tempfile::Builder::new()
        .prefix("tf-crash")
        .tempdir()
        .unwrap();
    let dir = if std::env::var_os("TF_KEEP").is_some() {
        Box::leak(Box::new(dir)).path().to_path_buf()
    } else {
        dir.path().to_path_buf()
    };
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        broker_with_triggers(&[("counter", "", sub.url("/count"))]),
    )
    .unwrap();
    let data = dir.join("data");

    let (child, addr) = spawn_server(&config, &data);
    let child = std::sync::Mutex::new(child);
    // Kill mid-run: producers are still sending and deliveries are in flight.
    let delivered_at_kill = std::sync::Mutex::new(0);
    let first = produce(addr, 0..EVENTS, Some(EVENTS / 2), || {
        // Counted just before the kill: requests the subscriber is still sleeping on
        // complete after it, and must not count as delivered before it.
        *delivered_at_kill.lock().unwrap() = sub.received().len();
        let mut c = child.lock().unwrap();
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
    })
    .await;
    let delivered_before_kill = *delivered_at_kill.lock().unwrap();
    assert!(
        delivered_before_kill < first.len(),
        "the kill must land mid-delivery ({delivered_before_kill} of {} delivered)",
        first.len()
    );

    let (mut child, addr) = spawn_server(&config, &data);
    let second = produce(addr, EVENTS..EVENTS + EVENTS / 2, None, || {}).await;
    let mut accepted: HashSet<String> = first.into_iter().collect();
    accepted.extend(second);
    let started = Instant::now();
    let got = sub
        .wait_until("every accepted event", Duration::from_secs(60), |r| {
            let ids: HashSet<&str> = r.iter().filter_map(|x| x.header("ce-id")).collect();
            accepted.iter().all(|id| ids.contains(id.as_str()))
        })
        .await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for r in &got {
        *counts.entry(r.header("ce-id").unwrap()).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    eprintln!(
        "crash test: {} accepted, {} deliveries, {} duplicates, {} delivered before SIGKILL, caught up in {:?}",
        accepted.len(),
        got.len(),
        duplicates,
        delivered_before_kill,
        started.elapsed()
    );
    assert!(
        accepted.len() >= EVENTS / 2 + EVENTS / 2 * 9 / 10,
        "most events should be accepted: {}",
        accepted.len()
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_writes_checkpoints_and_exits_cleanly() {
    let sub = Subscriber::start().await;
    // Slow enough that every delivery is still in flight when SIGTERM lands.
    sub.set_delay(Duration::from_millis(1000));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, broker_with_triggers(&[("t", "", sub.url("/t"))])).unwrap();
    let data = dir.path().join("data");
    let (mut child, addr) = spawn_server(&config, &data);
    let accepted = produce(addr, 0..200, None, || {}).await;
    assert_eq!(accepted.len(), 200);
    // Every delivery has reached the subscriber, none has been answered yet.
    eventually(
        "all 200 deliveries in flight",
        Duration::from_secs(10),
        || async { sub.arrived() == 200 },
    )
    .await;
    assert!(sub.received().len() < 200);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(
        exit.success(),
        "exit status {exit:?}; server log:\n{}",
        std::fs::read_to_string(data.with_extension("log")).unwrap_or_default()
    );
    // The drain let every delivery in flight finish before exiting...
    let ids: HashSet<String> = sub
        .received()
        .iter()
        .filter_map(|r| r.header("ce-id").map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), 200, "deliveries in flight finished before exit");
    // ...and the final checkpoint covers them all, so a restart redelivers nothing.
    let cp =
        std::fs::read_to_string(data.join("brokers/default/default/checkpoints/t.json")).unwrap();
    let cp: serde_json::Value = serde_json::from_str(&cp).unwrap();
    let total: u64 = cp["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .sum();
    assert_eq!(total, 200, "checkpoint {cp}");
}
