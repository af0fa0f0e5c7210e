//! HTTP delivery of one event to one subscriber, with the trigger's retry policy.
//!
//! Each attempt is a POST in the trigger's content mode (binary by default) with
//! `Prefer: reply`, bounded by the delivery timeout. The outcome of each attempt is
//! classified by [`broker::delivery::classify`]; waits come from the spec's backoff and
//! any honoured `Retry-After`. Only `tokio::time` is used, so tests can pause time.

use std::time::{Instant, SystemTime};

use broker::delivery::{classify, DeliverySpec, Format, RetryDecision};
use broker::event::{http as binding, Event};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use url::Url;

/// The shared HTTP client (connection pooling per subscriber host), for `http` and
/// `https` subscribers; TLS trusts the system's root certificates.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Response bodies are read up to this many bytes (enough for error data and
/// replies); larger bodies are dropped with their connection.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Builds the client used for every delivery.
pub fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let connector = match builder.with_native_roots() {
        Ok(b) => b
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http),
        Err(e) => {
            tracing::warn!(error = %e, "no system root certificates; https subscribers will fail");
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http)
        }
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        // At least partitions × per-partition concurrency, or connections churn.
        .pool_max_idle_per_host(4096)
        .build(connector)
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
    deliver_with(client, url, spec, event, |_| async { Ok(()) }).await
}

/// Like [`deliver`], but a 2xx counts only once `on_success` accepted the response
/// (used to store replies): an `Err` from it is a failed attempt, retried like a
/// transport error.
pub async fn deliver_with<F, Fut>(
    client: &HttpClient,
    url: &Url,
    spec: &DeliverySpec,
    event: &Event,
    mut on_success: F,
) -> Delivery
where
    F: FnMut(&Attempt) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = Instant::now();
    // The headers move into the first request; a retry encodes them again, which is
    // cheaper than copying them for every delivery that succeeds at once.
    let encode = |headers: &mut HeaderMap| {
        let body = match spec.format {
            Format::Binary => binding::encode_binary(event, headers),
            Format::Json => binding::encode_structured(event, headers),
        };
        headers.insert("prefer", HeaderValue::from_static("reply"));
        body
    };
    let mut headers = HeaderMap::new();
    let body = encode(&mut headers);
    let mut n = 0u32;
    loop {
        if n > 0 {
            encode(&mut headers);
        }
        let sent = std::mem::take(&mut headers);
        let mut attempt = attempt(client, url, spec, sent, body.clone()).await;
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
) -> Attempt {
    let mut builder = Request::post(url.as_str());
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    let req = match builder.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => return transport_error(format!("cannot build request: {e}")),
    };
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| transport_message(&e))?;
        let (parts, body) = resp.into_parts();
        let body = match http_body_util::Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(_) => Bytes::new(),
        };
        Ok::<_, String>(Attempt {
            status: Some(parts.status),
            headers: parts.headers,
            body,
            error: None,
        })
    };
    match tokio::time::timeout(spec.timeout, exchange).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => transport_error(e),
        Err(_) => transport_error(format!("no response within {:?}", spec.timeout)),
    }
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
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use broker::delivery::DeliverySpec;
    use broker::event::Event;

    use super::*;

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
