//! The Triggerfish ingress: CloudEvents over HTTP in, durable append, precise status
//! codes.
//!
//! [`router`] builds the axum [`Router`]; [`serve`] runs it on a listener until a
//! cancellation token fires, then drains. A request to `POST /<namespace>/<broker>`
//! goes through: method check (405 with `Allow`), broker lookup (404), body read under
//! the size limit (413, checked against `Content-Length` first and enforced while
//! reading), decoding by content mode (415 for unsupported event formats, 400 for
//! invalid events, with the attribute and the reason), stamping `knativearrivaltime`,
//! and the append to the broker's channel. Only when the channel says the events are
//! durable does the ingress answer 202; a full or failing channel gives 503 with
//! `Retry-After`. A batch is appended as one unit and answered as one.
//!
//! `error` maps each failure to exactly one status with a JSON body
//! `{"error": ..., "detail": ...}`.

mod error;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use broker::channel::{BrokerLog, ChannelError};
use broker::event::{self, http as binding, AttrValue, Event, EventLimits};
use broker::telemetry::{IngressMetrics, Metrics, RejectReason};
use bytes::Bytes;
use http::{header, HeaderValue};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

pub use error::IngressError;

/// Default request body limit: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// Ingress settings.
#[derive(Debug, Clone)]
pub struct IngressOptions {
    /// Largest accepted body in bytes.
    pub max_body_bytes: usize,
    /// How long an append may take before the producer gets 503.
    pub append_timeout: Duration,
    /// Limits on each event's attributes, checked before anything is stored.
    pub limits: EventLimits,
}

impl Default for IngressOptions {
    fn default() -> Self {
        IngressOptions {
            max_body_bytes: DEFAULT_MAX_BODY,
            append_timeout: Duration::from_secs(10),
            limits: EventLimits::default(),
        }
    }
}

struct BrokerEntry {
    log: Arc<dyn BrokerLog>,
    metrics: IngressMetrics,
    name: String,
}

/// Shared state of the ingress.
pub struct IngressState {
    brokers: HashMap<String, HashMap<String, BrokerEntry>>,
    unknown: IngressMetrics,
    metrics: Arc<Metrics>,
    opts: IngressOptions,
    ready: AtomicBool,
}

impl IngressState {
    /// Builds the state from opened broker logs.
    pub fn new(
        logs: Vec<Arc<dyn BrokerLog>>,
        metrics: Arc<Metrics>,
        opts: IngressOptions,
    ) -> IngressState {
        let mut brokers: HashMap<String, HashMap<String, BrokerEntry>> = HashMap::new();
        for log in logs {
            let id = log.broker().clone();
            let name = id.to_string();
            let entry = BrokerEntry {
                metrics: metrics.ingress(&name),
                log,
                name,
            };
            brokers
                .entry(id.namespace)
                .or_default()
                .insert(id.name, entry);
        }
        IngressState {
            brokers,
            unknown: metrics.ingress(""),
            metrics,
            opts,
            ready: AtomicBool::new(true),
        }
    }

    /// Marks the ingress as not ready (draining): `/readyz` answers 503.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// The ingress HTTP routes.
///
/// `/<namespace>/<broker>` (with or without a trailing slash) is matched by
/// [`broker_path`] in the fallback rather than by an axum route with path parameters:
/// extracting `Path<(String, String)>` cost a URL-parameter map, two percent-decoded
/// strings and two request extensions per event, about 5,000 instructions of the
/// ingress's 50,000 per event (docs/benchmarks.md). Every other path is answered 404
/// as before.
pub fn router(state: Arc<IngressState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(broker_endpoint)
        .with_state(state)
}

/// The namespace and broker of a `/<namespace>/<broker>` or `/<namespace>/<broker>/`
/// path, percent-decoded; `None` for any other path, or for a segment that does not
/// percent-decode to UTF-8.
fn broker_path(path: &str) -> Option<(Cow<'_, str>, Cow<'_, str>)> {
    let rest = path.strip_prefix('/')?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (namespace, broker) = rest.split_once('/')?;
    if namespace.is_empty() || broker.is_empty() || broker.contains('/') {
        return None;
    }
    Some((percent_decode(namespace)?, percent_decode(broker)?))
}

fn percent_decode(segment: &str) -> Option<Cow<'_, str>> {
    if !segment.contains('%') {
        return Some(Cow::Borrowed(segment));
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |j: usize| bytes.get(j).and_then(|&c| (c as char).to_digit(16));
        match bytes[i] {
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                // Like axum's path extraction: a `%` without two hex digits stays.
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

async fn readyz(State(state): State<Arc<IngressState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    }
}

async fn metrics(State(state): State<Arc<IngressState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn broker_endpoint(State(state): State<Arc<IngressState>>, req: Request<Body>) -> Response {
    let Some((namespace, name)) = broker_path(req.uri().path()) else {
        return IngressError::NotFound.into_response();
    };
    match req.method() {
        &Method::POST => {}
        &Method::OPTIONS => return webhook_options(req.headers()),
        other => return IngressError::MethodNotAllowed(other.to_string()).into_response(),
    }
    let Some(entry) = state
        .brokers
        .get(namespace.as_ref())
        .and_then(|m| m.get(name.as_ref()))
    else {
        state.unknown.reject(RejectReason::unknown_broker, 1);
        return IngressError::UnknownBroker(format!("{namespace}/{name}")).into_response();
    };
    match accept(&state, entry, req).await {
        Ok(n) => {
            entry.metrics.accepted.inc_by(n as u64);
            let deduplicated = entry.log.take_deduplicated();
            if deduplicated > 0 {
                entry.metrics.deduplicated.inc_by(deduplicated);
            }
            StatusCode::ACCEPTED.into_response()
        }
        Err(e) => {
            let reason = match &e {
                IngressError::Invalid(_) | IngressError::Body(_) => RejectReason::invalid,
                IngressError::TooLarge { .. } => RejectReason::too_large,
                IngressError::UnsupportedMediaType(_) => RejectReason::unsupported_media_type,
                IngressError::Limit { error, .. } => error.reason(),
                IngressError::RetentionFull { .. } => RejectReason::retention_full,
                _ => RejectReason::unavailable,
            };
            entry.metrics.reject(reason, 1);
            if let IngressError::Unavailable { .. } | IngressError::RetentionFull { .. } = e {
                tracing::warn!(broker = %entry.name, error = %e, "append failed; answered 503");
            } else {
                tracing::debug!(broker = %entry.name, error = %e, "rejected request");
            }
            e.into_response()
        }
    }
}

/// The CloudEvents webhook validation handshake (and a Knative-style probe).
fn webhook_options(headers: &HeaderMap) -> Response {
    let origin = headers
        .get("webhook-request-origin")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("*"));
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
    h.insert("webhook-allowed-origin", origin);
    h.insert("webhook-allowed-rate", HeaderValue::from_static("*"));
    resp
}

async fn read_body(req: Request<Body>, limit: usize) -> Result<(HeaderMap, Bytes), IngressError> {
    let (parts, body) = req.into_parts();
    if let Some(len) = parts.headers.get(header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| IngressError::Body("invalid Content-Length".into()))?;
        if len > limit as u64 {
            return Err(IngressError::TooLarge { limit });
        }
    }
    let collected = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                IngressError::TooLarge { limit }
            } else {
                IngressError::Body(e.to_string())
            }
        })?;
    Ok((parts.headers, collected.to_bytes()))
}

async fn accept(
    state: &IngressState,
    entry: &BrokerEntry,
    req: Request<Body>,
) -> Result<usize, IngressError> {
    let (headers, body) = read_body(req, state.opts.max_body_bytes).await?;
    let decode_error = |e: binding::DecodeError| match e {
        binding::DecodeError::UnsupportedMediaType(_) => {
            IngressError::UnsupportedMediaType(e.to_string())
        }
        binding::DecodeError::Invalid(e) => IngressError::Invalid(e),
    };
    let mode = binding::mode(&headers).map_err(decode_error)?;
    let mut events = binding::decode_as(mode, &headers, body).map_err(decode_error)?;
    let batch = events.len() > 1 || mode == binding::Mode::Batched;
    for (i, e) in events.iter().enumerate() {
        event::validate(e).map_err(|mut err| {
            if batch && !err.attribute.starts_with('[') {
                err.attribute = format!("[{i}].{}", err.attribute);
            }
            IngressError::Invalid(err)
        })?;
    }
    // One string for the whole batch: its clones share the buffer.
    let arrival = AttrValue::String(jiff::Timestamp::now().to_string().into());
    if let Some((last, rest)) = events.split_last_mut() {
        for e in rest {
            e.set(event::ARRIVAL_TIME, arrival.clone());
        }
        last.set(event::ARRIVAL_TIME, arrival);
    }
    // The limits hold for the events as stored, `knativearrivaltime` included.
    for e in &events {
        state
            .opts
            .limits
            .check(e)
            .map_err(|error| IngressError::Limit {
                error,
                headers: mode == binding::Mode::Binary,
            })?;
    }
    append(state, entry, &events).await?;
    Ok(events.len())
}

async fn append(
    state: &IngressState,
    entry: &BrokerEntry,
    events: &[Event],
) -> Result<(), IngressError> {
    let unavailable = |reason: String| IngressError::Unavailable {
        broker: entry.name.clone(),
        reason,
    };
    match tokio::time::timeout(state.opts.append_timeout, entry.log.append(events)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(ChannelError::TooLarge { .. })) => Err(IngressError::TooLarge {
            limit: state.opts.max_body_bytes,
        }),
        Ok(Err(e @ ChannelError::RetentionFull { .. })) => {
            if let ChannelError::RetentionFull { trigger, .. } = &e {
                entry
                    .metrics
                    .retention_blocked(trigger, events.len() as u64);
            }
            Err(IngressError::RetentionFull {
                broker: entry.name.clone(),
                reason: e.to_string(),
            })
        }
        Ok(Err(e)) => Err(unavailable(e.to_string())),
        Err(_) => Err(unavailable(format!(
            "the channel did not confirm the append within {:?}",
            state.opts.append_timeout
        ))),
    }
}

/// Serves `router` on `listener` until `shutdown` fires, then stops accepting new
/// connections and lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_paths() {
        let p = |s| broker_path(s).map(|(a, b)| (a.into_owned(), b.into_owned()));
        let ok = |a: &str, b: &str| Some((a.to_owned(), b.to_owned()));
        assert_eq!(p("/ns/b"), ok("ns", "b"));
        assert_eq!(p("/ns/b/"), ok("ns", "b"));
        assert_eq!(p("/n%73/b%2Fc"), ok("ns", "b/c"));
        assert_eq!(
            p("/ns/100%"),
            ok("ns", "100%"),
            "a lone % stays, as in axum"
        );
        for bad in [
            "/", "/ns", "/ns/", "//b", "/ns//", "/ns/b/c", "/ns/b//", "ns/b", "/ns/%FF",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }
}
