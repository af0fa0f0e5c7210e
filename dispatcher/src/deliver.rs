//! HTTP delivery of one event to one subscriber, with the trigger's retry policy.
//!
//! Each attempt is a POST in the trigger's content mode (binary by default) with
//! `Prefer: reply`, bounded by the delivery timeout. The outcome of each attempt is
//! classified by [`broker::delivery::classify`]; waits come from the spec's backoff and
//! any honoured `Retry-After`. Only `tokio::time` is used, so tests can pause time.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use broker::budget::{Charge, MemoryBudget};
use broker::delivery::{classify, DeliverySpec, Format, RetryDecision};
use broker::event::{http as binding, Event};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use url::{Position, Url};

use crate::connector::Connector;
use crate::identity::BearerToken;

/// An HTTP client (connection pooling per host), for `http` and `https`
/// destinations; TLS trusts the root certificates it was built with ([`client`]:
/// the system's; [`crate::trust`] adds `--ca-bundle` and destinations' `CACerts`).
/// With a [`BearerToken`] (`--delivery-token-file`) every request it sends carries
/// it. Clones share one connection pool, and the pool goes with the last clone.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<ClientInner>,
}

#[derive(Clone)]
pub(crate) struct ClientInner {
    client: Client<Connector, Full<Bytes>>,
    token: Option<Arc<BearerToken>>,
}

impl HttpClient {
    /// This client, sending `token` with every request (none: no identity).
    pub fn with_token(mut self, token: Option<Arc<BearerToken>>) -> HttpClient {
        Arc::make_mut(&mut self.inner).token = token;
        self
    }

    /// Sends a request, with the outgoing identity unless it has an
    /// `Authorization` header of its own.
    pub fn request(&self, mut req: Request<Full<Bytes>>) -> ResponseFuture {
        if let Some(t) = &self.inner.token {
            if !req.headers().contains_key(header::AUTHORIZATION) {
                req.headers_mut().insert(header::AUTHORIZATION, t.header());
            }
        }
        self.inner.client.request(req)
    }

    /// Whether `self` and `other` are clones of one client (one connection pool).
    pub fn same_pool(&self, other: &HttpClient) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// A handle that does not keep the client alive ([`crate::trust`]'s cache).
    pub(crate) fn downgrade(&self) -> std::sync::Weak<ClientInner> {
        Arc::downgrade(&self.inner)
    }

    /// The client behind a handle of [`HttpClient::downgrade`], while a clone lives.
    pub(crate) fn upgrade(weak: &std::sync::Weak<ClientInner>) -> Option<HttpClient> {
        weak.upgrade().map(|inner| HttpClient { inner })
    }
}

/// `Prefer: reply` goes with every delivery (a `const`: parsing a header name from a
/// `&str` costs about 550 instructions per request).
const PREFER: header::HeaderName = header::HeaderName::from_static("prefer");

/// Response bodies are read up to this many bytes by default (the ingress's default
/// body limit, so a reply may be as large as an event a producer may send); a larger
/// body is dropped with its connection and reported in [`Attempt::body_error`].
/// Trigger deliveries use `--max-body-bytes` ([`deliver_with`]).
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// The most attributes an event may have to be sent at all. The ingress admits far
/// fewer (`--max-attributes`); more can only come from a log written by another
/// producer (a shared Kafka topic or NATS stream). Up to this many are tried and the
/// subscriber decides; beyond it no HTTP server accepts the request, and building it
/// would exceed what a `HeaderMap` can hold (a panic in `http`), so such an event is
/// dead-lettered without an attempt.
pub const MAX_SENDABLE_ATTRIBUTES: usize = 1024;

/// A client trusting the system's root certificates only, without an identity
/// (the dispatcher's clients come from [`crate::trust::Trust`]).
pub fn client() -> HttpClient {
    client_trusting(crate::trust::system_roots(), None)
}

/// A client whose TLS trusts `roots` and that sends `token` (if any).
pub(crate) fn client_trusting(
    roots: rustls::RootCertStore,
    token: Option<Arc<BearerToken>>,
) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
    http.enforce_http(false);
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        // At least partitions × per-partition concurrency, or connections churn.
        .pool_max_idle_per_host(4096)
        .build(Connector::new(connector));
    HttpClient {
        inner: Arc::new(ClientInner { client, token }),
    }
}

/// What one attempt produced.
#[derive(Debug)]
pub struct Attempt {
    /// The status, `None` for transport errors and timeouts.
    pub status: Option<StatusCode>,
    /// Response headers.
    pub headers: HeaderMap,
    /// Up to [`MAX_RESPONSE_BYTES`] of the response body.
    pub body: Bytes,
    /// Transport error text, when there was no response.
    pub error: Option<String>,
    /// Why the response body could not be read in full (over the limit, or the
    /// connection ended early); `body` is then empty.
    pub body_error: Option<String>,
}

/// The final result of delivering one event.
#[derive(Debug)]
pub struct Delivery {
    /// Whether a 2xx was received.
    pub delivered: bool,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt.
    pub last: Attempt,
    /// Time from the first attempt to the outcome.
    pub elapsed: std::time::Duration,
}

/// Delivers `event` to `url` following `spec`.
pub async fn deliver(
    client: &HttpClient,
    url: &Url,
    spec: &DeliverySpec,
    event: &Event,
) -> Delivery {
    let budget = MemoryBudget::unlimited();
    deliver_with(
        client,
        url,
        spec,
        event,
        MAX_RESPONSE_BYTES,
        &budget,
        |_| async { Ok(()) },
    )
    .await
}

/// Like [`deliver`], reading response bodies up to `max_response` bytes, and a 2xx
/// counts only once `on_success` accepted the response (used to store replies): an
/// `Err` from it is a failed attempt, retried like a transport error. A response
/// body's bytes are charged to `budget` while it is read and until `on_success`
/// is done with it (waiting for room, within the attempt's timeout).
pub async fn deliver_with<F, Fut>(
    client: &HttpClient,
    url: &Url,
    spec: &DeliverySpec,
    event: &Event,
    max_response: usize,
    budget: &Arc<MemoryBudget>,
    mut on_success: F,
) -> Delivery
where
    F: FnMut(&Attempt) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    if event.attribute_count() > MAX_SENDABLE_ATTRIBUTES {
        return Delivery {
            delivered: false,
            attempts: 0,
            last: transport_error(format!(
                "not sent: the event has {} attributes, more than the {MAX_SENDABLE_ATTRIBUTES} an HTTP request can carry as headers",
                event.attribute_count()
            )),
            elapsed: started.elapsed(),
        };
    }
    // The headers move into the first request; a retry encodes them again, which is
    // cheaper than copying them for every delivery that succeeds at once.
    let encode = |headers: &mut HeaderMap| {
        let body = match spec.format {
            Format::Binary => binding::encode_binary(event, headers),
            Format::Json => binding::encode_structured(event, headers),
        };
        headers.insert(PREFER, HeaderValue::from_static("reply"));
        body
    };
    // Room for every attribute, Content-Type, Prefer, Content-Length and Host, so the
    // map is allocated once instead of growing while it is filled.
    let capacity = event.attribute_count() + 4;
    let mut headers = HeaderMap::with_capacity(capacity);
    let body = encode(&mut headers);
    let mut n = 0u32;
    loop {
        if n > 0 {
            headers.reserve(capacity);
            encode(&mut headers);
        }
        let sent = std::mem::take(&mut headers);
        let (mut attempt, charge) =
            attempt(client, url, spec, sent, body.clone(), max_response, budget).await;
        n += 1;
        let mut decision = classify(attempt.status, &attempt.headers, SystemTime::now());
        if decision == RetryDecision::Success {
            match on_success(&attempt).await {
                Ok(()) => {
                    return Delivery {
                        delivered: true,
                        attempts: n,
                        last: attempt,
                        elapsed: started.elapsed(),
                    }
                }
                Err(e) => {
                    attempt.error = Some(e);
                    decision = RetryDecision::Retry { retry_after: None };
                }
            }
        }
        let retry_after = match decision {
            RetryDecision::Retry { retry_after } if n <= spec.retry => retry_after,
            _ => {
                return Delivery {
                    delivered: false,
                    attempts: n,
                    last: attempt,
                    elapsed: started.elapsed(),
                }
            }
        };
        // The response is not needed past this attempt: its bytes go back to the
        // budget before the backoff, not after it.
        attempt.body = Bytes::new();
        drop(charge);
        let wait = spec.wait_before_retry(n, retry_after);
        tracing::debug!(url = %url, event_id = event.id(), attempt = n, status = ?attempt.status,
            error = attempt.error.as_deref().unwrap_or(""), wait_ms = wait.as_millis() as u64, "delivery failed; will retry");
        tokio::time::sleep(wait).await;
    }
}

async fn attempt(
    client: &HttpClient,
    url: &Url,
    spec: &DeliverySpec,
    mut headers: HeaderMap,
    body: Bytes,
    max_response: usize,
    budget: &Arc<MemoryBudget>,
) -> (Attempt, Charge) {
    let mut charge = budget.empty();
    let (uri, host) = match target(url) {
        Ok(t) => t,
        Err(e) => {
            return (
                transport_error(format!("cannot build request: {e}")),
                charge,
            )
        }
    };
    headers.insert(header::CONTENT_LENGTH, content_length(body.len()));
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| transport_message(&e))?;
        let (parts, body) = resp.into_parts();
        let (body, body_error) = read_response(body, max_response, budget, &mut charge).await;
        Ok::<_, String>(Attempt {
            status: Some(parts.status),
            headers: parts.headers,
            body,
            error: None,
            body_error,
        })
    };
    let attempt = match tokio::time::timeout(spec.timeout, exchange).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => transport_error(e),
        Err(_) => transport_error(format!("no response within {:?}", spec.timeout)),
    };
    (attempt, charge)
}

/// Reads a response body of at most `max_response` bytes, charging its bytes to
/// `budget` (into `charge`) as they arrive and waiting when the budget is full.
async fn read_response(
    mut body: hyper::body::Incoming,
    max_response: usize,
    budget: &Arc<MemoryBudget>,
    charge: &mut Charge,
) -> (Bytes, Option<String>) {
    let too_large = || {
        format!("the response body exceeds the limit of {max_response} bytes (--max-body-bytes)")
    };
    let mut frames: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                let e = format!("the response body could not be read in full: {e}");
                return (Bytes::new(), Some(e));
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len();
        if len > max_response {
            return (Bytes::new(), Some(too_large()));
        }
        if !charge.try_grow(data.len()) {
            let waited = budget.charge(data.len()).await;
            charge.absorb(waited);
        }
        frames.push(data);
    }
    // Usually one frame: kept without a copy.
    match frames.len() {
        0 => (Bytes::new(), None),
        1 => (frames.pop().unwrap_or_default(), None),
        _ => {
            let mut out = bytes::BytesMut::with_capacity(len);
            for f in frames {
                out.extend_from_slice(&f);
            }
            (out.freeze(), None)
        }
    }
}

/// A subscriber URL with its parsed request URI and `Host` header.
type Target = (Box<str>, Uri, Option<HeaderValue>);

thread_local! {
    /// The last subscriber URL this thread delivered to, parsed: a lane delivers to
    /// one URL, so parsing it and formatting its Host header once per change instead
    /// of once per request saves about 3,500 instructions per delivery
    /// (docs/benchmarks.md).
    static LAST_TARGET: std::cell::RefCell<Option<Target>> = const { std::cell::RefCell::new(None) };
}

/// The request URI for `url`, and for plain-http URLs the `Host` header the client
/// would otherwise format for every request (`host[:port]`, the port only when it is
/// not the scheme's default, which `Url` already leaves out). `https` requests get no
/// `Host` here: they may go out as HTTP/2, where the client sets `:authority`.
fn target(url: &Url) -> Result<(Uri, Option<HeaderValue>), http::uri::InvalidUri> {
    LAST_TARGET.with(|cell| {
        let mut last = cell.borrow_mut();
        if let Some((s, uri, host)) = last.as_ref() {
            if **s == *url.as_str() {
                return Ok((uri.clone(), host.clone()));
            }
        }
        let uri: Uri = url.as_str().parse()?;
        let host = (url.scheme() == "http")
            .then(|| HeaderValue::from_str(&url[Position::BeforeHost..Position::AfterPort]).ok())
            .flatten();
        *last = Some((url.as_str().into(), uri.clone(), host.clone()));
        Ok((uri, host))
    })
}

thread_local! {
    /// The last `Content-Length` this thread sent: events of one source tend to have
    /// one size, and formatting the header allocates.
    static LAST_LENGTH: std::cell::RefCell<Option<(usize, HeaderValue)>> = const { std::cell::RefCell::new(None) };
}

/// The `Content-Length` header for `len` bytes.
fn content_length(len: usize) -> HeaderValue {
    LAST_LENGTH.with(|cell| {
        let mut last = cell.borrow_mut();
        match last.as_ref() {
            Some((n, v)) if *n == len => v.clone(),
            _ => {
                let v = HeaderValue::from(len);
                *last = Some((len, v.clone()));
                v
            }
        }
    })
}

fn transport_message(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error;
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

fn transport_error(error: String) -> Attempt {
    Attempt {
        status: None,
        headers: HeaderMap::new(),
        body: Bytes::new(),
        error: Some(error),
        body_error: None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use broker::delivery::DeliverySpec;
    use broker::event::Event;

    use super::*;

    #[test]
    fn targets_and_host_headers() {
        for (url, host) in [
            ("http://127.0.0.1:8080/a?b=c", Some("127.0.0.1:8080")),
            ("http://example.com:80/", Some("example.com")),
            ("http://[::1]:9000/x", Some("[::1]:9000")),
            ("http://user:pw@example.com/", Some("example.com")),
            ("https://example.com/", None),
        ] {
            let url = Url::parse(url).expect("url");
            // Twice: the second answer comes from the cache.
            for _ in 0..2 {
                let (uri, h) = target(&url).expect("target");
                assert_eq!(uri.to_string(), url.as_str());
                assert_eq!(
                    h.as_ref().map(|v| v.to_str().expect("ascii")),
                    host,
                    "{url}"
                );
            }
        }
    }

    #[test]
    fn content_lengths() {
        for len in [0, 1024, 1024, 7, 1 << 20] {
            assert_eq!(content_length(len), len.to_string().as_str());
        }
    }

    /// An https subscriber goes through TLS: against a peer that is not a TLS server
    /// the attempt fails as a transport error (retried like any other), not a panic
    /// and not a plain-HTTP request.
    #[tokio::test]
    async fn https_subscribers_use_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let got = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 5];
            let _ = tokio::io::AsyncReadExt::read_exact(&mut sock, &mut buf).await;
            buf
        });
        let url = Url::parse(&format!("https://{addr}/")).expect("url");
        let spec = DeliverySpec {
            retry: 0,
            timeout: Duration::from_secs(5),
            ..DeliverySpec::unset()
        };
        let mut e = Event::new();
        e.set_str("specversion", "1.0");
        e.set_str("id", "1");
        let d = deliver(&client(), &url, &spec, &e).await;
        assert!(!d.delivered);
        assert_eq!(d.last.status, None);
        assert!(d.last.error.is_some());
        // The first bytes on the wire are a TLS handshake record (0x16), not "POST ".
        let first = got.await.expect("peer");
        assert_eq!(first[0], 0x16, "{first:?}");
    }
}
