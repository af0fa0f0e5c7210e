//! Idle lanes park (hand their queue back to the shared reader, which then moves
//! their mark itself) and wake on their next match. Parking is where an event could
//! be lost: an event queued while the lane asks to park, a mark moved by the reader
//! past an event the lane still holds, a wake racing a config change. These tests
//! run many park and wake cycles (a 30 ms park delay) with matching events among many
//! that do not match, a restart in the middle, and a filter change while parked.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use triggerfish::app::Running;

const WAIT: Duration = Duration::from_secs(30);
const PARK_AFTER: Duration = Duration::from_millis(30);

fn yaml(sub: &Subscriber, rare_type: &str) -> String {
    let mut y =
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default}\n".to_owned();
    for (name, filter, annotations) in [
        (
            "rare",
            format!("  filter: {{attributes: {{type: {rare_type}}}}}\n"),
            "",
        ),
        (
            "ordered",
            format!("  filter: {{attributes: {{type: {rare_type}}}}}\n"),
            "kafka.eventing.knative.dev/delivery.order: ordered",
        ),
        ("all", String::new(), ""),
    ] {
        y.push_str(&format!(
            "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\n  annotations: {{{annotations}}}\nspec:\n  broker: default\n{filter}  subscriber: {{uri: '{}'}}\n",
            sub.url(&format!("/{name}"))
        ));
    }
    y
}

/// A server on `dir/data` with 2 partitions, its config in `dir/config.yaml`.
async fn start(yaml: &str, dir: &Path) -> Running {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut opts = server_options(yaml, &dir.join("data"));
    opts.config_path = Some(path);
    opts.storage = triggerfish::app::Storage::Embedded {
        data_dir: dir.join("data"),
        options: broker::channel::embedded::EmbeddedOptions {
            partitions: 2,
            ..Default::default()
        },
    };
    opts.dispatcher.lane_park_after = PARK_AFTER;
    start_with(opts).await
}

async fn send(addr: std::net::SocketAddr, id: &str, ty: &str, key: &str) {
    let mut h = binary_headers(id, ty);
    h.push(("ce-partitionkey", key));
    let (s, _, body) = post(addr, "/default/default", &h, "payload").await;
    assert_eq!(s, 202, "{body}");
}

/// How many times each id arrived at `path`.
fn counts(got: &[Received], path: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in got.iter().filter(|r| r.path == path) {
        *m.entry(r.header("ce-id").unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    m
}

/// Bursts of events (one in ten matches `rare`), each followed by a pause longer
/// than the park delay, so that the matching triggers park and wake again and again;
/// a restart half way. Every matching event arrives, and once each except those in
/// flight at the restart; the lanes were seen parked during the pauses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_lanes_wake_for_every_match_and_never_move_their_mark_past_one() {
    let sub = Subscriber::start().await;
    // Slow enough that events are still in flight when a burst ends.
    sub.set_delay(Duration::from_millis(5));
    let dir = tempfile::tempdir().unwrap();
    let config = yaml(&sub, "rare");
    let mut server = start(&config, dir.path()).await;
    let mut rare = Vec::new();
    let mut all = 0;
    let mut parked_seen = 0.0f64;
    for burst in 0..30 {
        if burst == 15 {
            // A restart with rare events of the last burst possibly in flight.
            server.shutdown();
            server.wait().await.unwrap();
            server = start(&config, dir.path()).await;
        }
        for i in 0..20 {
            let id = format!("b{burst}-{i}");
            let ty = if i % 10 == 3 { "rare" } else { "common" };
            if ty == "rare" {
                rare.push(id.clone());
            }
            send(server.addr, &id, ty, &format!("k{}", i % 3)).await;
            all += 1;
        }
        tokio::time::sleep(PARK_AFTER * 4).await;
        let parked = metric(
            server.addr,
            "triggerfish_dispatcher_parked_lanes{broker=\"default/default\"}",
        )
        .await;
        parked_seen = parked_seen.max(parked);
    }
    for path in ["/rare", "/ordered"] {
        sub.wait_until(path, WAIT, |got| {
            let c = counts(got, path);
            rare.iter().all(|id| c.contains_key(id))
        })
        .await;
    }
    sub.wait_until("/all", WAIT, |got| counts(got, "/all").len() >= all)
        .await;
    // Settled: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for path in ["/rare", "/ordered"] {
        let c = counts(&sub.received(), path);
        assert_eq!(c.len(), rare.len(), "{path}: only the rare events: {c:?}");
        let twice: Vec<_> = c.iter().filter(|(_, n)| **n > 1).collect();
        // At least once: only events of the burst before the restart may come twice.
        assert!(
            twice.iter().all(|(id, _)| id.starts_with("b14-")),
            "{path}: delivered twice outside the restart: {twice:?}"
        );
    }
    assert!(
        parked_seen >= 4.0,
        "the lanes of rare and ordered (2 partitions each) park when idle: at most {parked_seen} seen"
    );
    server.shutdown();
    server.wait().await.unwrap();
}

/// A filter change while the lanes are parked: events sent after the change are
/// judged by the new filter only, none is lost or delivered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_while_parked_applies_from_the_next_event() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&yaml(&sub, "a"), dir.path()).await;
    for i in 0..10 {
        send(server.addr, &format!("a{i}"), "a", "k").await;
        send(server.addr, &format!("b{i}"), "b", "k").await;
    }
    sub.wait_until("/rare", WAIT, |got| counts(got, "/rare").len() >= 10)
        .await;
    eventually("the lanes park", WAIT, || async {
        metric(
            server.addr,
            "triggerfish_dispatcher_parked_lanes{broker=\"default/default\"}",
        )
        .await
            >= 4.0
    })
    .await;
    std::fs::write(dir.path().join("config.yaml"), yaml(&sub, "b")).unwrap();
    let status = server.reloader.reload("test").await;
    assert_eq!(status.generation, 2, "{status:?}");
    for i in 10..20 {
        send(server.addr, &format!("a{i}"), "a", "k").await;
        send(server.addr, &format!("b{i}"), "b", "k").await;
    }
    sub.wait_until("/rare", WAIT, |got| counts(got, "/rare").len() >= 20)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for path in ["/rare", "/ordered"] {
        let c = counts(&sub.received(), path);
        let mut want: Vec<String> = (0..10).map(|i| format!("a{i}")).collect();
        want.extend((10..20).map(|i| format!("b{i}")));
        let mut got: Vec<String> = c.keys().cloned().collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{path}");
        assert!(c.values().all(|n| *n == 1), "{path}: {c:?}");
    }
    server.shutdown();
    server.wait().await.unwrap();
}
