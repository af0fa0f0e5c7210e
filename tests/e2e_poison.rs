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

/// Sends a minimal binary-mode event and checks that it is accepted.
async fn accept(addr: std::net::SocketAddr, id: &str, ty: &str) {
    let (status, _, body) = post(addr, "/default/default", &binary_headers(id, ty), "x").await;
    assert_eq!(status, 202, "{body}");
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
        detail.contains("more than 64 attributes") && detail.contains("--max-attributes"),
        "{detail}"
    );
    // Decoding stops at the attribute past the limit (it took 2.1 s when every
    // name was looked up by a scan).
    assert!(took < Duration::from_millis(500), "refusing took {took:?}");

    // 1 MiB of short names (about 100,000): refused as fast as an event at the limit.
    let mut body = structured_with_extensions("widest", 0);
    body.pop();
    let mut i = 0;
    while body.len() < (1 << 20) - 16 {
        body.push_str(&format!(r#","{i:x}":"""#));
        i += 1;
    }
    body.push('}');
    let started = Instant::now();
    let (status, _, detail) = post(server.addr, "/default/default", &[STRUCTURED], body).await;
    let took = started.elapsed();
    assert_eq!(status, 413, "{detail}");
    assert!(took < Duration::from_millis(500), "refusing took {took:?}");
    // An event at the attribute limit with 1 MiB of data in all: accepted in
    // milliseconds.
    let mut body = structured_with_extensions("limit-and-data", 59);
    body.pop();
    body.push_str(&format!(
        r#","data":"{}"}}"#,
        "d".repeat((1 << 20) - body.len() - 20)
    ));
    assert!(body.len() <= 1 << 20);
    let started = Instant::now();
    let (status, _, detail) = post(server.addr, "/default/default", &[STRUCTURED], body).await;
    let took = started.elapsed();
    assert_eq!(status, 202, "{detail}");
    assert!(took < Duration::from_millis(500), "accepting took {took:?}");

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
    sub.wait_until("the event with 1 MiB of data", WAIT, |r| {
        r.iter()
            .any(|r| r.header("ce-id") == Some("limit-and-data"))
    })
    .await;
    let got = sub.received_on("/all");
    assert_eq!(got.len(), 2, "only the accepted events are delivered");
    let w59 = got
        .iter()
        .find(|r| r.header("ce-id") == Some("w59"))
        .unwrap();
    assert_eq!(w59.header("ce-x00058"), Some("v"));
    eventually("rejections counted by reason", WAIT, || async {
        let text = metrics_text(server.addr).await;
        text.contains(r#"reason="too_many_attributes"} 4"#)
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
        .open(
            &BrokerId::new("default", "default"),
            broker::channel::LogKind::Events,
        )
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
    accept(server.addr, id, "ordinary").await;
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
    accept(server.addr, "boom-1", "boom").await;
    for id in ["a1", "a2", "a3", "a4", "a5"] {
        accept(server.addr, id, "ordinary").await;
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
        accept(server.addr, id, "ordinary").await;
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
        accept(server.addr, id, "ordinary").await;
    }
    sub.wait_until("both events after the restart", WAIT, |r| r.len() == 5)
        .await;
    // Unordered delivery: compare as sets.
    let mut got = ids(&sub, "/all");
    got.sort();
    assert_eq!(got, ["c1", "c2", "c3", "d1", "d2"]);
    server.shutdown();
    server.wait().await.unwrap();
    let stored = std::fs::read_to_string(&file).unwrap();
    assert_eq!(stored, r#"{"offsets":[5]}"#);
}

/// Binary-mode reply headers (a 200 that claims to carry a CloudEvent).
fn reply_headers(id: &str) -> axum::http::HeaderMap {
    let mut h = axum::http::HeaderMap::new();
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", "/replier"),
        ("ce-type", "reply"),
    ] {
        h.insert(k, v.parse().unwrap());
    }
    h
}

/// Replies over the body limit, too large for the channel, or invalid: the original
/// is delivered once (never POSTed again to get a storable reply), and the event goes
/// to the dead-letter log with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_that_cannot_be_stored_are_dead_lettered_and_the_original_is_delivered_once() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_with_triggers(&[(
        "replier",
        "  filter: {attributes: {type: ask}}\n",
        sub.url("/replier"),
    )]);
    let mut opts = server_options(&yaml, dir.path());
    // Replies are read up to 64 KiB; the channel stores events up to 16 KiB.
    opts.dispatcher.max_reply_bytes = 64 << 10;
    #[allow(irrefutable_let_patterns)] // without the nats and kafka features
    if let triggerfish::app::Storage::Embedded { options, .. } = &mut opts.storage {
        options.max_event_bytes = 16 << 10;
    }
    let server = start_with(opts).await;
    sub.respond_with(|r, _| {
        let id = r.header("ce-id").unwrap_or("").to_owned();
        let status = axum::http::StatusCode::OK;
        match id.as_str() {
            // Over the reply body limit.
            "too-long" => (status, reply_headers("r1"), vec![b'x'; 100 << 10]),
            // Under the body limit, over what the channel stores.
            "too-large" => (status, reply_headers("r2"), vec![b'x'; 32 << 10]),
            // Claims to be a CloudEvent, has no id.
            _ => {
                let mut h = reply_headers("r3");
                h.remove("ce-id");
                (status, h, b"x".to_vec())
            }
        }
    });
    for id in ["too-long", "too-large", "invalid"] {
        accept(server.addr, id, "ask").await;
    }
    let admin = server.admin_addr.unwrap();
    eventually("three dead letters", WAIT, || async {
        metric(server.addr, DLQ).await == 3.0
    })
    .await;
    let mut entries = common::dead_letters(admin).await;
    entries.sort_by_key(|e| e["id"].as_str().unwrap().to_owned());
    let ids: Vec<&str> = entries.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["invalid", "too-large", "too-long"]);
    for e in &entries {
        assert_eq!(e["errorcode"], "200", "{e}");
        assert_eq!(e["trigger"], "replier", "{e}");
    }
    let reason = |offset: &serde_json::Value| {
        let offset = offset.as_u64().unwrap();
        async move {
            reqwest::get(format!("http://{admin}/admin/dlq/default/default/{offset}"))
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()["triggerfishreason"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let r = reason(&entries[0]["offset"]).await;
    assert!(r.contains("not a valid CloudEvent"), "{r}");
    let r = reason(&entries[1]["offset"]).await;
    assert!(
        r.contains("can never be stored") && r.contains("channel limit"),
        "{r}"
    );
    let r = reason(&entries[2]["offset"]).await;
    assert!(r.contains("exceeds the limit of 65536 bytes"), "{r}");
    // Each original was POSTed once: no retry to get another reply.
    assert_eq!(sub.received_on("/replier").len(), 3);
    assert_eq!(
        metric(server.addr, r#"triggerfish_dispatcher_replies_total{broker="default/default",trigger="replier",outcome="dead_lettered"}"#).await,
        3.0
    );
    assert_eq!(
        metric(server.addr, r#"triggerfish_dispatcher_deliveries_total{broker="default/default",trigger="replier",outcome="delivered"}"#).await,
        3.0
    );
    server.shutdown();
    server.wait().await.unwrap();
}

/// A subscriber that answers every request with a binary-mode reply whose body is cut
/// short: `Content-Length: 100` and 5 bytes, then the connection closes.
async fn cut_short_subscriber() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                // Read the whole request (headers, then Content-Length bytes).
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let resp =
                    "HTTP/1.1 200 OK\r\nce-specversion: 1.0\r\nce-id: r\r\nce-source: /r\r\n\
                            ce-type: reply\r\ncontent-length: 100\r\n\r\nshort";
                let _ = conn.write_all(resp.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (addr, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_cut_short_is_dead_lettered_not_stored_without_its_data() {
    let (addr, requests) = cut_short_subscriber().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_with_triggers(&[("cut", "", format!("http://{addr}/cut"))]);
    let server = start_server(&yaml, dir.path()).await;
    accept(server.addr, "q1", "ask").await;
    eventually("the dead letter", WAIT, || async {
        metric(server.addr, DLQ).await == 1.0
    })
    .await;
    let entries = common::dead_letters(server.admin_addr.unwrap()).await;
    assert_eq!(entries[0]["id"], "q1");
    assert_eq!(entries[0]["errorcode"], "200");
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "POSTed once"
    );
    // Nothing was stored as a reply: the broker holds only the original.
    assert_eq!(
        metric(server.addr, r#"triggerfish_dispatcher_replies_total{broker="default/default",trigger="cut",outcome="stored"}"#).await,
        0.0
    );
    server.shutdown();
    server.wait().await.unwrap();
}

/// A corrupt byte in a sealed segment (a record header's length, found by recovery
/// at startup): the unreadable records are one malformed entry in the dead-letter
/// log, and every readable event around them is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_sealed_segment_is_dead_lettered_once_and_the_rest_delivered() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_with_triggers(&[("all", "", sub.url("/all"))]);
    let small = EmbeddedOptions {
        segment_bytes: 16 << 10,
        ..EmbeddedOptions::default()
    };
    let options = |dir: &Path| {
        let mut opts = server_options(&yaml, dir);
        opts.storage = triggerfish::app::Storage::Embedded {
            data_dir: dir.to_path_buf(),
            options: small.clone(),
        };
        opts
    };
    let server = start_with(options(dir.path())).await;
    server.shutdown();
    server.wait().await.unwrap();
    {
        let log = EmbeddedLog::open(dir.path(), small.clone()).unwrap();
        let broker = log
            .open(
                &BrokerId::new("default", "default"),
                broker::channel::LogKind::Events,
            )
            .await
            .unwrap();
        for i in 0..60 {
            let mut e = event(&format!("s{i}"), "ordinary");
            e.set_data(
                broker::event::DataKind::Binary,
                Some(vec![b'x'; 1000].into()),
            );
            broker.append(&[e]).await.unwrap();
        }
    }
    // The length field of the 5th record of the first (sealed) segment.
    let pdir = dir.path().join("brokers/default/default/p0");
    let mut files: Vec<_> = std::fs::read_dir(&pdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let mut pos = 0;
    for _ in 0..5 {
        pos += 24 + u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
    }
    bytes[pos + 3] = 0x7f;
    std::fs::write(&files[0], &bytes).unwrap();

    let server = start_with(options(dir.path())).await;
    eventually("the damaged range in the dead-letter log", WAIT, || async {
        metric(server.addr, DLQ).await == 1.0
    })
    .await;
    let entries = common::dead_letters(server.admin_addr.unwrap()).await;
    assert_eq!(entries[0]["type"], "dev.triggerfish.malformed");
    assert_eq!(entries[0]["id"], "0-5");
    // The reason names the range: the rest of the first segment.
    let reason = base64::engine::general_purpose::STANDARD
        .decode(entries[0]["errordata"].as_str().unwrap())
        .unwrap();
    let reason = String::from_utf8(reason).unwrap();
    let last: usize = reason
        .split("records 5..")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no range in {reason:?}"));
    assert!(last > 5 && last < 59, "{reason}");
    let expected: Vec<String> = (0..60)
        .filter(|i| !(5..=last).contains(i))
        .map(|i| format!("s{i}"))
        .collect();
    sub.wait_until("every readable event", WAIT, |r| r.len() == expected.len())
        .await;
    let mut got = ids(&sub, "/all");
    got.sort_by_key(|id| id[1..].parse::<usize>().unwrap());
    assert_eq!(got, expected);
    server.shutdown();
    server.wait().await.unwrap();
}
