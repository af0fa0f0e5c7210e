//! The load generator: the 1 KiB binary-mode CloudEvent every figure sends, and
//! N concurrent tasks, each on its own keep-alive HTTP/1.1 connection, sending it in a
//! closed loop (as fast as responses come back) or paced (a fixed total rate spread
//! over the connections).
//!
//! The same code drives the ingress (producer requests) and, in the R4 baseline,
//! stands in for the dispatcher (delivery requests with the headers the dispatcher
//! sends). Each request carries a `ce-benchsent` extension: nanoseconds since the
//! harness's epoch at the moment the request was due, which the null subscriber turns
//! into an end-to-end latency (the due time, not the send time, so a late send caused
//! by a slow server counts against the server).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use broker::event::{http as binding, Event};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `type` of every event the harness sends (the one trigger that matches filters on it).
pub const EVENT_TYPE: &str = "dev.triggerfish.bench";
/// Size of the event data.
pub const DATA_BYTES: usize = 1024;
/// The extension carrying the due time of a request.
pub const SENT_HEADER: &str = "ce-benchsent";
/// The broker every figure uses.
pub const BROKER_PATH: &str = "/default/default";

const CE_ID: HeaderName = HeaderName::from_static("ce-id");
const CE_SENT: HeaderName = HeaderName::from_static(SENT_HEADER);

/// A request shape: fixed headers and body; `ce-id` and `ce-benchsent` vary.
#[derive(Debug, Clone)]
pub struct Template {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// TLS for the generator's connections: the connector (its roots trust the
/// server) and the name to verify.
#[derive(Clone)]
pub struct ClientTls {
    /// The rustls connector.
    pub connector: tokio_rustls::TlsConnector,
    /// The server name the certificate must carry.
    pub name: rustls::pki_types::ServerName<'static>,
}

/// The event as a producer sends it: binary mode, 1 KiB of data.
fn producer_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("ce-specversion", HeaderValue::from_static("1.0"));
    h.insert("ce-source", HeaderValue::from_static("/triggerfish/bench"));
    h.insert("ce-type", HeaderValue::from_static(EVENT_TYPE));
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h
}

fn data() -> Bytes {
    Bytes::from(
        (0..DATA_BYTES)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// The event as the ingress stores it (decoded from the producer request, with the
/// `knativearrivaltime` the ingress stamps), for pre-filling a log.
pub fn stored_event(id: &str) -> anyhow::Result<Event> {
    let mut h = producer_headers();
    h.insert(CE_ID, HeaderValue::from_str(id).context("event id")?);
    h.insert(CE_SENT, HeaderValue::from_static("0"));
    let mut e = binding::decode_binary(&h, data())
        .map_err(|e| anyhow::anyhow!("bench event is invalid: {e}"))?;
    e.set_str("knativearrivaltime", "2025-01-01T00:00:00.000000Z");
    Ok(e)
}

impl Template {
    /// What a producer POSTs to the ingress.
    pub fn ingress(addr: SocketAddr) -> Template {
        let mut headers = producer_headers();
        insert_host(&mut headers, addr);
        Template {
            path: BROKER_PATH.to_owned(),
            headers,
            body: data(),
        }
    }

    /// What the dispatcher POSTs to a subscriber for a stored event (binary mode,
    /// `Prefer: reply`), at `path` on `addr`.
    pub fn delivery(addr: SocketAddr, path: &str) -> anyhow::Result<Template> {
        let event = stored_event("template")?;
        let mut headers = HeaderMap::new();
        let body = binding::encode_binary(&event, &mut headers);
        headers.insert("prefer", HeaderValue::from_static("reply"));
        insert_host(&mut headers, addr);
        Ok(Template {
            path: path.to_owned(),
            headers,
            body,
        })
    }

    /// The same requests with one more header (`Authorization`, say).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Template {
        self.headers.insert(name, value);
        self
    }

    fn request(&self, id: u64, due_ns: u64) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut b = Request::builder().method(Method::POST).uri(&self.path);
        if let Some(h) = b.headers_mut() {
            h.clone_from(&self.headers);
            h.insert(CE_ID, HeaderValue::from(id));
            h.insert(CE_SENT, HeaderValue::from(due_ns));
            h.insert(CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        }
        b.body(Full::new(self.body.clone()))
            .context("building a request")
    }
}

fn insert_host(h: &mut HeaderMap, addr: SocketAddr) {
    if let Ok(v) = HeaderValue::from_str(&addr.to_string()) {
        h.insert(HOST, v);
    }
}

/// Counters shared by the generator's tasks.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests started (counted against [`Shape::limit`]).
    pub issued: AtomicU64,
    /// 2xx responses.
    pub ok: AtomicU64,
    /// Other responses and transport errors.
    pub failed: AtomicU64,
    /// While set, tasks record each response time.
    pub recording: AtomicBool,
}

/// A running generator.
pub struct Generator {
    /// Live counters.
    pub stats: Arc<Stats>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<Vec<u32>>>,
}

/// How a generator sends.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Concurrent connections, one task each.
    pub conns: usize,
    /// Total requests per second; `None` for a closed loop.
    pub rate: Option<f64>,
    /// Stop after this many requests in all (for profiling a fixed amount of work);
    /// `None` runs until [`Generator::finish`].
    pub limit: Option<u64>,
}

impl Generator {
    /// Starts `shape.conns` tasks sending `template` to `addr`; `epoch` is the origin
    /// of the `ce-benchsent` timestamps.
    pub fn start(addr: SocketAddr, template: Template, shape: Shape, epoch: Instant) -> Generator {
        Generator::start_with(addr, template, shape, epoch, None)
    }

    /// [`Generator::start`], over TLS when `tls` is given (each connection's
    /// handshake once, then keep-alive requests).
    pub fn start_with(
        addr: SocketAddr,
        template: Template,
        shape: Shape,
        epoch: Instant,
        tls: Option<ClientTls>,
    ) -> Generator {
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let template = Arc::new(template);
        let conns = shape.conns.max(1);
        let interval = shape
            .rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(conns as f64 / r));
        let tasks = (0..conns)
            .map(|i| {
                let task = Task {
                    addr,
                    template: template.clone(),
                    stats: stats.clone(),
                    stop: stop.clone(),
                    epoch,
                    // Spread the paced connections evenly over one interval.
                    interval: interval.map(|iv| (iv, iv.mul_f64(i as f64 / conns as f64))),
                    ids: (i as u64) << 40,
                    limit: shape.limit,
                    tls: tls.clone(),
                };
                tokio::spawn(task.run())
            })
            .collect();
        Generator { stats, stop, tasks }
    }

    /// 2xx responses so far.
    pub fn ok(&self) -> u64 {
        self.stats.ok.load(Ordering::Relaxed)
    }

    /// Failed requests so far.
    pub fn failed(&self) -> u64 {
        self.stats.failed.load(Ordering::Relaxed)
    }

    /// Starts or stops recording response times.
    pub fn record(&self, on: bool) {
        self.stats.recording.store(on, Ordering::Relaxed);
    }

    /// Waits until every task has stopped by itself (after [`Shape::limit`] requests).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Stops every task and returns the recorded response times (µs).
    pub async fn finish(self) -> Vec<u32> {
        self.stop.cancel();
        let mut all = Vec::new();
        for t in self.tasks {
            // A task that cannot finish within a second is abandoned with its samples.
            if let Ok(Ok(v)) = tokio::time::timeout(Duration::from_secs(1), t).await {
                all.extend(v);
            }
        }
        all
    }
}

struct Task {
    addr: SocketAddr,
    template: Arc<Template>,
    stats: Arc<Stats>,
    stop: CancellationToken,
    epoch: Instant,
    interval: Option<(Duration, Duration)>,
    ids: u64,
    limit: Option<u64>,
    tls: Option<ClientTls>,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Task {
    async fn connect(&self) -> anyhow::Result<Sender> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        if let Some(tls) = &self.tls {
            let stream = tls.connector.connect(tls.name.clone(), stream).await?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            return Ok(sender);
        }
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }

    async fn run(mut self) -> Vec<u32> {
        let mut samples = Vec::new();
        let mut next = self.interval.map(|(_, offset)| Instant::now() + offset);
        let mut sender: Option<Sender> = None;
        while !self.stop.is_cancelled() {
            let due = match (&mut next, self.interval) {
                (Some(n), Some((iv, _))) => {
                    let due = *n;
                    *n += iv;
                    tokio::select! {
                        () = tokio::time::sleep_until(due.into()) => {}
                        () = self.stop.cancelled() => break,
                    }
                    due
                }
                _ => Instant::now(),
            };
            let s = match sender.as_mut() {
                Some(s) => s,
                None => match self.connect().await {
                    Ok(s) => sender.insert(s),
                    Err(_) => {
                        self.stats.failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            if let Some(limit) = self.limit {
                if self.stats.issued.fetch_add(1, Ordering::Relaxed) >= limit {
                    break;
                }
            }
            self.ids += 1;
            let due_ns = due.saturating_duration_since(self.epoch).as_nanos() as u64;
            let Ok(req) = self.template.request(self.ids, due_ns) else {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                break;
            };
            let started = Instant::now();
            let ok = exchange(s, req).await;
            if self.stats.recording.load(Ordering::Relaxed) {
                samples.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            match ok {
                Ok(true) => {
                    self.stats.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    sender = None;
                }
            }
        }
        samples
    }
}

/// Sends one request and reads the whole response; `Ok(true)` for a 2xx.
async fn exchange(s: &mut Sender, req: Request<Full<Bytes>>) -> anyhow::Result<bool> {
    s.ready().await?;
    let resp = s.send_request(req).await?;
    let ok = resp.status().is_success();
    resp.into_body().collect().await?;
    Ok(ok)
}
