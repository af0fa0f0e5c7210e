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

pub mod auth;
mod error;
pub mod server;
pub mod tls;

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
use broker::budget::{Charge, MemoryBudget};
use broker::channel::{BrokerLog, ChannelError};
use broker::config::BrokerConfig;
use broker::event::{self, http as binding, AttrValue, Event, EventLimits};
use broker::telemetry::{IngressMetrics, Metrics, RejectReason};
use bytes::Bytes;
use http::{header, HeaderValue};
use http_body_util::BodyExt;

pub use error::IngressError;
pub use server::{serve, ServerLimits};

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
    /// How long a body may take, on top of its size at [`Self::min_body_rate`].
    pub body_read_timeout: Duration,
    /// The slowest rate a body may arrive at, in bytes per second.
    pub min_body_rate: u64,
    /// How much of a body refused before it was read (413, or 503 for the memory
    /// budget) is read and discarded so the client can read the answer instead of
    /// a reset; a larger one is answered at once and the connection closed.
    pub max_discard_bytes: u64,
    /// The account of event bytes held in memory (`--memory-budget`).
    pub budget: Arc<MemoryBudget>,
    /// The listener's connection limits and timeouts.
    pub server: ServerLimits,
    /// How long `/readyz` answers 503 before the listener stops accepting, so that
    /// load balancers stop sending first (`--shutdown-delay`; 0 here, PT2S for the
    /// command).
    pub shutdown_delay: Duration,
    /// Who may send ([`auth`]): OIDC, the default authorization mode, rate limits.
    pub auth: auth::AuthOptions,
}

/// Default [`IngressOptions::min_body_rate`]: 64 KiB/s, so a 1 MiB body may take
/// 16 s on top of [`IngressOptions::body_read_timeout`].
pub const DEFAULT_MIN_BODY_RATE: u64 = 64 << 10;

/// Default [`IngressOptions::max_discard_bytes`]: 8 MiB.
pub const DEFAULT_MAX_DISCARD: u64 = 8 << 20;

impl Default for IngressOptions {
    fn default() -> Self {
        IngressOptions {
            max_body_bytes: DEFAULT_MAX_BODY,
            append_timeout: Duration::from_secs(10),
            limits: EventLimits::default(),
            body_read_timeout: Duration::from_secs(10),
            min_body_rate: DEFAULT_MIN_BODY_RATE,
            max_discard_bytes: DEFAULT_MAX_DISCARD,
            budget: MemoryBudget::unlimited(),
            server: ServerLimits::default(),
            shutdown_delay: Duration::ZERO,
            auth: auth::AuthOptions::default(),
        }
    }
}

struct BrokerEntry {
    log: Arc<dyn BrokerLog>,
    guard: auth::BrokerGuard,
    metrics: IngressMetrics,
    name: String,
}

/// Brokers by namespace, then name.
type BrokerMap = HashMap<String, HashMap<String, Arc<BrokerEntry>>>;

/// Shared state of the ingress.
pub struct IngressState {
    /// Replaced as a whole when the config changes ([`IngressState::set_brokers`]).
    brokers: std::sync::RwLock<Arc<BrokerMap>>,
    unknown: IngressMetrics,
    metrics: Arc<Metrics>,
    opts: IngressOptions,
    ready: AtomicBool,
}

/// A broker the ingress serves: its log and its config (for who may send).
pub type ServedBroker<'a> = (Arc<dyn BrokerLog>, &'a BrokerConfig);

impl IngressState {
    /// Builds the state from opened broker logs and their brokers' configs.
    pub fn new(
        brokers: Vec<ServedBroker<'_>>,
        metrics: Arc<Metrics>,
        opts: IngressOptions,
    ) -> IngressState {
        IngressState {
            brokers: std::sync::RwLock::new(Arc::new(broker_map(
                brokers,
                &metrics,
                &opts.auth,
                &BrokerMap::new(),
            ))),
            unknown: metrics.ingress(""),
            metrics,
            opts,
            ready: AtomicBool::new(true),
        }
    }

    /// Serves exactly these brokers from now on (a config reload): a new one is
    /// served at once, a removed one answers 404, a changed one's EventPolicies
    /// and limits hold for the next request (its rate-limit buckets are kept when
    /// their limits are unchanged); requests already past the lookup finish on the
    /// log they found.
    pub fn set_brokers(&self, brokers: Vec<ServedBroker<'_>>) {
        let previous = self
            .brokers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let map = Arc::new(broker_map(
            brokers,
            &self.metrics,
            &self.opts.auth,
            &previous,
        ));
        *self.brokers.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    fn lookup(&self, namespace: &str, name: &str) -> Option<Arc<BrokerEntry>> {
        let map = self.brokers.read().unwrap_or_else(|p| p.into_inner());
        map.get(namespace).and_then(|m| m.get(name)).cloned()
    }

    /// Marks the ingress as not ready (draining): `/readyz` answers 503.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

fn broker_map(
    brokers: Vec<ServedBroker<'_>>,
    metrics: &Metrics,
    auth: &auth::AuthOptions,
    previous: &BrokerMap,
) -> BrokerMap {
    let mut map = BrokerMap::new();
    for (log, config) in brokers {
        let id = log.broker().clone();
        let name = id.to_string();
        let before = previous
            .get(&id.namespace)
            .and_then(|m| m.get(&id.name))
            .map(|e| &e.guard);
        let entry = Arc::new(BrokerEntry {
            metrics: metrics.ingress(&name),
            guard: auth::BrokerGuard::new(config, auth, before),
            log,
            name,
        });
        map.entry(id.namespace).or_default().insert(id.name, entry);
    }
    map
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
    let Some(entry) = state.lookup(namespace.as_ref(), name.as_ref()) else {
        state.unknown.reject(RejectReason::unknown_broker, 1);
        return IngressError::UnknownBroker(format!("{namespace}/{name}")).into_response();
    };
    let entry = &*entry;
    let admission = if entry.guard.is_open() {
        auth::Admission::default()
    } else {
        let client = req.extensions().get::<auth::ClientIdentity>();
        match entry.guard.admit(req.headers(), client).await {
            Ok(a) => a,
            Err(refusal) => {
                entry.guard.record(&refusal, &state.metrics);
                entry.metrics.reject(reject_reason(&refusal.error), 1);
                return refusal.error.into_response();
            }
        }
    };
    match accept(&state, entry, req, &admission).await {
        Ok(n) => {
            entry.metrics.accepted.inc_by(n as u64);
            let deduplicated = entry.log.take_deduplicated();
            if deduplicated > 0 {
                entry.metrics.deduplicated.inc_by(deduplicated);
            }
            StatusCode::ACCEPTED.into_response()
        }
        Err(e) => {
            let reason = reject_reason(&e);
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

/// The `ingress_rejected_total` reason of an error.
fn reject_reason(e: &IngressError) -> RejectReason {
    match e {
        IngressError::Invalid(_) | IngressError::Body(_) => RejectReason::invalid,
        IngressError::TooLarge { .. } | IngressError::ChannelTooLarge { .. } => {
            RejectReason::too_large
        }
        IngressError::MemoryBudget { .. } => RejectReason::memory_budget,
        IngressError::BodyTimeout { .. } => RejectReason::body_timeout,
        IngressError::UnsupportedMediaType(_) => RejectReason::unsupported_media_type,
        IngressError::Limit { error, .. } => error.reason(),
        IngressError::RetentionFull { .. } => RejectReason::retention_full,
        IngressError::Unauthenticated { .. } => RejectReason::unauthenticated,
        IngressError::Forbidden(_) => RejectReason::forbidden,
        IngressError::RateLimited { .. } => RejectReason::rate_limited,
        _ => RejectReason::unavailable,
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

/// How many bytes of budget a request holds per body byte: the body, the stored
/// encoding of its events, and for the JSON formats the decoded data (a copy; a
/// binary-mode event's data is a slice of the body).
fn budget_factor(mode: binding::Mode) -> usize {
    match mode {
        binding::Mode::Binary => 2,
        binding::Mode::Structured | binding::Mode::Batched => 3,
    }
}

/// Reads the body under the size limit, the read deadline and the memory budget.
/// A body refused before its end is read on and discarded up to
/// `--max-discard-bytes` within its deadline, so the client reads the answer
/// (413, 503) rather than a reset; past that the answer closes the connection.
async fn read_body(
    opts: &IngressOptions,
    headers: &HeaderMap,
    mut body: Body,
    factor: usize,
) -> Result<(Bytes, Charge), IngressError> {
    let limit = opts.max_body_bytes;
    let declared: Option<u64> = match headers.get(header::CONTENT_LENGTH) {
        Some(len) => Some(
            len.to_str()
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| IngressError::Body("invalid Content-Length".into()))?,
        ),
        None => None,
    };
    // What will be read: the body up to the limit, or for a refused one at most
    // --max-discard-bytes; never the declared length itself (a Content-Length of
    // 10^12 must not buy a deadline of months).
    let expected = declared
        .unwrap_or(limit as u64)
        .min((limit as u64).max(opts.max_discard_bytes));
    let timeout = opts.body_read_timeout
        + Duration::from_secs_f64(expected as f64 / opts.min_body_rate.max(1) as f64);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut charge = opts.budget.empty();
    let refused = match declared {
        Some(len) if len > limit as u64 => Some(IngressError::TooLarge {
            limit,
            close: false,
        }),
        Some(len) if !charge.try_grow(len as usize * factor) => Some(IngressError::MemoryBudget {
            budget: opts.budget.limit(),
        }),
        _ => None,
    };
    if let Some(refused) = refused {
        return Err(discard(body, 0, refused, opts, deadline).await);
    }
    let mut buf = bytes::BytesMut::new();
    let mut single: Option<Bytes> = None;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(IngressError::BodyTimeout { timeout }),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(IngressError::Body(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let have = single.as_ref().map_or(buf.len(), Bytes::len);
        if have + data.len() > limit {
            let refused = IngressError::TooLarge {
                limit,
                close: false,
            };
            return Err(discard(body, (have + data.len()) as u64, refused, opts, deadline).await);
        }
        if declared.is_none() && !charge.try_grow(data.len() * factor) {
            let refused = IngressError::MemoryBudget {
                budget: opts.budget.limit(),
            };
            return Err(discard(body, (have + data.len()) as u64, refused, opts, deadline).await);
        }
        // One frame (the usual case) is kept as it is, without a copy.
        match single.take() {
            None if buf.is_empty() => single = Some(data),
            None => buf.extend_from_slice(&data),
            Some(first) => {
                // The declared length at once: growing by doubling would allocate
                // up to twice the body (more than was charged).
                let want = declared.map_or(0, |n| n as usize);
                buf.reserve(want.max(first.len() + data.len()));
                buf.extend_from_slice(&first);
                buf.extend_from_slice(&data);
            }
        }
    }
    let body = single.unwrap_or_else(|| buf.freeze());
    Ok((body, charge))
}

/// Reads and drops the rest of a refused body (see [`read_body`]); the error to
/// answer with, asking for the connection to be closed when the body was not read
/// to its end.
async fn discard(
    mut body: Body,
    mut seen: u64,
    refused: IngressError,
    opts: &IngressOptions,
    deadline: tokio::time::Instant,
) -> IngressError {
    let finished = loop {
        if seen > opts.max_discard_bytes {
            break false;
        }
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Ok(None) => break true,
            Ok(Some(Err(_))) | Err(_) => break false,
        }
    };
    match refused {
        IngressError::TooLarge { limit, .. } => IngressError::TooLarge {
            limit,
            close: !finished,
        },
        other => other,
    }
}

async fn accept(
    state: &IngressState,
    entry: &BrokerEntry,
    req: Request<Body>,
    admission: &auth::Admission,
) -> Result<usize, IngressError> {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let limits = &state.opts.limits;
    let decode_error = |e: binding::DecodeError, mode: Option<binding::Mode>| match e {
        binding::DecodeError::UnsupportedMediaType(_) => {
            IngressError::UnsupportedMediaType(e.to_string())
        }
        binding::DecodeError::Invalid(e) => IngressError::Invalid(e),
        binding::DecodeError::TooManyAttributes(limit) => IngressError::Limit {
            error: event::LimitError::AttributesWhileDecoding { limit },
            headers: mode == Some(binding::Mode::Binary),
        },
    };
    let mode = binding::mode(&headers).map_err(|e| decode_error(e, None))?;
    // Held until the append is confirmed: the body, its events and their encoding.
    let (body, _charge) = read_body(&state.opts, &headers, body, budget_factor(mode)).await?;
    // The exact count (with `knativearrivaltime`) is checked below; this bound only
    // stops decoding early.
    let mut events = binding::decode_bounded(mode, &headers, body, limits.max_attributes)
        .map_err(|e| decode_error(e, Some(mode)))?;
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
    // The EventPolicies' filters hold for the events as stored too.
    if let Err(refusal) = admission.check_events(&events) {
        entry.guard.record(&refusal, &state.metrics);
        return Err(refusal.error);
    }
    admission.charge(events.len().saturating_sub(1));
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
        Ok(Err(e @ ChannelError::TooLarge { .. })) => Err(IngressError::ChannelTooLarge {
            reason: e.to_string(),
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
