//! Transport encryption, delivery side: which CAs HTTPS deliveries trust, with real
//! cryptography (CAs and server certificates made here with rcgen, TLS servers on
//! rustls in front of recording subscribers).
//!
//! A subscriber whose certificate a test CA signed is not trusted by default: the
//! delivery fails its handshake and the event is dead-lettered, never delivered.
//! With the CA in the subscriber's `CACerts`, or in `--ca-bundle`
//! (`DispatcherOptions::ca_bundle`), it is delivered; a dead-letter sink's own
//! `CACerts` let it receive dead letters over HTTPS. A reload that adds `CACerts`
//! to a trigger is applied, and a redrive trusts them too.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::pki::Ca;
use common::Subscriber;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// A recording subscriber behind HTTPS: a TLS server (certificate signed by `ca`)
/// that passes each connection on to a plain [`Subscriber`].
struct HttpsSubscriber {
    sub: Subscriber,
    addr: SocketAddr,
    /// Handshakes that failed (the client refused the certificate).
    failed_handshakes: Arc<AtomicUsize>,
}

impl HttpsSubscriber {
    async fn start(ca: &Ca) -> HttpsSubscriber {
        let sub = Subscriber::start().await;
        let backend = sub.addr;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(ca.server_config()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let failed_handshakes = Arc::new(AtomicUsize::new(0));
        let failed = failed_handshakes.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, failed) = (acceptor.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(t) => t,
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    let mut plain = tokio::net::TcpStream::connect(backend).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        HttpsSubscriber {
            sub,
            addr,
            failed_handshakes,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }

    fn got(&self, path: &str, id: &str) -> bool {
        self.sub
            .received_on(path)
            .iter()
            .any(|r| r.header("ce-id") == Some(id))
    }
}

/// A YAML (flow) string holding `pem`.
fn quoted(pem: &str) -> String {
    serde_json::to_string(pem).unwrap()
}

/// A trigger of broker `default` taking events of type `ty`; `extra` goes into
/// its `subscriber` (`CACerts`), `delivery` is its delivery (no retries).
fn trigger(name: &str, ty: &str, url: &str, extra: &str, delivery: &str) -> String {
    format!(
        "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: {name}}}
spec:\n  broker: default\n  filter: {{attributes: {{type: {ty}}}}}
  subscriber: {{uri: '{url}'{extra}}}\n  delivery: {{retry: 0{delivery}}}\n"
    )
}

const BROKER: &str =
    "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default}\n";

/// Waits until the broker's dead-letter log holds event `id`; returns its entry.
async fn dead_lettered(admin: SocketAddr, id: &str) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(e) = common::dead_letters(admin)
            .await
            .into_iter()
            .find(|e| e["id"] == id)
        {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never reached the dead-letter log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last delivery error of a trigger, as the admin API shows it.
async fn last_error(admin: SocketAddr, trigger: &str) -> String {
    let v: Value = reqwest::get(format!("http://{admin}/admin/v1/triggers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let t = v["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == trigger)
        .unwrap_or_else(|| panic!("no trigger {trigger} in {v}"));
    t["lastDeliveryError"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// (1) No `CACerts`: the handshake fails and the event goes to the dead-letter log.
/// (2) The CA in the subscriber's `CACerts`: delivered.
/// (4) A sink over HTTPS with its own `CACerts` receives the dead letter; without
/// them, the sink's handshake fails too and the event goes to the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_certs_of_subscribers_and_dead_letter_sinks_are_trusted_for_them_only() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, sink_ca) = (Ca::new("subscriber CA"), Ca::new("sink CA"));
    let subscriber = HttpsSubscriber::start(&ca).await;
    let sink = HttpsSubscriber::start(&sink_ca).await;
    let with = |pem: &str| format!(", CACerts: {}", quoted(pem));
    let sink_with_ca = format!(
        ", deadLetterSink: {{uri: '{}'{}}}",
        sink.url("/dls"),
        with(&sink_ca.pem())
    );
    let sink_without_ca = format!(", deadLetterSink: {{uri: '{}'}}", sink.url("/dls"));
    let yaml = [
        BROKER.to_owned(),
        trigger(
            "untrusted",
            "untrusted",
            &subscriber.url("/untrusted"),
            "",
            "",
        ),
        trigger(
            "trusted",
            "trusted",
            &subscriber.url("/trusted"),
            &with(&ca.pem()),
            "",
        ),
        // The sink's CA is not the subscriber's: the subscriber stays untrusted.
        trigger(
            "to-sink",
            "sink",
            &subscriber.url("/to-sink"),
            "",
            &sink_with_ca,
        ),
        trigger(
            "to-untrusted-sink",
            "sink2",
            &subscriber.url("/to-sink2"),
            "",
            &sink_without_ca,
        ),
    ]
    .concat();
    let server = common::start_server(&yaml, &dir.path().join("data")).await;
    let admin = server.admin_addr.unwrap();

    common::send_accepted(server.addr, "u1", "untrusted").await;
    common::send_accepted(server.addr, "t1", "trusted").await;
    common::send_accepted(server.addr, "s1", "sink").await;
    common::send_accepted(server.addr, "s2", "sink2").await;

    // (2)
    subscriber
        .sub
        .wait_until("the trusted delivery", WAIT, |r| {
            r.iter()
                .any(|r| r.path == "/trusted" && r.header("ce-id") == Some("t1"))
        })
        .await;
    // (4) The dead letter, with the error extensions naming the subscriber.
    let got = sink
        .sub
        .wait_until("the dead letter at the sink", WAIT, |r| {
            r.iter()
                .any(|r| r.path == "/dls" && r.header("ce-id") == Some("s1"))
        })
        .await;
    let dead = got
        .iter()
        .find(|r| r.header("ce-id") == Some("s1"))
        .unwrap();
    assert_eq!(
        dead.header("ce-knativeerrordest"),
        Some(subscriber.url("/to-sink").as_str())
    );
    // (1) Final (no retries): the entry is in the log, and the subscriber never got it.
    let entry = dead_lettered(admin, "u1").await;
    assert_eq!(entry["trigger"], "untrusted");
    assert_eq!(entry["errordest"], subscriber.url("/untrusted"));
    assert_eq!(entry["errorcode"], Value::Null, "no HTTP status: {entry}");
    let error = last_error(admin, "untrusted").await;
    assert!(error.contains("certificate"), "{error}");
    // The sink without CACerts is refused as well: s2 ends in the log.
    let entry = dead_lettered(admin, "s2").await;
    assert_eq!(entry["trigger"], "to-untrusted-sink");
    for (path, id) in [
        ("/untrusted", "u1"),
        ("/to-sink", "s1"),
        ("/to-sink2", "s2"),
    ] {
        assert!(!subscriber.got(path, id), "{id} was delivered to {path}");
    }
    assert!(
        !sink.got("/dls", "s2"),
        "s2 reached the sink without its CACerts"
    );
    assert!(!subscriber.got("/trusted", "u1") && !subscriber.got("/untrusted", "t1"));
    // The refusals were the client's, in the TLS handshake: u1, s1 and s2 at the
    // subscriber, s2 at the sink (the servers may see them a moment later).
    common::eventually("the failed handshakes", WAIT, || async {
        subscriber.failed_handshakes.load(Ordering::SeqCst) >= 3
            && sink.failed_handshakes.load(Ordering::SeqCst) >= 1
    })
    .await;

    server.shutdown();
    server.wait().await.unwrap();
}

/// (3) The CA in `--ca-bundle`: delivered without `CACerts`; another CA is still
/// not trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_bundle_is_trusted_for_every_destination() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new("bundle CA"), Ca::new("other CA"));
    let subscriber = HttpsSubscriber::start(&ca).await;
    let stranger = HttpsSubscriber::start(&other).await;
    let yaml = [
        BROKER.to_owned(),
        trigger("bundled", "bundled", &subscriber.url("/bundled"), "", ""),
        trigger("stranger", "stranger", &stranger.url("/stranger"), "", ""),
    ]
    .concat();
    let mut opts = common::server_options(&yaml, &dir.path().join("data"));
    opts.dispatcher.ca_bundle = Some(broker::config::CaCerts::parse(&ca.pem()).unwrap());
    let server = common::start_with(opts).await;
    let admin = server.admin_addr.unwrap();

    common::send_accepted(server.addr, "b1", "bundled").await;
    common::send_accepted(server.addr, "x1", "stranger").await;
    subscriber
        .sub
        .wait_until("the delivery trusted through the bundle", WAIT, |r| {
            r.iter()
                .any(|r| r.path == "/bundled" && r.header("ce-id") == Some("b1"))
        })
        .await;
    let entry = dead_lettered(admin, "x1").await;
    assert_eq!(entry["trigger"], "stranger");
    assert!(!stranger.got("/stranger", "x1"));
    common::eventually("the failed handshake", WAIT, || async {
        stranger.failed_handshakes.load(Ordering::SeqCst) >= 1
    })
    .await;

    server.shutdown();
    server.wait().await.unwrap();
}

/// A reload that adds `CACerts` to a trigger is applied (the next event is
/// delivered), and a redrive of what failed before trusts them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_certs_added_by_a_reload_are_used_by_deliveries_and_redrives() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("late CA");
    let subscriber = HttpsSubscriber::start(&ca).await;
    let url = subscriber.url("/late");
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        [BROKER, &trigger("late", "late", &url, "", "")].concat(),
    )
    .unwrap();
    let mut opts = common::server_options(
        &std::fs::read_to_string(&path).unwrap(),
        &dir.path().join("data"),
    );
    opts.config_path = Some(path.clone());
    let server = common::start_with(opts).await;
    let admin = server.admin_addr.unwrap();

    common::send_accepted(server.addr, "r1", "late").await;
    dead_lettered(admin, "r1").await;
    assert!(!subscriber.got("/late", "r1"));

    let with = format!(", CACerts: {}", quoted(&ca.pem()));
    std::fs::write(
        &path,
        [BROKER, &trigger("late", "late", &url, &with, "")].concat(),
    )
    .unwrap();
    let v = common::admin_reload(admin).await;
    assert_eq!(v["outcome"], "applied", "{v}");

    common::send_accepted(server.addr, "r2", "late").await;
    subscriber
        .sub
        .wait_until("the delivery after the reload", WAIT, |r| {
            r.iter()
                .any(|r| r.path == "/late" && r.header("ce-id") == Some("r2"))
        })
        .await;

    let resp = reqwest::Client::new()
        .post(format!(
            "http://{admin}/admin/dlq/default/default/redrive?to=subscriber"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    subscriber
        .sub
        .wait_until("the redriven event", WAIT, |r| {
            r.iter()
                .any(|r| r.path == "/late" && r.header("ce-id") == Some("r1"))
        })
        .await;

    server.shutdown();
    server.wait().await.unwrap();
}
