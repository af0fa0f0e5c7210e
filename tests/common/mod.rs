//! Shared pieces of the end-to-end tests: a programmable subscriber that records what
//! it receives, an in-process Triggerfish on a free port, and polling with deadlines
//! (tests never sleep to wait for something).

#![allow(dead_code, clippy::unwrap_used)]

pub mod pki;
pub mod procs;
pub mod senders;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use tokio_util::sync::CancellationToken;
use triggerfish::app::{self, Running, ServerOptions};

/// One request a subscriber received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type Responder = Arc<dyn Fn(&Received, usize) -> (StatusCode, HeaderMap, Vec<u8>) + Send + Sync>;

struct SubState {
    received: Mutex<Vec<Received>>,
    /// Requests per path so far (the responder's `before`, without a scan of
    /// `received` per request: a test of 100,000 requests must stay linear).
    per_path: Mutex<HashMap<String, usize>>,
    notify: tokio::sync::Notify,
    responder: Mutex<Responder>,
    delay: Mutex<Duration>,
    /// Requests that have arrived (counted before the delay and the response).
    arrived: std::sync::atomic::AtomicUsize,
}

/// A subscriber on 127.0.0.1 that records every request; answers 200 unless told
/// otherwise. The responder sees the request and how many requests the same path got
/// before it.
#[derive(Clone)]
pub struct Subscriber {
    pub addr: SocketAddr,
    state: Arc<SubState>,
    shutdown: CancellationToken,
}

impl Subscriber {
    pub async fn start() -> Subscriber {
        let state = Arc::new(SubState {
            received: Mutex::new(Vec::new()),
            per_path: Mutex::default(),
            notify: tokio::sync::Notify::new(),
            responder: Mutex::new(Arc::new(|_, _| {
                (StatusCode::OK, HeaderMap::new(), Vec::new())
            })),
            delay: Mutex::new(Duration::ZERO),
            arrived: std::sync::atomic::AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .unwrap();
        });
        Subscriber {
            addr,
            state,
            shutdown,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn respond_with(
        &self,
        f: impl Fn(&Received, usize) -> (StatusCode, HeaderMap, Vec<u8>) + Send + Sync + 'static,
    ) {
        *self.state.responder.lock().unwrap() = Arc::new(f);
    }

    /// Requests that have arrived so far, including those still being answered.
    pub fn arrived(&self) -> usize {
        self.state.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Makes every response wait this long (a slow subscriber).
    pub fn set_delay(&self, d: Duration) {
        *self.state.delay.lock().unwrap() = d;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until `pred` holds over everything received, or panics at the deadline.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.state.notify.notified();
            {
                let got = self.state.received.lock().unwrap();
                if pred(&got) {
                    return got.clone();
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let n = self.state.received.lock().unwrap().len();
                panic!("timed out after {timeout:?} waiting for {what} ({n} requests received)");
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), notified).await;
        }
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

async fn handle(
    State(state): State<Arc<SubState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let r = Received {
        path: uri.path().to_owned(),
        headers,
        body,
        at: Instant::now(),
    };
    state
        .arrived
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let responder = state.responder.lock().unwrap().clone();
    let before = {
        let mut per_path = state.per_path.lock().unwrap();
        let n = per_path.entry(r.path.clone()).or_default();
        *n += 1;
        *n - 1
    };
    let (status, headers, body) = responder(&r, before);
    state.received.lock().unwrap().push(r);
    state.notify.notify_waiters();
    (status, headers, body)
}

/// Parses a config text.
pub fn config(yaml: &str) -> broker::config::Config {
    broker::config::parse_sources(&[(Path::new("test.yaml"), yaml)], &Default::default())
        .unwrap_or_else(|e| panic!("test config invalid: {e}"))
}

/// A broker `default/default` plus the given triggers (name, filter YAML or "", url).
pub fn broker_with_triggers(triggers: &[(&str, &str, String)]) -> String {
    let mut y = String::from(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default}\n",
    );
    for (name, filter, url) in triggers {
        y.push_str(&format!(
            "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: {name}}}\nspec:\n  broker: default\n{filter}  subscriber: {{uri: '{url}'}}\n  delivery: {{retry: 2, backoffDelay: PT0.05S}}\n"
        ));
    }
    y
}

/// Options for an in-process server on free ports.
pub fn server_options(yaml: &str, data_dir: &Path) -> ServerOptions {
    ServerOptions {
        config: config(yaml),
        config_path: None,
        load_options: Default::default(),
        watch_config: false,
        advertise_url: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        admin_auth: Default::default(),
        tls: None,
        admin_tls: None,
        storage: app::Storage::embedded(data_dir),
        role: app::Role::Both,
        ingress: Default::default(),
        oidc: None,
        dispatcher: dispatcher::DispatcherOptions {
            drain_timeout: Duration::from_secs(5),
            ..Default::default()
        },
    }
}

/// Starts Triggerfish in-process on a free port.
pub async fn start_server(yaml: &str, data_dir: &Path) -> Running {
    start_with(server_options(yaml, data_dir)).await
}

/// Starts Triggerfish in-process with these options.
pub async fn start_with(opts: ServerOptions) -> Running {
    app::start(opts, CancellationToken::new()).await.unwrap()
}

/// The Prometheus text a server exports at `/metrics`.
pub async fn metrics_text(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Reads one metric sample (exact series text before the value) from `/metrics`.
pub async fn metric(addr: SocketAddr, series: &str) -> f64 {
    metrics_text(addr)
        .await
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// The pending entries of `default/default`'s dead-letter log, as the admin API
/// lists them.
pub async fn dead_letters(admin: SocketAddr) -> Vec<serde_json::Value> {
    let listed: serde_json::Value =
        reqwest::get(format!("http://{admin}/admin/dlq/default/default"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    listed["entries"].as_array().unwrap().clone()
}

/// Polls `f` until it returns true or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Posts raw headers and body to a broker path; returns status, headers and body text.
/// Posts a binary-mode event of type `ty` to broker `default/default` and asserts
/// the 202.
pub async fn send_accepted(addr: SocketAddr, id: &str, ty: &str) {
    let (status, _, body) = post(addr, "/default/default", &binary_headers(id, ty), "").await;
    assert_eq!(status, 202, "{body}");
}

/// `POST /admin/v1/reload` on the admin API at `admin`: its JSON answer (200
/// asserted).
pub async fn admin_reload(admin: SocketAddr) -> serde_json::Value {
    let r = reqwest::Client::new()
        .post(format!("http://{admin}/admin/v1/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

pub async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, HashMap<String, String>, String) {
    let client = reqwest::Client::new();
    let mut req = client.post(format!("http://{addr}{path}")).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let hs = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    (status, hs, resp.text().await.unwrap())
}

/// Binary-mode headers of a minimal event with this id and type.
pub fn binary_headers<'a>(id: &'a str, ty: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", "/tests"),
        ("ce-type", ty),
    ]
}

/// A server the tests need, from `scripts/dev-services`' env file: its variable, or
/// `None` when its tests are explicitly skipped (`skip`=1). Never passes silently:
/// without either it fails, saying how to start the servers.
fn service(var: &str, skip: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var(skip).as_deref() == Ok("1") => {
            eprintln!("{skip}=1: {what} tests skipped");
            None
        }
        _ => panic!(
            "{var} is not set: run the tests through scripts/test (which starts the \
             servers they need), or `scripts/dev-services start && source \
             .dev-services/env`; set {skip}=1 to skip the {what} tests"
        ),
    }
}

/// The NATS server URL (`TRIGGERFISH_TEST_NATS_URL`; skip with `TRIGGERFISH_SKIP_NATS=1`).
pub fn nats_url() -> Option<String> {
    service("TRIGGERFISH_TEST_NATS_URL", "TRIGGERFISH_SKIP_NATS", "NATS")
}

/// The Kafka bootstrap server, `HOST:PORT` (`TRIGGERFISH_TEST_KAFKA_BOOTSTRAP`; skip
/// with `TRIGGERFISH_SKIP_KAFKA=1`).
pub fn kafka_bootstrap() -> Option<String> {
    service(
        "TRIGGERFISH_TEST_KAFKA_BOOTSTRAP",
        "TRIGGERFISH_SKIP_KAFKA",
        "Kafka",
    )
}

/// The tansu binary, for tests that run a Kafka-protocol broker of their own.
pub fn tansu_bin() -> Option<String> {
    service(
        "TRIGGERFISH_TEST_TANSU_BIN",
        "TRIGGERFISH_SKIP_KAFKA",
        "Kafka",
    )
}
