//! Redrive of the broker's dead-letter log as a streaming job
//! (`dispatcher::dead_letter`): the cursor stored after every batch, so a redrive
//! that stops half way and is started again resends at most the batch in flight;
//! cancellation; one redrive per log; the CLI's progress and report at scale with
//! bounded memory.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use broker::channel::embedded::{EmbeddedLog, EmbeddedOptions};
use broker::channel::{BrokerLog, ChannelError, EventLog, LogKind};
use broker::event::{AttrValue, DataKind, Event, ERROR_CODE, ERROR_TRIGGER};
use broker::telemetry::Metrics;
use bytes::Bytes;
use common::*;
use dispatcher::dead_letter::{
    self, RedriveFault, RedriveSpec, RedriveState, RedriveTo, Redrives, StartError, Target,
};
use tokio_util::sync::CancellationToken;

fn yaml(sub: &Subscriber) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {{name: default}}\n\
         ---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: t}}\n\
         spec:\n  broker: default\n  subscriber: {{uri: '{}'}}\n  delivery: {{retry: 0}}\n",
        sub.url("/t")
    )
}

/// A dead-letter entry of trigger `t`, as the dispatcher writes one.
fn entry(i: usize, data_bytes: usize) -> Event {
    let mut e = Event::new();
    e.set_str("specversion", "1.0");
    e.set_str("id", format!("e{i}"));
    e.set_str("source", "/redrive-test");
    e.set_str("type", "t");
    e.set(ERROR_TRIGGER, AttrValue::String("t".into()));
    e.set(ERROR_CODE, AttrValue::String("500".into()));
    e.set_data(DataKind::Binary, Some(Bytes::from(vec![b'x'; data_bytes])));
    e
}

struct Fixture {
    _dir: tempfile::TempDir,
    target: Arc<dyn Fn() -> Target + Send + Sync>,
    dead_letters: Arc<dyn BrokerLog>,
}

/// An embedded log whose dead-letter log holds `n` entries of trigger `t`.
async fn fixture(sub: &Subscriber, n: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let cfg = config(&yaml(sub));
    let broker = cfg.broker("default", "default").unwrap().clone();
    let events = log.open(&broker.id, LogKind::Events).await.unwrap();
    let dead_letters = log.open(&broker.id, LogKind::DeadLetters).await.unwrap();
    let all: Vec<Event> = (0..n).map(|i| entry(i, 16)).collect();
    for chunk in all.chunks(500) {
        dead_letters.append_own(chunk).await.unwrap();
    }
    let dl = dead_letters.clone();
    Fixture {
        _dir: dir,
        target: Arc::new(move || Target {
            config: broker.clone(),
            events: events.clone(),
            dead_letters: dl.clone(),
        }),
        dead_letters,
    }
}

fn redrives() -> Redrives {
    Redrives::new("test-owner", Metrics::shared(), CancellationToken::new())
}

fn spec(batch: usize, concurrency: usize) -> RedriveSpec {
    RedriveSpec {
        to: RedriveTo::Subscriber,
        trigger: None,
        batch,
        concurrency,
    }
}

fn ids(sub: &Subscriber) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in sub.received_on("/t") {
        *m.entry(r.header("ce-id").unwrap().to_owned()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_half_way_then_a_second_redrive_resends_only_the_batch_in_flight() {
    let sub = Subscriber::start().await;
    let (n, batch) = (2_000, 200);
    let f = fixture(&sub, n).await;
    let broker = (f.target)().config.id.clone();

    // The third batch's cursor cannot be stored: the channel fails for good.
    let failing = redrives().with_fault(RedriveFault(Arc::new(|completed| {
        if completed == 2 {
            Err(ChannelError::Internal(
                "injected: cursor store fails".into(),
            ))
        } else {
            Ok(())
        }
    })));
    failing.start((f.target)(), spec(batch, 8)).await.unwrap();
    let first = failing.wait(&broker).await.unwrap();
    assert_eq!(first.state, RedriveState::Failed, "{first:?}");
    assert!(
        first.error.as_deref().unwrap().contains("injected"),
        "{first:?}"
    );
    assert_eq!(first.position, 2 * batch as u64, "cursor after two batches");
    assert_eq!(first.sent, 3 * batch as u64, "three batches were sent");
    assert_eq!(
        dead_letter::cursor(f.dead_letters.as_ref()).await.unwrap(),
        2 * batch as u64
    );
    assert_eq!(sub.received_on("/t").len(), 3 * batch);

    let second = redrives();
    second.start((f.target)(), spec(batch, 8)).await.unwrap();
    let report = second.wait(&broker).await.unwrap();
    assert_eq!(report.state, RedriveState::Done, "{report:?}");
    assert_eq!(report.sent, (n - 2 * batch) as u64);
    assert_eq!(report.pending, Some(0));

    let got = ids(&sub);
    assert_eq!(got.len(), n, "every entry delivered");
    let twice: Vec<usize> = {
        let mut v: Vec<usize> = got
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(id, c)| {
                assert_eq!(*c, 2, "{id} sent {c} times");
                id[1..].parse().unwrap()
            })
            .collect();
        v.sort_unstable();
        v
    };
    // Exactly the batch in flight when the first redrive stopped, nothing else.
    assert_eq!(twice, (2 * batch..3 * batch).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_redrive_keeps_its_cursor_past_what_was_sent() {
    let sub = Subscriber::start().await;
    sub.set_delay(Duration::from_millis(20));
    let n = 400;
    let f = fixture(&sub, n).await;
    let broker = (f.target)().config.id.clone();
    let r = redrives();
    r.start((f.target)(), spec(100, 4)).await.unwrap();
    // A second start while it runs is refused, with the running job's progress.
    match r.start((f.target)(), spec(100, 4)).await {
        Err(StartError::Running(s)) => assert_eq!(s.state, RedriveState::Running),
        other => panic!("expected Running, got {other:?}"),
    }
    sub.wait_until("50 redriven", Duration::from_secs(10), |got| {
        got.len() >= 50
    })
    .await;
    let cancelled = r.cancel(&broker).unwrap();
    assert_eq!(cancelled.state, RedriveState::Running);
    let report = r.wait(&broker).await.unwrap();
    assert_eq!(report.state, RedriveState::Cancelled, "{report:?}");
    assert!(report.position < n as u64, "stopped early: {report:?}");
    assert_eq!(
        report.position, report.sent,
        "the cursor passed exactly what was sent"
    );
    assert!(r.cancel(&broker).is_none(), "nothing left to cancel");

    r.start((f.target)(), spec(100, 4)).await.unwrap();
    let done = r.wait(&broker).await.unwrap();
    assert_eq!(done.state, RedriveState::Done, "{done:?}");
    let got = ids(&sub);
    assert_eq!(got.len(), n);
    let twice = got.values().filter(|c| **c > 1).count();
    assert!(
        twice <= 4,
        "at most the deliveries in flight are repeated, got {twice}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_again_and_other_triggers_move_to_the_end_and_limits_are_named() {
    let sub = Subscriber::start().await;
    sub.respond_with(|_, _| {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Default::default(),
            b"still down".to_vec(),
        )
    });
    let f = fixture(&sub, 10).await;
    let mut other = entry(99, 16);
    other.set(ERROR_TRIGGER, AttrValue::String("gone".into()));
    f.dead_letters.append_own(&[other]).await.unwrap();
    let broker = (f.target)().config.id.clone();
    let r = redrives();
    for (bad, limit) in [(spec(0, 1), "batch=0"), (spec(1, 1000), "concurrency=1000")] {
        match r.start((f.target)(), bad).await {
            Err(StartError::Invalid(msg)) => assert!(msg.contains(limit), "{msg}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
    r.start((f.target)(), spec(4, 2)).await.unwrap();
    let report = r.wait(&broker).await.unwrap();
    assert_eq!(report.state, RedriveState::Done, "{report:?}");
    assert_eq!(report.sent, 0);
    assert_eq!(report.failed_again, 10);
    assert_eq!(report.trigger_gone, 1);
    assert_eq!(report.pending, Some(11), "all of them wait again");
    let page = dead_letter::page(f.dead_letters.as_ref(), None, 100)
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 11);
    let again = page.entries[0].entry.as_ref().unwrap();
    assert_eq!(again.get_str(ERROR_CODE), Some("503"));
    assert_eq!(again.get_str(ERROR_TRIGGER), Some("t"));
    assert!(matches!(
        dead_letter::page(f.dead_letters.as_ref(), None, 1001).await,
        Err(dead_letter::ListError::Limit(1001))
    ));
}

/// Peak resident memory of a process since the last reset (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Resets a process's peak resident memory to its current one.
fn reset_peak_rss(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

async fn append_entries(log: &dyn BrokerLog, n: usize, data_bytes: usize) {
    let mut i = 0;
    while i < n {
        let chunk: Vec<Event> = (i..(i + 500).min(n))
            .map(|j| entry(j, data_bytes))
            .collect();
        log.append_own(&chunk).await.unwrap();
        i += chunk.len();
    }
}

/// `triggerfish dlq redrive` against a server whose dead-letter log holds many entries
/// (`TRIGGERFISH_REDRIVE_ENTRIES`, default 10,000, of 4 KiB each): progress on stderr,
/// the final report on stdout, every entry delivered once, and the server's peak
/// memory during the redrive far below the log's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_redrives_a_large_log_with_progress_in_bounded_memory() {
    let n: usize = std::env::var("TRIGGERFISH_REDRIVE_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let data_bytes = 4096;
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), yaml(&sub)).unwrap();
    let data = dir.path().join("data");
    // Fill the dead-letter log before the server opens it.
    {
        let log = EmbeddedLog::open(&data, EmbeddedOptions::default()).unwrap();
        let id = broker::config::BrokerId::new("default", "default");
        let dl = log.open(&id, LogKind::DeadLetters).await.unwrap();
        append_entries(dl.as_ref(), n, data_bytes).await;
    }
    let storage = [format!("--data-dir={}", data.display())];
    let server = procs::Proc::start("serve", dir.path(), &storage, &[]).await;
    let admin = format!("http://{}", server.admin.unwrap());
    let pid = server.pid();
    eventually(
        "the backlog gauge shows every entry",
        Duration::from_secs(30),
        || async {
            metric(
                server.addr,
                r#"triggerfish_dead_letter_log_entries{broker="default/default"}"#,
            )
            .await
                == n as f64
        },
    )
    .await;
    let before_kib = peak_rss_kib(pid);
    reset_peak_rss(pid);
    let base_kib = peak_rss_kib(pid);

    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_triggerfish"))
            .args(["dlq", "redrive", "--admin", &admin, "--batch", "500"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dlq redrive: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["state"], "done", "{report}");
    assert_eq!(report["sent"], n, "{report}");
    assert_eq!(report["pending"], 0, "{report}");
    let progress: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("redrive: "))
        .collect();
    assert!(
        progress
            .last()
            .unwrap()
            .starts_with(&format!("redrive: {n}/{n}")),
        "{stderr}"
    );
    let peak_kib = peak_rss_kib(pid);
    let log_kib = (n * data_bytes / 1024) as u64;
    eprintln!(
        "redrive of {n} entries ({log_kib} KiB of data) took {took:?}; server RSS {base_kib} KiB at the start, peak {peak_kib} KiB during it (peak before: {before_kib} KiB); {} progress lines",
        progress.len()
    );
    // One batch of 500 entries of 4 KiB is 2 MiB; the whole log is 40 MiB at the
    // default size. The old redrive held every entry (and a copy) at once.
    assert!(
        peak_kib < base_kib + 24 * 1024,
        "peak RSS {peak_kib} KiB during the redrive, {base_kib} KiB at its start"
    );
    let got = ids(&sub);
    assert_eq!(got.len(), n);
    assert!(got.values().all(|c| *c == 1), "each entry sent once");
    server.stop().await;
}

/// On NATS, two replicas serving the admin API: while one redrives a log, the other
/// is refused (the log's lease), and takes it once the first is done. An entry that
/// is not a CloudEvent (written by a foreign client) is reported with its offset,
/// never passed silently.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_one_redrive_per_log_across_replicas_and_undecodable_entries_are_reported() {
    use broker::channel::nats::{async_nats, stream_names, NatsLog, NatsOptions};
    let Some(url) = nats_url() else {
        return;
    };
    let sub = Subscriber::start().await;
    sub.set_delay(Duration::from_millis(20));
    let prefix = {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("rd-{}-{}", std::process::id(), nanos % 1_000_000_000)
    };
    let connect = || async {
        let mut o = NatsOptions::from_url(&url).unwrap();
        o.prefix = prefix.clone();
        // Test-sized streams: JetStream reserves each stream's max bytes.
        o.limits.max_bytes = Some(64 << 20);
        NatsLog::connect(o).await.unwrap()
    };
    let (a, b) = (connect().await, connect().await);
    let cfg = config(&yaml(&sub));
    let broker = cfg.broker("default", "default").unwrap().clone();
    async fn target_of(log: &NatsLog, broker: &broker::config::BrokerConfig) -> Target {
        Target {
            config: broker.clone(),
            events: log.open(&broker.id, LogKind::Events).await.unwrap(),
            dead_letters: log.open(&broker.id, LogKind::DeadLetters).await.unwrap(),
        }
    }
    let target = |log| target_of(log, &broker);
    let dl = target(&a).await.dead_letters;
    append_entries(dl.as_ref(), 100, 16).await;
    // A foreign client writes garbage to the dead-letter subject.
    let (_, subject) = stream_names(&prefix, &broker.id, LogKind::DeadLetters).unwrap();
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let ack = js
        .publish(subject, Bytes::from_static(b"not a cloudevent"))
        .await
        .unwrap()
        .await
        .unwrap();
    let more: Vec<Event> = (1000..1020).map(|i| entry(i, 16)).collect();
    dl.append_own(&more).await.unwrap();

    let (ra, rb) = (
        Redrives::new("replica-a", Metrics::shared(), CancellationToken::new()),
        Redrives::new("replica-b", Metrics::shared(), CancellationToken::new()),
    );
    ra.start(target(&a).await, spec(10, 2)).await.unwrap();
    match rb.start(target(&b).await, spec(10, 2)).await {
        Err(StartError::Elsewhere(id)) => assert_eq!(id, broker.id),
        other => panic!("expected Elsewhere, got {other:?}"),
    }
    let report = ra.wait(&broker.id).await.unwrap();
    assert_eq!(report.state, RedriveState::Done, "{report:?}");
    assert_eq!(report.sent, 120, "{report:?}");
    assert_eq!(report.undecodable, 1);
    assert_eq!(report.undecodable_entries.len(), 1);
    assert_eq!(
        report.undecodable_entries[0].0,
        ack.sequence - 1,
        "its offset"
    );
    assert_eq!(ids(&sub).len(), 120);

    // The lease is free again: the other replica redrives (nothing is pending).
    let again = rb.start(target(&b).await, spec(10, 2)).await.unwrap();
    assert_eq!(again.total(), 0, "{again:?}");
    let done = rb.wait(&broker.id).await.unwrap();
    assert_eq!(done.state, RedriveState::Done, "{done:?}");
    assert_eq!(ids(&sub).len(), 120, "nothing sent twice");
}
