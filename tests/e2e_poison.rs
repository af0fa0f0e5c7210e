//! One hostile or unlucky event never stops a trigger (issue 12): the ingress refuses
//! what cannot be stored and delivered, naming the limit, and an event that is in the
//! log anyway (written before the limits, or by another producer) or whose delivery
//! panics ends in the broker's dead-letter log while the events after it are
//! delivered, also across a restart.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use broker::channel::embedded::{EmbeddedLog, EmbeddedOptions};
use broker::channel::EventLog;
use broker::config::BrokerId;
use broker::event::Event;
use common::*;

const WAIT: Duration = Duration::from_secs(15);
const DLQ: &str = r#"triggerfish_dead_letter_log_entries{broker="default/default"}"#;

fn event(id: &str, ty: &str) -> Event {
    let mut e = Event::new();
    e.set_str("specversion", "1.0");
    e.set_str("id", id);
    e.set_str("source", "/tests");
    e.set_str("type", ty);
    e
}

/// A structured-mode body with `n` extension attributes (30,000 of them is about
/// 390 KB, under the 1 MiB body limit).
fn structured_with_extensions(id: &str, n: usize) -> String {
    let mut body = format!(r#"{{"specversion":"1.0","id":"{id}","source":"/tests","type":"wide""#);
    for i in 0..n {
        body.push_str(&format!(r#","x{i:05}":"v""#));
    }
    body.push('}');
    body
}

const STRUCTURED: (&str, &str) = ("content-type", "application/cloudevents+json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_refuses_events_over_the_attribute_limits_naming_the_limit() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(
        &broker_with_triggers(&[("all", "", sub.url("/all"))]),
        dir.path(),
    )
    .await;

    // 30,000 extensions: refused before anything is stored, and quickly.
    let body = structured_with_extensions("wide", 30_000);
    assert!(
        body.len() > 300_000 && body.len() < 1 << 20,
        "{}",
        body.len()
    );
    let started = Instant::now();
    let (status, _, detail) = post(server.addr, "/default/default", &[STRUCTURED], body).await;
    let took = started.elapsed();
    assert_eq!(status, 413, "{detail}");
    assert!(
        detail.contains("30005 attributes") && detail.contains("--max-attributes"),
        "{detail}"
    );
    assert!(took < Duration::from_secs(2), "refusing took {took:?}");

    // At the limit (60 extensions + 4 required + knativearrivaltime = 65): refused;
    // one fewer: accepted and delivered with every attribute.
    let (status, _, detail) = post(
        server.addr,
        "/default/default",
        &[STRUCTURED],
        structured_with_extensions("w61", 60),
    )
    .await;
    assert_eq!(status, 413, "{detail}");
    let (status, _, detail) = post(
        server.addr,
        "/default/default",
        &[STRUCTURED],
        structured_with_extensions("w59", 59),
    )
    .await;
    assert_eq!(status, 202, "{detail}");

    // Binary mode: the attributes are header fields, so 431.
    let names: Vec<String> = (0..70).map(|i| format!("ce-x{i}")).collect();
    let mut headers = binary_headers("b70", "wide");
    headers.extend(names.iter().map(|n| (n.as_str(), "v")));
    let (status, _, detail) = post(server.addr, "/default/default", &headers, "x").await;
    assert_eq!(status, 431, "{detail}");
    assert!(detail.contains("--max-attributes"), "{detail}");

    // A long name and too many bytes of attributes.
    let long_name = format!("ce-{}", "n".repeat(65));
    let mut headers = binary_headers("long-name", "wide");
    headers.push((long_name.as_str(), "v"));
    let (status, _, detail) = post(server.addr, "/default/default", &headers, "x").await;
    assert_eq!(status, 431, "{detail}");
    assert!(detail.contains("--max-attribute-name-bytes"), "{detail}");
    let big = "v".repeat(8 << 10);
    let body = format!(
        r#"{{"specversion":"1.0","id":"big","source":"/tests","type":"wide","big":"{big}"}}"#
    );
    let (status, _, detail) = post(server.addr, "/default/default", &[STRUCTURED], body).await;
    assert_eq!(status, 413, "{detail}");
    assert!(detail.contains("--max-attribute-bytes"), "{detail}");

    sub.wait_until("the event at the limit", WAIT, |r| {
        r.iter().any(|r| r.header("ce-id") == Some("w59"))
    })
    .await;
    let got = sub.received_on("/all");
    assert_eq!(got.len(), 1, "only the accepted event is delivered");
    assert_eq!(got[0].header("ce-x00058"), Some("v"));
    eventually("rejections counted by reason", WAIT, || async {
        let text = metrics_text(server.addr).await;
        text.contains(r#"reason="too_many_attributes"} 3"#)
            && text.contains(r#"reason="attribute_name_too_long"} 1"#)
            && text.contains(r#"reason="attributes_too_large"} 1"#)
    })
    .await;
    server.shutdown();
    server.wait().await.unwrap();
}

/// Stores `events` in the embedded log of `default/default` under `dir` directly, as
/// an older version or a bug would have: the ingress's limits do not apply.
async fn store_directly(dir: &Path, events: &[Event]) {
    let log = EmbeddedLog::open(dir, EmbeddedOptions::default()).unwrap();
    let broker = log
        .open(&BrokerId::new("default", "default"))
        .await
        .unwrap();
    broker.append(events).await.unwrap();
}

fn ids(sub: &Subscriber, path: &str) -> Vec<String> {
    sub.received_on(path)
        .iter()
        .filter_map(|r| r.header("ce-id").map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_wide_to_send_is_dead_lettered_and_the_trigger_goes_on() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_with_triggers(&[("all", "", sub.url("/all"))]);
    // The first start gives the trigger its checkpoint at the (empty) log's end.
    let server = start_server(&yaml, dir.path()).await;
    server.shutdown();
    server.wait().await.unwrap();

    // The event the ingress used to accept (30,000 extensions), then five ordinary ones.
    let wide = structured_with_extensions("poison", 30_000);
    let poison = broker::event::json::parse_event(wide.as_bytes()).unwrap();
    assert_eq!(poison.attribute_count(), 30_004);
    let mut events = vec![poison];
    events.extend((0..5).map(|i| event(&format!("after-{i}"), "ordinary")));
    store_directly(dir.path(), &events).await;

    let server = start_server(&yaml, dir.path()).await;
    sub.wait_until("the five events after the poison one", WAIT, |r| {
        r.iter()
            .filter(|r| r.header("ce-type") == Some("ordinary"))
            .count()
            == 5
    })
    .await;
    eventually("the poison event in the dead-letter log", WAIT, || async {
        metric(server.addr, DLQ).await == 1.0
    })
    .await;
    assert_eq!(
        metric(server.addr, r#"triggerfish_dispatcher_lane_failures_total{broker="default/default",trigger="all",kind="undeliverable"}"#).await,
        1.0
    );
    assert!(!ids(&sub, "/all").contains(&"poison".to_owned()));
    server.shutdown();
    server.wait().await.unwrap();

    // After a restart the trigger is past it: new events arrive, nothing is stuck,
    // and the poison event is not dead-lettered twice.
    delivers_after_restart(&yaml, dir.path(), &sub, "later").await;
}

/// Restarts the server on `dir`, sends an event `id` and checks that it arrives and
/// that the dead-letter log still holds exactly one entry.
async fn delivers_after_restart(yaml: &str, dir: &Path, sub: &Subscriber, id: &str) {
    let server = start_server(yaml, dir).await;
    let (status, _, _) = post(
        server.addr,
        "/default/default",
        &binary_headers(id, "ordinary"),
        "x",
    )
    .await;
    assert_eq!(status, 202);
    sub.wait_until("the event sent after the restart", WAIT, |r| {
        r.iter().any(|r| r.header("ce-id") == Some(id))
    })
    .await;
    assert_eq!(metric(server.addr, DLQ).await, 1.0);
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_delivering_dead_letters_the_event_and_the_lane_goes_on() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_with_triggers(&[("all", "", sub.url("/all"))]);
    let mut opts = server_options(&yaml, dir.path());
    opts.dispatcher.fault = Some(dispatcher::settle::FaultHook(Arc::new(|e: &Event| {
        if e.ty() == "boom" {
            panic!("test fault: cannot encode event {}", e.id());
        }
    })));
    let server = start_with(opts).await;
    let send = |id: &'static str, ty: &'static str| async move {
        let (status, _, body) = post(
            server.addr,
            "/default/default",
            &binary_headers(id, ty),
            "x",
        )
        .await;
        assert_eq!(status, 202, "{body}");
    };
    send("boom-1", "boom").await;
    for id in ["a1", "a2", "a3", "a4", "a5"] {
        send(id, "ordinary").await;
    }
    sub.wait_until("the five events after the panicking one", WAIT, |r| {
        r.iter()
            .filter(|r| r.header("ce-type") == Some("ordinary"))
            .count()
            == 5
    })
    .await;
    eventually(
        "the panicking event in the dead-letter log",
        WAIT,
        || async { metric(server.addr, DLQ).await == 1.0 },
    )
    .await;
    assert_eq!(
        metric(server.addr, r#"triggerfish_dispatcher_lane_failures_total{broker="default/default",trigger="all",kind="panic"}"#).await,
        1.0
    );
    // The entry says why.
    let admin = server.admin_addr.unwrap().to_string();
    let listed = reqwest::get(format!("http://{admin}/admin/dlq/default/default"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let data = listed["entries"][0]["errordata"].as_str().unwrap();
    let reason = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    assert_eq!(
        String::from_utf8(reason).unwrap(),
        "panic while delivering: test fault: cannot encode event boom-1"
    );
    server.shutdown();
    server.wait().await.unwrap();

    // Across a restart (without the fault): the checkpoint is past the event, and the
    // trigger delivers new ones.
    delivers_after_restart(&yaml, dir.path(), &sub, "b1").await;
    assert!(!ids(&sub, "/all").contains(&"boom-1".to_owned()));
}

/// After a power loss with `--fsync interval` or `never`, a checkpoint file can reach
/// the disk while the log's tail does not. Such a checkpoint is moved back to the
/// recovered log end: the offsets after it go to new events, which are delivered
/// (left ahead, the checkpoint would skip them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_ahead_of_the_log_end_is_clamped_at_startup() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_with_triggers(&[("all", "", sub.url("/all"))]);
    let server = start_server(&yaml, dir.path()).await;
    for id in ["c1", "c2", "c3"] {
        let (status, _, _) = post(
            server.addr,
            "/default/default",
            &binary_headers(id, "ordinary"),
            "x",
        )
        .await;
        assert_eq!(status, 202);
    }
    sub.wait_until("three events", WAIT, |r| r.len() == 3).await;
    server.shutdown();
    server.wait().await.unwrap();

    // What the disk holds after the power loss: the log ends at 3, the checkpoint
    // says 1000.
    let file = dir
        .path()
        .join("brokers/default/default/checkpoints/all.json");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert_eq!(stored, r#"{"offsets":[3]}"#);
    std::fs::write(&file, r#"{"offsets":[1000]}"#).unwrap();

    let server = start_server(&yaml, dir.path()).await;
    for id in ["d1", "d2"] {
        let (status, _, _) = post(
            server.addr,
            "/default/default",
            &binary_headers(id, "ordinary"),
            "x",
        )
        .await;
        assert_eq!(status, 202);
    }
    sub.wait_until("both events after the restart", WAIT, |r| r.len() == 5)
        .await;
    assert_eq!(ids(&sub, "/all"), ["c1", "c2", "c3", "d1", "d2"]);
    server.shutdown();
    server.wait().await.unwrap();
    let stored = std::fs::read_to_string(&file).unwrap();
    assert_eq!(stored, r#"{"offsets":[5]}"#);
}
