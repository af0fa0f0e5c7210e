//! The HTTP server loop of the ingress (and of the admin and health listeners), with
//! the limits a listener facing every producer of a cluster needs, each a `serve`
//! flag ([`ServerLimits`]):
//!
//! - **`--max-connections`**: past it a new connection is answered `503` with
//!   `Retry-After` and closed (a canned response, written with a short deadline), so
//!   a client sees why rather than a hang in the accept backlog. On a TLS listener
//!   it is closed without an answer (a TLS client could not read a plain one).
//! - **TLS** ([`crate::tls`]): the handshake runs in the connection's task, within
//!   `--header-read-timeout`, over the same watched stream.
//! - **`--header-read-timeout`**: from the first byte of a request head to its end;
//!   a client trickling its headers is closed when it runs out, whatever it sends.
//! - **`--idle-timeout`**: a keep-alive connection with no request in flight and no
//!   bytes for this long is closed gracefully.
//! - **HTTP/2**: concurrent streams per connection, and the reset-flood guards
//!   (pending-accept resets and locally caused resets, CVE-2023-44487 and
//!   CVE-2024-27316 shapes) from hyper, with our defaults.
//!
//! The body read deadline (a minimum rate) is the handler's (`read_body` in the
//! crate root): it knows the body's size.
//!
//! hyper's own header timeout is not used: it also runs while a keep-alive
//! connection waits for its next request, so it could not be shorter than the idle
//! timeout. Instead each connection's I/O marks when a request head began (the
//! first byte read while no request is in flight) and when anything moved, and the
//! connection's task checks both deadlines.
//!
//! [`serve`] stops on its token: no new connections, each open one is told to
//! finish its request in flight and close, and after
//! [`ServerLimits::shutdown_timeout`] those still open are dropped.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use broker::telemetry::{ConnectionClosed, Metrics};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

/// Default of [`ServerLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// The listener's limits (see the module docs).
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest time from a request head's first byte to its end.
    pub header_read_timeout: Duration,
    /// Longest time a connection may sit with no request and no bytes.
    pub idle_timeout: Duration,
    /// Most concurrent HTTP/2 streams per connection.
    pub http2_max_streams: u32,
    /// Most HTTP/2 streams reset by the client before the server accepted them
    /// (rapid reset) before the connection is closed.
    pub http2_max_pending_resets: usize,
    /// Most HTTP/2 streams the server had to reset because of client errors before
    /// the connection is closed.
    pub http2_max_local_resets: usize,
    /// How long shutdown waits for requests in flight before dropping connections.
    pub shutdown_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            http2_max_streams: 256,
            http2_max_pending_resets: 20,
            http2_max_local_resets: 256,
            shutdown_timeout: Duration::from_secs(15),
        }
    }
}

/// The most a connection's HTTP/1 read buffer holds.
const READ_BUFFER: usize = 64 << 10;

/// At most this many refusals (over `--max-connections`) are written at once;
/// beyond, a connection is closed without a response.
const MAX_REFUSING: usize = 64;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since [`EPOCH`], never 0 (0 means "not set").
fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64 + 1
}

/// What a connection's I/O and service report to its task.
#[derive(Default)]
struct Activity {
    /// When anything was last read or written, or a response completed.
    last: AtomicU64,
    /// When the current request head began (0: none being read).
    head_started: AtomicU64,
    /// Requests being handled.
    in_flight: AtomicUsize,
}

impl Activity {
    fn read(&self) {
        let now = now_ms();
        self.last.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ =
                self.head_started
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
    }

    fn request_done(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.last.store(now_ms(), Ordering::Relaxed);
    }
}

/// Ends a request's count when its future ends, however it ends: hyper drops the
/// future of an HTTP/2 stream the client reset, and a count left behind would keep
/// the connection from its idle and header deadlines for good.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// Counts a connection in the gauge while it lives (a panic in its task too).
struct Open(Option<Gauge>);

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

impl Activity {
    /// `Err(reason)` when a deadline has passed, else when to check again.
    fn check(&self, limits: &ServerLimits) -> Result<Duration, ConnectionClosed> {
        let now = now_ms();
        let ms = |d: Duration| d.as_millis() as u64;
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            // A request's body has its own deadline (the handler's).
            return Ok(limits.header_read_timeout.min(limits.idle_timeout));
        }
        let head = self.head_started.load(Ordering::Relaxed);
        let (deadline, reason) = if head != 0 {
            (
                head + ms(limits.header_read_timeout),
                ConnectionClosed::header_timeout,
            )
        } else {
            (
                self.last.load(Ordering::Relaxed) + ms(limits.idle_timeout),
                ConnectionClosed::idle_timeout,
            )
        };
        if now >= deadline {
            Err(reason)
        } else {
            Ok(Duration::from_millis(deadline - now))
        }
    }
}

/// A TCP stream that reports reads and writes to its [`Activity`].
struct Watched {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.activity.last.store(now_ms(), Ordering::Relaxed);
            }
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.activity.last.store(now_ms(), Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

fn builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        // hyper's default read buffer grows to about 400 KiB per connection while a
        // body streams in; 64 KiB keeps --max-connections × buffer small.
        .max_buf_size(READ_BUFFER);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .max_pending_accept_reset_streams(limits.http2_max_pending_resets)
        .max_local_error_reset_streams(limits.http2_max_local_resets);
    b
}

/// Serves `router` on `listener` under `limits` until `stop` fires, then stops
/// accepting, lets requests in flight finish within
/// [`ServerLimits::shutdown_timeout`], and drops what is left. With `tls`, every
/// connection is a TLS one ([`crate::tls`]). With `peer_info`, each request carries
/// its peer's address (`ConnectInfo<SocketAddr>`, for the admin API's audit lines);
/// the ingress does without it (an extensions map per request, about 3 % of R1).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    metrics: Option<Arc<Metrics>>,
    tls: Option<Arc<crate::tls::Tls>>,
    peer_info: bool,
    stop: CancellationToken,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let builder = Arc::new(builder(&limits));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let tasks = TaskTracker::new();
    let hard = CancellationToken::new();
    let gauge = metrics.as_ref().map(|m| m.connections_gauge());
    let closed = |reason| metrics.as_ref().map(|m| m.connections_closed(reason));
    let over_limit = closed(ConnectionClosed::over_limit);
    let trust_domain: Arc<str> = tls
        .as_ref()
        .map_or(crate::auth::identity::DEFAULT_TRUST_DOMAIN, |t| {
            t.trust_domain()
        })
        .into();
    let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.config()));
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(c) = &over_limit {
                c.inc();
            }
            // A TLS client would not read a plain-text answer: it is just closed.
            if acceptor.is_none() {
                if let Ok(permit) = refusing.clone().try_acquire_owned() {
                    tasks.spawn(async move {
                        refuse(stream).await;
                        drop(permit);
                    });
                }
            }
            continue;
        };
        let activity = Arc::new(Activity::default());
        activity.last.store(now_ms(), Ordering::Relaxed);
        let watched = Watched {
            io: stream,
            activity: activity.clone(),
        };
        let conn = Conn {
            builder: builder.clone(),
            router: router.clone(),
            activity,
            limits: limits.clone(),
            stop: stop.clone(),
            hard: hard.clone(),
            closed_header: closed(ConnectionClosed::header_timeout),
            closed_idle: closed(ConnectionClosed::idle_timeout),
            closed_shutdown: closed(ConnectionClosed::shutdown),
            peer: peer_info.then_some(peer),
            identity: None,
        };
        let acceptor = acceptor.clone();
        let trust_domain = trust_domain.clone();
        let closed_tls = closed(ConnectionClosed::tls_handshake);
        let gauge = gauge.clone();
        tasks.spawn(async move {
            if let Some(g) = &gauge {
                g.inc();
            }
            let _open = Open(gauge);
            match acceptor {
                None => conn.run(watched).await,
                Some(acceptor) => {
                    let (limit, hard) = (conn.limits.header_read_timeout, conn.hard.clone());
                    let handshake = tokio::select! {
                        r = tokio::time::timeout(limit, acceptor.accept(watched)) => r,
                        () = hard.cancelled() => return,
                    };
                    match handshake {
                        Ok(Ok(tls)) => {
                            // mTLS: the verified client certificate's identity, for
                            // EventPolicies (only connections that presented one).
                            let identity = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| {
                                    crate::auth::identity::certificate_identity(c, &trust_domain)
                                })
                                .map(|id| crate::auth::ClientIdentity(id.into()));
                            conn.with_identity(identity).run(tls).await
                        }
                        failed => {
                            if let Some(c) = &closed_tls {
                                c.inc();
                            }
                            let error = match failed {
                                Ok(Err(e)) => e.to_string(),
                                _ => {
                                    format!("not finished within --header-read-timeout ({limit:?})")
                                }
                            };
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                        }
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(limits.shutdown_timeout, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout = ?limits.shutdown_timeout,
            "requests still in flight at the end of --shutdown-timeout; closing their connections"
        );
        hard.cancel();
        tasks.wait().await;
    }
    Ok(())
}

/// One connection's task: what it needs besides its stream.
struct Conn {
    builder: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    activity: Arc<Activity>,
    limits: Arc<ServerLimits>,
    stop: CancellationToken,
    hard: CancellationToken,
    closed_header: Option<Counter>,
    closed_idle: Option<Counter>,
    closed_shutdown: Option<Counter>,
    /// Put on each request as `ConnectInfo` when set.
    peer: Option<SocketAddr>,
    /// Put on each request when set (a verified client certificate's identity).
    identity: Option<crate::auth::ClientIdentity>,
}

impl Conn {
    fn with_identity(mut self, identity: Option<crate::auth::ClientIdentity>) -> Conn {
        self.identity = identity;
        self
    }

    /// Serves the connection's requests until it closes, a deadline passes or the
    /// server stops.
    async fn run<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            builder,
            router,
            activity,
            limits,
            stop,
            hard,
            closed_header,
            closed_idle,
            closed_shutdown,
            peer,
            identity,
        } = self;
        let service_activity = activity.clone();
        let service =
            hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                // The peer, for handlers' audit logs (`ConnectInfo<SocketAddr>`).
                if let Some(peer) = peer {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                }
                if let Some(id) = &identity {
                    req.extensions_mut().insert(id.clone());
                }
                let mut router = router.clone();
                let activity = service_activity.clone();
                activity.request_started();
                let guard = InFlight(activity);
                async move {
                    let response = router.call(req).await;
                    drop(guard);
                    response
                }
            });
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let mut graceful = false;
        let mut check =
            tokio::time::Instant::now() + limits.header_read_timeout.min(limits.idle_timeout);
        loop {
            tokio::select! {
                _ = conn.as_mut() => break,
                () = stop.cancelled(), if !graceful => {
                    conn.as_mut().graceful_shutdown();
                    graceful = true;
                }
                () = hard.cancelled() => {
                    if let Some(c) = &closed_shutdown { c.inc(); }
                    break;
                }
                () = tokio::time::sleep_until(check) => match activity.check(&limits) {
                    Ok(next) => check = tokio::time::Instant::now() + next,
                    Err(reason) => {
                        let counter = match reason {
                            ConnectionClosed::header_timeout => &closed_header,
                            _ => &closed_idle,
                        };
                        if let Some(c) = counter { c.inc(); }
                        tracing::debug!(?reason, "closing a connection");
                        break;
                    }
                },
            }
        }
    }
}

/// Answers a connection over `--max-connections` with a 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"error":"too many connections","detail":"the ingress has --max-connections open; retry shortly"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        // Read what the client sent first (a request head, usually): closing with
        // unread bytes would send a reset instead of the answer.
        let mut buf = [0u8; 8192];
        let _ = tokio::time::timeout(Duration::from_millis(100), async {
            use tokio::io::AsyncReadExt;
            let _ = stream.read(&mut buf).await;
        })
        .await;
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
