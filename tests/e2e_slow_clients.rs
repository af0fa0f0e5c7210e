//! Slow and abusive clients against the ingress listener (issue 14): headers
//! trickled a byte a second, bodies over the limit, bodies that stall, idle
//! keep-alive connections and more connections than the limit. Each is closed or
//! answered by its limit, and a normal producer beside them is not slowed down.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(15);

fn options(dir: &std::path::Path, sub: &Subscriber) -> triggerfish::app::ServerOptions {
    let mut opts = server_options(&broker_with_triggers(&[("all", "", sub.url("/all"))]), dir);
    opts.ingress.server.header_read_timeout = Duration::from_secs(2);
    opts.ingress.server.idle_timeout = Duration::from_secs(2);
    opts.ingress.body_read_timeout = Duration::from_secs(1);
    opts
}

/// Reads an HTTP/1.1 response head (and what follows of it) until the connection
/// closes or `timeout` passes; returns it as text.
async fn read_response(stream: &mut TcpStream, timeout: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(timeout, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    // Head and a JSON body: enough once the body's closing brace came.
                    if out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"}") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_headers_are_cut_off_and_do_not_slow_a_producer() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(options(dir.path(), &sub)).await;
    let addr = server.addr;

    // 200 connections, each sending a request head one byte a second.
    let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut slow = Vec::new();
    for _ in 0..200 {
        let closed = closed.clone();
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let head = b"POST /default/default HTTP/1.1\r\nHost: x\r\nce-id: slow\r\n";
            let started = Instant::now();
            for b in head.iter().cycle() {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                // A closed connection shows as EOF on read.
                let mut probe = [0u8; 1];
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut probe)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    _ => {}
                }
                assert!(started.elapsed() < Duration::from_secs(20), "never closed");
            }
            closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            started.elapsed()
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A normal producer on one keep-alive connection: 1,000 events.
    let client = reqwest::Client::new();
    let mut latencies = Vec::with_capacity(1000);
    for i in 0..1000 {
        let id = format!("fast-{i}");
        let started = Instant::now();
        let resp = client
            .post(format!("http://{addr}/default/default"))
            .header("ce-specversion", "1.0")
            .header("ce-id", &id)
            .header("ce-source", "/tests")
            .header("ce-type", "fast")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let p50 = latencies[500];
    let p99 = latencies[990];
    eprintln!("producer beside 200 trickling connections: p50 {p50:?}, p99 {p99:?}");
    assert!(p99 < Duration::from_millis(250), "p99 {p99:?}");

    let mut lifetimes = Vec::new();
    for t in slow {
        lifetimes.push(t.await.unwrap());
    }
    lifetimes.sort();
    eprintln!(
        "trickling connections closed after {:?} .. {:?} (--header-read-timeout 2 s)",
        lifetimes[0],
        lifetimes[lifetimes.len() - 1]
    );
    assert_eq!(closed.load(std::sync::atomic::Ordering::Relaxed), 200);
    assert!(
        lifetimes[0] >= Duration::from_millis(1900),
        "{:?}",
        lifetimes[0]
    );
    assert!(
        lifetimes[199] < Duration::from_secs(6),
        "{:?}",
        lifetimes[199]
    );
    assert!(
        metric(
            addr,
            r#"triggerfish_ingress_connections_closed_total{reason="header_timeout"}"#
        )
        .await
            >= 200.0
    );
    sub.wait_until("the producer's events", WAIT, |r| r.len() >= 1000)
        .await;
    server.shutdown();
    server.wait().await.unwrap();
}

/// A 2 MiB body with `Content-Length` against a 1 MiB limit, 20 times on fresh
/// connections: the client reads a 413 naming the limit every time (the body is
/// read and discarded, not cut off with a reset), and the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_a_413_the_client_can_read() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(options(dir.path(), &sub)).await;
    let body = vec![b'x'; 2 << 20];
    for i in 0..20 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "POST /default/default HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-id: big-{i}\r\nce-source: /t\r\nce-type: big\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body)
            .await
            .unwrap_or_else(|e| panic!("round {i}: the server cut the body off: {e}"));
        let response = read_response(&mut s, Duration::from_secs(10)).await;
        assert!(
            response.starts_with("HTTP/1.1 413"),
            "round {i}: {response:?}"
        );
        assert!(response.contains("--max-body-bytes"), "{response}");
        assert!(response.contains("1048576"), "{response}");
        // Read to its end: the connection is kept and takes the next request.
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "round {i}");
    }
    // reqwest too sees the status, not an error.
    let (status, _, detail) = post(
        server.addr,
        "/default/default",
        &binary_headers("big-reqwest", "big"),
        body.clone(),
    )
    .await;
    assert_eq!(status, 413, "{detail}");
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_idle_connections_are_closed() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(options(dir.path(), &sub)).await;

    // Half a body, then nothing: 408 within the body deadline (1 s plus 1,000 bytes
    // at 64 KiB/s), and the connection closed.
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"POST /default/default HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-id: stall\r\nce-source: /t\r\nce-type: t\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'x'; 500]).await.unwrap();
    let started = Instant::now();
    let response = read_response(&mut s, Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response:?}");
    assert!(response.contains("--body-read-timeout"), "{response}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // An idle keep-alive connection: closed after --idle-timeout (2 s).
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let idle = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("closed by the idle timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "EOF");
    let took = idle.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        metric(
            server.addr,
            r#"triggerfish_ingress_connections_closed_total{reason="idle_timeout"}"#
        )
        .await
            >= 1.0
    );
    let rejected = metric(
        server.addr,
        r#"triggerfish_ingress_events_rejected_total{broker="default/default",reason="body_timeout"}"#,
    )
    .await;
    assert_eq!(rejected, 1.0);
    server.shutdown();
    server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_503_with_retry_after() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), &sub);
    opts.ingress.server.max_connections = 5;
    opts.ingress.server.idle_timeout = Duration::from_secs(30);
    let server = start_with(opts).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut extra, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response:?}");
    assert!(response.contains("retry-after: 1"), "{response}");
    assert!(response.contains("--max-connections"), "{response}");
    // One closes: a new connection is served again.
    drop(held.pop());
    eventually("a free connection slot", WAIT, || async {
        let Ok(mut s) = TcpStream::connect(server.addr).await else {
            return false;
        };
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        read_response(&mut s, Duration::from_secs(1))
            .await
            .starts_with("HTTP/1.1 200")
    })
    .await;
    drop(held);
    eventually("the refusal counted", WAIT, || async {
        metric(
            server.addr,
            r#"triggerfish_ingress_connections_closed_total{reason="over_limit"}"#,
        )
        .await
            >= 1.0
    })
    .await;
    server.shutdown();
    server.wait().await.unwrap();
}

/// `addr` answers `/readyz` with this status.
async fn ready_status(addr: SocketAddr) -> Option<u16> {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// SIGHUP no longer ends `serve`; SIGTERM turns readiness off first while the
/// ingress still accepts for `--shutdown-delay`, then the process drains and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_keeps_serving_and_shutdown_goes_in_order() {
    use common::procs::Proc;
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.yaml"),
        broker_with_triggers(&[("all", "", sub.url("/all"))]),
    )
    .unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let p = Proc::start(
        "serve",
        dir.path(),
        &["--data-dir", data],
        &["--shutdown-delay", "PT2S"],
    )
    .await;
    let kill = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &p.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    kill("-HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ready_status(p.addr).await,
        Some(200),
        "still serving after SIGHUP"
    );
    let (status, _, _) = post(
        p.addr,
        "/default/default",
        &binary_headers("after-hup", "t"),
        "x",
    )
    .await;
    assert_eq!(status, 202);

    kill("-TERM");
    eventually("readiness off", Duration::from_secs(2), || async {
        ready_status(p.addr).await == Some(503)
    })
    .await;
    // Still accepting during the delay.
    let (status, _, _) = post(
        p.addr,
        "/default/default",
        &binary_headers("during-delay", "t"),
        "x",
    )
    .await;
    assert_eq!(
        status, 202,
        "accepted while load balancers take the pod out"
    );
    sub.wait_until("both events", WAIT, |r| r.len() >= 2).await;
    let status = p.exited().await;
    assert!(status.success(), "drained and exited cleanly: {status}");
}

/// Admin API inputs are bounded and checked: page limits within 1..=1000,
/// offsets that do not parse or overflow, redrive batch and concurrency; each
/// refusal is a JSON 400 that says what was wrong, never a panic or a huge read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_inputs_are_bounded() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(options(dir.path(), &sub)).await;
    let admin = server.admin_addr.unwrap();
    let base = format!("http://{admin}/admin/dlq/default/default");
    let client = reqwest::Client::new();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let r = client.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (status, body)
        }
    };
    for (query, says) in [
        ("limit=0", "limit"),
        ("limit=1001", "1000"),
        ("limit=-1", "limit"),
        ("limit=99999999999999999999999", "limit"),
        ("from=-5", "from"),
        ("from=99999999999999999999999", "from"),
    ] {
        let (status, body) = get(format!("{base}?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{query}: {detail}");
    }
    // The largest offset is no overflow: an empty page at the end.
    let (status, body) = get(format!("{base}?from={}", u64::MAX)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entries"], serde_json::json!([]));
    let (status, body) = get(format!("{base}/99999999999999999999999")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("offset"),
        "{body}"
    );
    let (status, _) = get(format!("{base}/{}", u64::MAX)).await;
    assert_eq!(status, 404);
    for query in [
        "batch=0",
        "batch=10001",
        "concurrency=0",
        "concurrency=100000",
        "batch=x",
    ] {
        let r = client
            .post(format!("{base}/redrive?to=broker&{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{query}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["detail"].is_string(), "{query}: {body}");
    }
    server.shutdown();
    server.wait().await.unwrap();
}

/// Shutdown is bounded: a request still sending its body when the listener stops
/// gets `--shutdown-timeout`, then its connection is dropped (its producer got no
/// 202 and retries), and the server finishes stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_at_shutdown_are_bounded_by_the_shutdown_timeout() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), &sub);
    opts.ingress.body_read_timeout = Duration::from_secs(60);
    opts.ingress.server.shutdown_timeout = Duration::from_secs(1);
    let server = start_with(opts).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"POST /default/default HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-id: late\r\nce-source: /t\r\nce-type: t\r\nContent-Length: 1000\r\n\r\nxx")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    server.shutdown();
    let response = read_response(&mut s, Duration::from_secs(10)).await;
    let closed_after = started.elapsed();
    assert!(!response.contains("202"), "{response:?}");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .expect("the server stops")
        .unwrap();
    assert!(sub.received().is_empty());
}

/// Found by fuzzing: a structured event whose `datacontenttype` has a multi-byte
/// character where `+json` would start panicked while decoding; it is a 400 now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_type_that_panicked_the_decoder_is_a_400() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_with(options(dir.path(), &sub)).await;
    let body = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"x/܏lain","data":"d"}"#;
    let (status, _, detail) = post(
        server.addr,
        "/default/default",
        &[("content-type", "application/cloudevents+json")],
        body,
    )
    .await;
    assert_eq!(status, 400, "{detail}");
    assert!(detail.contains("datacontenttype"), "{detail}");
    server.shutdown();
    server.wait().await.unwrap();
}
