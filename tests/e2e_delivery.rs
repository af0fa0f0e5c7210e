//! Delivery semantics end to end, with programmable subscribers: retries and their
//! spacing, dead-letter sinks and the broker's dead-letter log with redrive, reply
//! loops stopped by the TTL, per-key order under failures, isolation between triggers,
//! and a restart in the middle of retries.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use base64::Engine;
use common::*;

const WAIT: Duration = Duration::from_secs(20);

fn broker_yaml() -> String {
    "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default}\n".to_owned()
}

fn trigger(name: &str, spec_extra: &str, annotations: &str) -> String {
    format!(
        "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\n  annotations: {{{annotations}}}\nspec:\n  broker: default\n{spec_extra}"
    )
}

async fn send(addr: std::net::SocketAddr, id: &str, ty: &str, extra: &[(&str, &str)]) {
    let mut h = binary_headers(id, ty);
    h.extend_from_slice(extra);
    let (s, _, body) = post(addr, "/default/default", &h, "payload").await;
    assert_eq!(s, 202, "{body}");
}

/// Makes `sub` answer `code` until the returned flag is set, then 200.
fn fail_until_healthy(
    sub: &Subscriber,
    code: u16,
) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = healthy.clone();
    sub.respond_with(move |_, _| {
        if h.load(std::sync::atomic::Ordering::SeqCst) {
            status(200)
        } else {
            status(code)
        }
    });
    healthy
}

fn status(code: u16) -> (StatusCode, HeaderMap, Vec<u8>) {
    (
        StatusCode::from_u16(code).unwrap(),
        HeaderMap::new(),
        Vec::new(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_configured_backoff_then_succeed() {
    let sub = Subscriber::start().await;
    // 503 twice, then 200.
    sub.respond_with(|_, before| if before < 2 { status(503) } else { status(200) });
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_yaml()
        + &trigger(
            "flaky",
            &format!("  subscriber: {{uri: '{}'}}\n  delivery: {{retry: 3, backoffPolicy: linear, backoffDelay: PT0.2S}}\n", sub.url("/flaky")),
            "",
        );
    let server = start_server(&yaml, dir.path()).await;
    send(server.addr, "r1", "t", &[]).await;
    let got = sub
        .wait_until("three attempts", WAIT, |r| r.len() >= 3)
        .await;
    let gap1 = got[1].at - got[0].at;
    let gap2 = got[2].at - got[1].at;
    // Linear: 0.2 s before the first retry, 0.4 s before the second.
    assert!(
        gap1 >= Duration::from_millis(200) && gap1 < Duration::from_millis(1200),
        "{gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(400) && gap2 < Duration::from_millis(1400),
        "{gap2:?}"
    );
    eprintln!("retry spacing: {gap1:?}, {gap2:?} (configured 200ms, 400ms)");
    eventually("delivered counted", WAIT, || async {
        metric(server.addr, r#"triggerfish_dispatcher_deliveries_total{broker="default/default",trigger="flaky",outcome="delivered"}"#).await == 1.0
    })
    .await;
    assert_eq!(
        metric(
            server.addr,
            r#"triggerfish_dispatcher_retries_total{broker="default/default",trigger="flaky"}"#
        )
        .await,
        2.0
    );
    assert_eq!(sub.received().len(), 3, "no attempt after the success");
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_goes_straight_to_the_dead_letter_sink_with_the_error_extensions() {
    let sub = Subscriber::start().await;
    sub.respond_with(|r, _| {
        if r.path == "/reject" {
            (
                StatusCode::BAD_REQUEST,
                HeaderMap::new(),
                b"missing field 'order'".to_vec(),
            )
        } else {
            status(202)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_yaml()
        + &trigger(
            "strict",
            &format!(
                "  subscriber: {{uri: '{}'}}\n  delivery: {{retry: 5, backoffDelay: PT0.1S, deadLetterSink: {{uri: '{}'}}}}\n",
                sub.url("/reject"),
                sub.url("/dls")
            ),
            "",
        );
    let server = start_server(&yaml, dir.path()).await;
    send(server.addr, "d1", "t", &[("ce-myext", "kept")]).await;
    let got = sub
        .wait_until("the dead letter", WAIT, |r| {
            r.iter().any(|x| x.path == "/dls")
        })
        .await;
    assert_eq!(
        got.iter().filter(|r| r.path == "/reject").count(),
        1,
        "400 is not retried"
    );
    let dl = got.iter().find(|r| r.path == "/dls").unwrap();
    assert_eq!(dl.header("ce-id"), Some("d1"));
    assert_eq!(dl.header("ce-myext"), Some("kept"));
    assert_eq!(
        dl.header("ce-knativeerrordest"),
        Some(sub.url("/reject").as_str())
    );
    assert_eq!(dl.header("ce-knativeerrorcode"), Some("400"));
    let data = base64::engine::general_purpose::STANDARD
        .decode(dl.header("ce-knativeerrordata").unwrap())
        .unwrap();
    assert_eq!(data, b"missing field 'order'");
    assert_eq!(dl.body.as_ref(), b"payload");
    eventually("dead_lettered counted", WAIT, || async {
        metric(server.addr, r#"triggerfish_dispatcher_deliveries_total{broker="default/default",trigger="strict",outcome="dead_lettered"}"#).await == 1.0
    })
    .await;
    server.shutdown();
    server.wait().await.unwrap();
}

/// Runs `triggerfish dlq ARGS` against the admin API and parses its JSON output.
async fn dlq_cli(admin: &str, args: &[&str]) -> serde_json::Value {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_triggerfish"));
    cmd.arg("dlq")
        .args(args)
        .args(["--admin", admin, "--broker", "default/default"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "dlq {args:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_ends_in_the_dead_letter_log_and_redrive_delivers_later() {
    let sub = Subscriber::start().await;
    let healthy = fail_until_healthy(&sub, 500);
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_yaml()
        + &trigger(
            "down",
            &format!(
                "  subscriber: {{uri: '{}'}}\n  delivery: {{retry: 1, backoffDelay: PT0.01S, deadLetterSink: {{uri: '{}'}}}}\n",
                sub.url("/down"),
                sub.url("/dls-down")
            ),
            "",
        );
    let server = start_server(&yaml, dir.path()).await;
    let admin = format!("http://{}", server.admin_addr.unwrap());
    for i in 0..3 {
        send(server.addr, &format!("q{i}"), "t", &[]).await;
    }
    eventually("three entries in the dead-letter log", WAIT, || async {
        metric(
            server.addr,
            r#"triggerfish_dead_letter_log_entries{broker="default/default"}"#,
        )
        .await
            == 3.0
    })
    .await;
    // 2 attempts to the subscriber and 2 to the sink per event.
    assert_eq!(sub.received_on("/down").len(), 6);
    assert_eq!(sub.received_on("/dls-down").len(), 6);

    let listed = dlq_cli(&admin, &["list"]).await;
    assert_eq!(listed["pending"], 3);
    let first = &listed["entries"][0];
    assert_eq!(first["trigger"], "down");
    assert_eq!(first["errorcode"], "500");
    assert_eq!(first["errordest"], sub.url("/down"));
    let offset = first["offset"].as_u64().unwrap().to_string();
    let shown = dlq_cli(&admin, &["show", &offset]).await;
    assert_eq!(shown["specversion"], "1.0");
    assert_eq!(shown["triggerfishtrigger"], "down");

    // The subscriber recovers; redrive sends every entry to it, without the error
    // extensions, and empties the log.
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    let result = dlq_cli(&admin, &["redrive"]).await;
    assert_eq!(result["sent"], 3, "{result}");
    assert_eq!(result["state"], "done", "{result}");
    assert_eq!(result["pending"], 0, "{result}");
    let got = sub.received_on("/down");
    let redriven: Vec<_> = got.iter().skip(6).collect();
    assert_eq!(redriven.len(), 3);
    for r in redriven {
        assert!(r.header("ce-knativeerrordest").is_none());
        assert!(r.header("ce-triggerfishtrigger").is_none());
    }
    assert_eq!(
        metric(
            server.addr,
            r#"triggerfish_dead_letter_log_entries{broker="default/default"}"#
        )
        .await,
        0.0
    );
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_loop_stops_at_the_ttl() {
    let sub = Subscriber::start().await;
    // Every delivery is answered with a new event of the same type: a loop.
    sub.respond_with(|_, before| {
        let mut h = HeaderMap::new();
        h.insert("ce-specversion", HeaderValue::from_static("1.0"));
        h.insert(
            "ce-id",
            HeaderValue::from_str(&format!("reply-{before}")).unwrap(),
        );
        h.insert("ce-source", HeaderValue::from_static("/looper"));
        h.insert("ce-type", HeaderValue::from_static("loop"));
        (StatusCode::OK, h, b"again".to_vec())
    });
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_yaml()
        + &trigger(
            "looper",
            &format!(
                "  filter: {{attributes: {{type: loop}}}}\n  subscriber: {{uri: '{}'}}\n",
                sub.url("/loop")
            ),
            "",
        );
    let mut opts = server_options(&yaml, dir.path());
    opts.dispatcher.max_ttl = 5;
    let server = start_with(opts).await;
    send(server.addr, "origin", "loop", &[]).await;
    eventually("the reply dropped for its TTL", WAIT, || async {
        metric(server.addr, r#"triggerfish_dispatcher_replies_total{broker="default/default",trigger="looper",outcome="dropped_ttl"}"#).await == 1.0
    })
    .await;
    // The original (TTL 5 implied) and the replies with TTL 4, 3, 2, 1.
    let got = sub.received();
    assert_eq!(
        got.len(),
        5,
        "{:?}",
        got.iter().map(|r| r.header("ce-id")).collect::<Vec<_>>()
    );
    let ttls: Vec<_> = got
        .iter()
        .map(|r| r.header("ce-knativebrokerttl").unwrap_or("-").to_owned())
        .collect();
    assert_eq!(ttls, ["-", "4", "3", "2", "1"]);
    assert_eq!(
        metric(server.addr, r#"triggerfish_dispatcher_replies_total{broker="default/default",trigger="looper",outcome="stored"}"#).await,
        4.0
    );
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_mode_keeps_per_key_order_under_injected_failures() {
    let sub = Subscriber::start().await;
    // Every third request fails with 503, whatever the key.
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = n.clone();
    sub.respond_with(move |_, _| {
        if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 3 == 2 {
            status(503)
        } else {
            status(200)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_yaml()
        + &trigger(
            "ordered",
            &format!(
                "  subscriber: {{uri: '{}'}}\n  delivery: {{retry: 10, backoffDelay: PT0.01S}}\n",
                sub.url("/ordered")
            ),
            "kafka.eventing.knative.dev/delivery.order: ordered",
        );
    let server = start_server(&yaml, dir.path()).await;
    let keys = ["alpha", "beta", "gamma", "delta"];
    const PER_KEY: usize = 25;
    let mut tasks = Vec::new();
    for key in keys {
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            for seq in 0..PER_KEY {
                let seq_s = seq.to_string();
                send(
                    addr,
                    &format!("{key}-{seq}"),
                    "t",
                    &[("ce-partitionkey", key), ("ce-seq", &seq_s)],
                )
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = sub
        .wait_until("every event delivered", WAIT, |r| {
            let ok: std::collections::HashSet<_> =
                r.iter().filter_map(|x| x.header("ce-id")).collect();
            ok.len() == keys.len() * PER_KEY
        })
        .await;
    let mut per_key: HashMap<&str, Vec<usize>> = HashMap::new();
    for r in &got {
        per_key
            .entry(r.header("ce-partitionkey").unwrap())
            .or_default()
            .push(r.header("ce-seq").unwrap().parse().unwrap());
    }
    let mut retried = 0;
    for key in keys {
        let seqs = &per_key[key];
        // Attempts of one key are never interleaved: the sequence only stays (retry)
        // or moves to the next event.
        for w in seqs.windows(2) {
            assert!(
                w[1] == w[0] || w[1] == w[0] + 1,
                "key {key}: attempt of {} after {}: {seqs:?}",
                w[1],
                w[0]
            );
            retried += usize::from(w[1] == w[0]);
        }
        assert_eq!(*seqs.last().unwrap(), PER_KEY - 1);
    }
    assert!(retried > 0, "failures were injected");
    eprintln!(
        "ordered: {} attempts for {} events, {retried} retries, order kept per key",
        got.len(),
        keys.len() * PER_KEY
    );
    server.shutdown();
    server.wait().await.unwrap();
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Sends `n` events at `rate` per second and returns the delivery latency of each at
/// the healthy subscriber path.
async fn latencies(
    server: &triggerfish::app::Running,
    sub: &Subscriber,
    prefix: &str,
    n: usize,
    rate: u64,
) -> Vec<Duration> {
    let mut sent = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    for i in 0..n {
        tick.tick().await;
        let id = format!("{prefix}-{i}");
        sent.insert(id.clone(), Instant::now());
        send(server.addr, &id, "t", &[]).await;
    }
    let got = sub
        .wait_until("healthy deliveries", WAIT, |r| {
            r.iter()
                .filter(|x| {
                    x.path == "/healthy"
                        && x.header("ce-id").is_some_and(|id| id.starts_with(prefix))
                })
                .count()
                >= n
        })
        .await;
    got.iter()
        .filter(|r| r.path == "/healthy")
        .filter_map(|r| sent.get(r.header("ce-id")?).map(|t| r.at - *t))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_subscriber_leaves_another_triggers_latency_unchanged() {
    let sub = Subscriber::start().await;
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = failing.clone();
    sub.respond_with(move |r, _| {
        if r.path == "/sick" && f.load(std::sync::atomic::Ordering::SeqCst) {
            status(503)
        } else {
            status(200)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_yaml()
        + &trigger(
            "healthy",
            &format!("  subscriber: {{uri: '{}'}}\n", sub.url("/healthy")),
            "",
        )
        + &trigger(
            "sick",
            &format!(
                "  subscriber: {{uri: '{}'}}\n  delivery: {{retry: 10, backoffDelay: PT0.2S}}\n",
                sub.url("/sick")
            ),
            "",
        );
    let server = start_server(&yaml, dir.path()).await;
    let mut base = latencies(&server, &sub, "base", 200, 100).await;
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let phase = Instant::now();
    // 30 s of a subscriber answering 503 while events keep flowing at 100/s.
    let mut during = latencies(&server, &sub, "during", 3000, 100).await;
    let sick_attempts = sub.received_on("/sick").len();
    let (b50, b99) = (percentile(&mut base, 0.5), percentile(&mut base, 0.99));
    let (d50, d99) = (percentile(&mut during, 0.5), percentile(&mut during, 0.99));
    eprintln!(
        "isolation: healthy trigger p50/p99 {b50:?}/{b99:?} before, {d50:?}/{d99:?} during {:?} of 503s on the other trigger ({sick_attempts} failing attempts)",
        phase.elapsed()
    );
    assert!(phase.elapsed() >= Duration::from_secs(29));
    // Each 503'd event is retried with 0.2 s..102 s backoff: if the sick trigger held
    // the healthy one back, its latency would grow by seconds.
    assert!(
        d99 < Duration::from_millis(500),
        "healthy p99 {d99:?} while the other trigger fails"
    );
    assert!(
        sick_attempts >= 500,
        "the sick trigger kept trying ({sick_attempts})"
    );
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_retries_loses_nothing() {
    let sub = Subscriber::start().await;
    let healthy = fail_until_healthy(&sub, 503);
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_yaml()
        + &trigger(
            "patient",
            &format!("  subscriber: {{uri: '{}'}}\n  delivery: {{retry: 50, backoffPolicy: linear, backoffDelay: PT0.05S}}\n", sub.url("/p")),
            "",
        );
    let mut opts = server_options(&yaml, dir.path());
    opts.dispatcher.drain_timeout = Duration::from_millis(200);
    let server = start_with(opts.clone()).await;
    for i in 0..20 {
        send(server.addr, &format!("m{i}"), "t", &[]).await;
    }
    // Every event has been tried at least twice: all are mid-retry.
    sub.wait_until("two attempts each", WAIT, |r| {
        let mut c: HashMap<&str, usize> = HashMap::new();
        for x in r {
            *c.entry(x.header("ce-id").unwrap()).or_default() += 1;
        }
        c.len() == 20 && c.values().all(|&n| n >= 2)
    })
    .await;
    server.shutdown();
    server.wait().await.unwrap();
    let before = sub.received().len();

    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    let server = start_with(opts).await;
    let got = sub
        .wait_until("every event delivered after restart", WAIT, |r| {
            r[before.min(r.len())..]
                .iter()
                .filter_map(|x| x.header("ce-id"))
                .collect::<std::collections::HashSet<_>>()
                .len()
                == 20
        })
        .await;
    assert!(got.len() >= before + 20);
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_json_delivers_structured_mode() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_yaml()
        + &trigger(
            "structured",
            &format!(
                "  subscriber: {{uri: '{}'}}\n  delivery: {{format: json}}\n",
                sub.url("/s")
            ),
            "",
        );
    let server = start_server(&yaml, dir.path()).await;
    send(
        server.addr,
        "j1",
        "t",
        &[("ce-ext", "v"), ("content-type", "application/json")],
    )
    .await;
    let got = sub
        .wait_until("the delivery", WAIT, |r| !r.is_empty())
        .await;
    assert_eq!(
        got[0].header("content-type"),
        Some("application/cloudevents+json")
    );
    assert!(
        got[0].header("ce-id").is_none(),
        "no ce- headers in structured mode"
    );
    let v: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(v["id"], "j1");
    assert_eq!(v["ext"], "v");
    assert_eq!(
        v["data_base64"],
        base64::engine::general_purpose::STANDARD.encode("payload")
    );
    server.shutdown();
    server.wait().await.unwrap();
}
