//! Every way a request can fail, each mapped to exactly one HTTP status.

use axum::response::{IntoResponse, Response};
use broker::event::{EventError, LimitError};
use http::{header, HeaderValue, StatusCode};

/// Seconds a producer is asked to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Why the ingress refused a request.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The body is not a valid CloudEvent (400).
    #[error("invalid CloudEvent: {0}")]
    Invalid(#[from] EventError),
    /// The path names no configured broker (404).
    #[error("no broker {0}")]
    UnknownBroker(String),
    /// The path is not `/<namespace>/<broker>` (404).
    #[error("no such endpoint")]
    NotFound,
    /// A method other than POST or OPTIONS (405).
    #[error("method {0} is not allowed")]
    MethodNotAllowed(String),
    /// The body exceeds the limit (413).
    #[error("body exceeds the limit of {limit} bytes (--max-body-bytes)")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
        /// Whether the connection is closed after the answer (the body was larger
        /// than `--max-discard-bytes`, or did not end in time, so it was not read to
        /// its end).
        close: bool,
    },
    /// The channel refused an event as too large for it (413): its own limit, not
    /// the body limit (NATS `max_payload`, `--nats-max-msg-size`, a Kafka broker's
    /// `message.max.bytes`).
    #[error("{reason}; the channel's limit, not --max-body-bytes, refused it")]
    ChannelTooLarge {
        /// The channel's account, with the size and its limit.
        reason: String,
    },
    /// The body did not arrive in time (408; the connection is closed).
    #[error("the body did not arrive within {timeout:?} (--body-read-timeout plus the body's size at --min-body-rate)")]
    BodyTimeout {
        /// How long it had.
        timeout: std::time::Duration,
    },
    /// The memory budget for event bytes is used up (503 with `Retry-After`).
    #[error("the ingress holds its memory budget of {budget} bytes of events (--memory-budget); retry shortly")]
    MemoryBudget {
        /// The budget in bytes.
        budget: usize,
    },
    /// The content type names an unsupported format (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The channel could not store the event in time (503).
    #[error("broker {broker} cannot take events right now: {reason}")]
    Unavailable {
        /// The broker.
        broker: String,
        /// Why.
        reason: String,
    },
    /// The partition is at `--retention-bytes` with events a trigger has not yet
    /// received (503, backpressure: retention keeps undelivered events).
    #[error("broker {broker} is at its retention limit: {reason}")]
    RetentionFull {
        /// The broker.
        broker: String,
        /// The channel's account, naming the trigger and the limit.
        reason: String,
    },
    /// An event exceeds an attribute limit: 431 when its attributes came as header
    /// fields (binary mode), else 413.
    #[error("{error}")]
    Limit {
        /// Which limit, with the value.
        error: LimitError,
        /// Whether the attributes were header fields.
        headers: bool,
    },
    /// Reading the request body failed (400).
    #[error("cannot read request body: {0}")]
    Body(String),
    /// No sender identity where the broker needs one, or a bearer token that does
    /// not verify (401 with `WWW-Authenticate`).
    #[error("{detail}")]
    Unauthenticated {
        /// The broker's OIDC audience (the `realm`).
        audience: String,
        /// Whether a token was presented and refused (`error="invalid_token"`).
        invalid_token: bool,
        /// Why, in one sentence (never the token).
        detail: String,
    },
    /// A sender (or an event) the broker's EventPolicies or default authorization
    /// mode do not admit (403).
    #[error("{0}")]
    Forbidden(String),
    /// Over a rate limit (429 with `Retry-After`).
    #[error("broker {broker} is over its {scope} rate limit of {limit}; retry after {retry_after_secs} s")]
    RateLimited {
        /// The broker.
        broker: String,
        /// `broker` (all senders) or `sender` (this sender).
        scope: &'static str,
        /// The limit.
        limit: String,
        /// Whole seconds until a token is there.
        retry_after_secs: u64,
    },
}

impl IngressError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            IngressError::Invalid(_) | IngressError::Body(_) => StatusCode::BAD_REQUEST,
            IngressError::UnknownBroker(_) | IngressError::NotFound => StatusCode::NOT_FOUND,
            IngressError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            IngressError::TooLarge { .. } | IngressError::ChannelTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            IngressError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            IngressError::MemoryBudget { .. } => StatusCode::SERVICE_UNAVAILABLE,
            IngressError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngressError::Unavailable { .. } | IngressError::RetentionFull { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            IngressError::Limit { headers: true, .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            IngressError::Limit { headers: false, .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngressError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            IngressError::Forbidden(_) => StatusCode::FORBIDDEN,
            IngressError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            IngressError::Invalid(_) => "invalid event",
            IngressError::Body(_) => "unreadable body",
            IngressError::UnknownBroker(_) => "unknown broker",
            IngressError::NotFound => "not found",
            IngressError::MethodNotAllowed(_) => "method not allowed",
            IngressError::TooLarge { .. } => "body too large",
            IngressError::ChannelTooLarge { .. } => "event too large for the channel",
            IngressError::BodyTimeout { .. } => "body timeout",
            IngressError::MemoryBudget { .. } => "memory budget",
            IngressError::UnsupportedMediaType(_) => "unsupported media type",
            IngressError::Unavailable { .. } => "unavailable",
            IngressError::RetentionFull { .. } => "retention limit reached",
            IngressError::Limit { .. } => "attribute limit exceeded",
            IngressError::Unauthenticated { .. } => "unauthenticated",
            IngressError::Forbidden(_) => "forbidden",
            IngressError::RateLimited { .. } => "rate limited",
        }
    }
}

impl IntoResponse for IngressError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({ "error": self.kind(), "detail": self.to_string() });
        let mut resp = (status, axum::Json(body)).into_response();
        let headers = resp.headers_mut();
        match &self {
            IngressError::Unauthenticated {
                audience,
                invalid_token,
                ..
            } => {
                // RFC 6750 §3; the realm is the audience a token must be for.
                let mut v = format!("Bearer realm=\"{}\"", audience.replace('"', ""));
                if *invalid_token {
                    v.push_str(", error=\"invalid_token\"");
                }
                if let Ok(v) = HeaderValue::from_str(&v) {
                    headers.insert(header::WWW_AUTHENTICATE, v);
                }
            }
            IngressError::RateLimited {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        match self {
            IngressError::MethodNotAllowed(_) => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
            }
            IngressError::Unavailable { .. }
            | IngressError::RetentionFull { .. }
            | IngressError::MemoryBudget { .. } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            }
            IngressError::TooLarge { close: true, .. } | IngressError::BodyTimeout { .. } => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}
