//! Retention never deletes an event a trigger has not received (issue 12, item 3):
//! a subscriber down while more than `--retention-bytes` is written gets every event
//! answered 202 once it is back, producers are held with 503 and `Retry-After`
//! meanwhile (the response, a metric and the log name the trigger), and with
//! `--retention-delete-undelivered` every event deleted unread is counted for the
//! trigger that missed it.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use broker::channel::embedded::EmbeddedOptions;
use common::*;
use triggerfish::app;

const WAIT: Duration = Duration::from_secs(30);
const SEGMENT: u64 = 16 << 10;
const RETENTION: u64 = 64 << 10;

/// A subscriber that answers 503 while `down` is set.
async fn flaky_subscriber() -> (Subscriber, Arc<AtomicBool>) {
    let sub = Subscriber::start().await;
    let down = Arc::new(AtomicBool::new(true));
    let d = down.clone();
    sub.respond_with(move |r, _| {
        let status = if r.path == "/slow" && d.load(Ordering::SeqCst) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        (status, HeaderMap::new(), Vec::new())
    });
    (sub, down)
}

/// Triggers `slow` (the flaky path, retried for long, one event at a time in order)
/// and `fast`.
fn config(sub: &Subscriber) -> String {
    format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {{name: default}}\n\
---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\n\
metadata: {{name: slow, annotations: {{kafka.eventing.knative.dev/delivery.order: ordered}}}}\n\
spec:\n  broker: default\n  subscriber: {{uri: '{}'}}\n  delivery: {{retry: 10000, backoffPolicy: linear, backoffDelay: PT0.02S}}\n\
---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: fast}}\n\
spec:\n  broker: default\n  subscriber: {{uri: '{}'}}\n",
        sub.url("/slow"),
        sub.url("/fast")
    )
}

fn options(yaml: &str, dir: &Path, delete_undelivered: bool) -> app::ServerOptions {
    let mut opts = server_options(yaml, dir);
    opts.storage = app::Storage::Embedded {
        data_dir: dir.to_path_buf(),
        options: EmbeddedOptions {
            segment_bytes: SEGMENT,
            retention_bytes: Some(RETENTION),
            delete_undelivered,
            ..EmbeddedOptions::default()
        },
    };
    // A short queue, so that the slow lane leaves most events in the log.
    opts.dispatcher.lane_queue = 4;
    opts
}

/// A binary-mode event with a 1 KiB body, all with one partition key (so `slow`
/// takes them one at a time).
async fn send(
    addr: std::net::SocketAddr,
    id: &str,
) -> (u16, std::collections::HashMap<String, String>, String) {
    let mut headers = binary_headers(id, "retained");
    headers.push(("ce-partitionkey", "k"));
    post(addr, "/default/default", &headers, vec![b'x'; 1024]).await
}

/// The distinct ids received on `path` (deliveries may repeat: at least once).
fn unique(received: &[Received], path: &str) -> HashSet<String> {
    received
        .iter()
        .filter(|r| r.path == path)
        .filter_map(|r| r.header("ce-id").map(str::to_owned))
        .collect()
}

fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("brokers/default/default/p0"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_down_past_retention_bytes_gets_every_accepted_event_when_back() {
    let (sub, down) = flaky_subscriber().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(options(&config(&sub), dir.path(), false)).await;

    // Write until the partition is held: far more than --retention-bytes is offered.
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    let mut last_refusal = String::new();
    for i in 0..400 {
        let id = format!("e{i}");
        let (status, headers, body) = send(server.addr, &id).await;
        match status {
            202 => accepted.push(id),
            503 => {
                assert_eq!(headers.get("retry-after").map(String::as_str), Some("1"));
                assert!(
                    body.contains("retention-bytes=65536") && body.contains("has not yet received"),
                    "the 503 names the limit and the trigger: {body}"
                );
                last_refusal = body;
                refused.push(id);
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // 400 KiB offered; about --retention-bytes taken (it is reached when a segment
    // rolls, so at most one segment early or late).
    assert!(
        accepted.len() as u64 * 1024 > RETENTION - SEGMENT,
        "the limit was reached before it should be: {} accepted",
        accepted.len()
    );
    assert!(!refused.is_empty(), "producers were held at the limit");
    assert!(
        segments(dir.path()).contains(&"00000000000000000000.seg".to_owned()),
        "nothing deleted while slow is behind"
    );
    // Once fast's delivered checkpoint is stored (every 250 ms) slow alone holds it.
    assert!(last_refusal.contains("trigger slow "), "{last_refusal}");
    let blocked = |t: &'static str| {
        let addr = server.addr;
        async move {
            let series = format!(
                r#"triggerfish_ingress_retention_blocked_total{{broker="default/default",trigger="{t}"}}"#
            );
            metric(addr, &series).await
        }
    };
    let (slow, fast) = (blocked("slow").await, blocked("fast").await);
    assert!(
        slow > 0.0,
        "the metric names the trigger that holds the log"
    );
    assert_eq!(slow + fast, refused.len() as f64);
    let rejected = metric(
        server.addr,
        r#"triggerfish_ingress_events_rejected_total{broker="default/default",reason="retention_full"}"#,
    )
    .await;
    assert_eq!(rejected, refused.len() as f64);
    // The fast trigger was never held back by the slow one.
    let fast_ids: HashSet<String> = accepted.iter().cloned().collect();
    sub.wait_until("fast has every accepted event", WAIT, |r| {
        unique(r, "/fast") == fast_ids
    })
    .await;

    // The subscriber is back: every accepted event arrives, and the producer's
    // retries of the refused ones are taken.
    down.store(false, Ordering::SeqCst);
    for id in &refused {
        let mut tries = 0;
        loop {
            let (status, _, body) = send(server.addr, id).await;
            if status == 202 {
                break;
            }
            assert_eq!(status, 503, "{body}");
            tries += 1;
            assert!(
                tries < 300,
                "still refused after the subscriber came back: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let all: HashSet<String> = accepted.iter().chain(&refused).cloned().collect();
    sub.wait_until("slow has every accepted event", WAIT, |r| {
        unique(r, "/slow") == all
    })
    .await;
    let skipped = metrics_text(server.addr).await;
    assert!(
        !skipped.contains("triggerfish_dispatcher_events_skipped_total{"),
        "{skipped}"
    );
    // Delivered, the old segments go.
    eventually("delivered segments deleted", WAIT, || async {
        !segments(dir.path()).contains(&"00000000000000000000.seg".to_owned())
    })
    .await;
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_delete_undelivered_every_event_deleted_unread_is_counted_for_its_trigger() {
    let (sub, down) = flaky_subscriber().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(options(&config(&sub), dir.path(), true)).await;
    let mut accepted = Vec::new();
    for i in 0..400 {
        let id = format!("e{i}");
        let (status, _, body) = send(server.addr, &id).await;
        assert_eq!(
            status, 202,
            "producers never wait with --retention-delete-undelivered: {body}"
        );
        accepted.push(id);
    }
    let all: HashSet<String> = accepted.iter().cloned().collect();
    sub.wait_until("fast has every event", WAIT, |r| unique(r, "/fast") == all)
        .await;
    assert!(
        !segments(dir.path()).contains(&"00000000000000000000.seg".to_owned()),
        "retention deleted what slow had not received"
    );
    down.store(false, Ordering::SeqCst);
    let slow =
        r#"triggerfish_dispatcher_events_skipped_total{broker="default/default",trigger="slow"}"#;
    // Every event is either delivered to slow or counted as skipped for it: none
    // vanishes unaccounted.
    eventually(
        "slow's events delivered or counted as skipped",
        WAIT,
        || async {
            let skipped = metric(server.addr, slow).await as usize;
            skipped > 0 && unique(&sub.received(), "/slow").len() + skipped == accepted.len()
        },
    )
    .await;
    let text = metrics_text(server.addr).await;
    assert!(
        !text.contains(r#"triggerfish_dispatcher_events_skipped_total{broker="default/default",trigger="fast"}"#),
        "fast missed nothing: {text}"
    );
    server.shutdown();
    server.wait().await.unwrap();
}
