//! Delivery policy as values: the resolved [`DeliverySpec`], the retry decision for one
//! attempt's outcome ([`classify`]) and the backoff schedule ([`DeliverySpec::backoff`]).
//!
//! Nothing here sleeps or does I/O, so the rules are tested as tables.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use url::Url;

/// Backoff growth between retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffPolicy {
    /// `delay * 2^(n-1)` before the n-th retry.
    Exponential,
    /// `delay * n` before the n-th retry.
    Linear,
}

/// Content mode used when delivering to a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Binary mode (`ce-` headers), the default.
    Binary,
    /// Structured mode (`application/cloudevents+json`).
    Json,
}

/// A resolved delivery spec. A trigger's `delivery` replaces its broker's as a whole;
/// a broker without one gets [`DeliverySpec::broker_default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySpec {
    /// Retries after the first attempt.
    pub retry: u32,
    /// How the delay grows.
    pub backoff_policy: BackoffPolicy,
    /// The base delay.
    pub backoff_delay: Duration,
    /// Timeout of each attempt.
    pub timeout: Duration,
    /// Cap on an honoured `Retry-After`; `None` ignores `Retry-After`, as does zero.
    pub retry_after_max: Option<Duration>,
    /// Where events go when delivery fails for good.
    pub dead_letter_sink: Option<Url>,
    /// The dead-letter sink's `CACerts`: trusted for it besides the system's roots.
    pub dead_letter_sink_ca_certs: Option<crate::config::CaCerts>,
    /// Content mode for deliveries.
    pub format: Format,
}

/// Knative's default backoff delay (`config-br-defaults`).
pub const DEFAULT_BACKOFF_DELAY: Duration = Duration::from_millis(200);
/// Per-attempt timeout when a spec sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Cap on `Retry-After` when a spec sets none.
pub const DEFAULT_RETRY_AFTER_MAX: Duration = Duration::from_secs(60);

impl DeliverySpec {
    /// What a broker without `spec.delivery` uses: Knative's `config-br-defaults`
    /// (retry 10, exponential, PT0.2S).
    pub fn broker_default() -> DeliverySpec {
        DeliverySpec {
            retry: 10,
            ..DeliverySpec::unset()
        }
    }

    /// The values of fields a written `delivery` block leaves out.
    pub fn unset() -> DeliverySpec {
        DeliverySpec {
            retry: 0,
            backoff_policy: BackoffPolicy::Exponential,
            backoff_delay: DEFAULT_BACKOFF_DELAY,
            timeout: DEFAULT_TIMEOUT,
            retry_after_max: Some(DEFAULT_RETRY_AFTER_MAX),
            dead_letter_sink: None,
            dead_letter_sink_ca_certs: None,
            format: Format::Binary,
        }
    }

    /// The plain backoff before retry `n` (1-based), without `Retry-After`.
    pub fn backoff(&self, n: u32) -> Duration {
        let n = n.max(1);
        match self.backoff_policy {
            BackoffPolicy::Exponential => self
                .backoff_delay
                .saturating_mul(2u32.saturating_pow(n - 1)),
            BackoffPolicy::Linear => self.backoff_delay.saturating_mul(n),
        }
    }

    /// The whole backoff schedule: one delay per retry.
    pub fn schedule(&self) -> impl Iterator<Item = Duration> + '_ {
        (1..=self.retry).map(|n| self.backoff(n))
    }

    /// The wait before retry `n` given the server's `Retry-After` (if honoured):
    /// the longer of the backoff and `min(retry_after, retry_after_max)`.
    pub fn wait_before_retry(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.backoff(n);
        match (retry_after, self.retry_after_max) {
            (Some(ra), Some(max)) if !max.is_zero() => backoff.max(ra.min(max)),
            _ => backoff,
        }
    }
}

/// The outcome of one delivery attempt, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Delivered (any 2xx).
    Success,
    /// Failed, worth another attempt; carries the server's `Retry-After` if any.
    Retry {
        /// The delay the server asked for (429 and 503 only).
        retry_after: Option<Duration>,
    },
    /// Failed for good (other 4xx, 3xx, 1xx).
    NoRetry,
}

/// Classifies one attempt: `status` is `None` for transport errors and timeouts.
/// Retried: transport errors, timeouts, 5xx, 404, 408, 409, 429. Not retried: other
/// 4xx, 3xx and 1xx. `Retry-After` is read on 429 and 503 only.
pub fn classify(status: Option<StatusCode>, headers: &HeaderMap, now: SystemTime) -> RetryDecision {
    let Some(status) = status else {
        return RetryDecision::Retry { retry_after: None };
    };
    let code = status.as_u16();
    if status.is_success() {
        return RetryDecision::Success;
    }
    let retryable = status.is_server_error() || matches!(code, 404 | 408 | 409 | 429);
    if !retryable {
        return RetryDecision::NoRetry;
    }
    let retry_after = if matches!(code, 429 | 503) {
        headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now))
    } else {
        None
    };
    RetryDecision::Retry { retry_after }
}

/// Parses `Retry-After`: delta-seconds or an HTTP-date (RFC 9110 10.2.3). A date in
/// the past means zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = parse_http_date(value)?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form RFC 9110 says
/// senders must use.
fn parse_http_date(value: &str) -> Option<SystemTime> {
    let rest = value.split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let day: i8 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i16 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let h: i8 = hms.next()?.parse().ok()?;
    let m: i8 = hms.next()?.parse().ok()?;
    let s: i8 = hms.next()?.parse().ok()?;
    if parts.next()? != "GMT" || parts.next().is_some() {
        return None;
    }
    let dt = jiff::civil::DateTime::new(year, month, day, h, m, s, 0).ok()?;
    let ts = dt.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
    Some(SystemTime::from(ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(policy: BackoffPolicy, ms: u64, retry: u32) -> DeliverySpec {
        DeliverySpec {
            retry,
            backoff_policy: policy,
            backoff_delay: Duration::from_millis(ms),
            ..DeliverySpec::unset()
        }
    }

    #[test]
    fn classification_table() {
        let h = HeaderMap::new();
        let now = SystemTime::UNIX_EPOCH;
        let retry = RetryDecision::Retry { retry_after: None };
        let table: &[(Option<u16>, RetryDecision)] = &[
            (None, retry),
            (Some(200), RetryDecision::Success),
            (Some(202), RetryDecision::Success),
            (Some(204), RetryDecision::Success),
            (Some(100), RetryDecision::NoRetry),
            (Some(301), RetryDecision::NoRetry),
            (Some(304), RetryDecision::NoRetry),
            (Some(400), RetryDecision::NoRetry),
            (Some(401), RetryDecision::NoRetry),
            (Some(403), RetryDecision::NoRetry),
            (Some(404), retry),
            (Some(408), retry),
            (Some(409), retry),
            (Some(410), RetryDecision::NoRetry),
            (Some(413), RetryDecision::NoRetry),
            (Some(429), retry),
            (Some(500), retry),
            (Some(502), retry),
            (Some(503), retry),
            (Some(599), retry),
        ];
        for (code, want) in table {
            let status = code.map(|c| StatusCode::from_u16(c).expect("valid code"));
            assert_eq!(classify(status, &h, now), *want, "status {code:?}");
        }
    }

    #[test]
    fn retry_after_in_both_forms_on_429_and_503_only() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // 1994-11-06T08:49:37Z
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "7".parse().expect("value"));
        let seven = RetryDecision::Retry {
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(
            classify(Some(StatusCode::TOO_MANY_REQUESTS), &h, now),
            seven
        );
        assert_eq!(
            classify(Some(StatusCode::SERVICE_UNAVAILABLE), &h, now),
            seven
        );
        assert_eq!(
            classify(Some(StatusCode::INTERNAL_SERVER_ERROR), &h, now),
            RetryDecision::Retry { retry_after: None }
        );
        h.insert(
            http::header::RETRY_AFTER,
            "Sun, 06 Nov 1994 08:50:07 GMT".parse().expect("value"),
        );
        assert_eq!(
            classify(Some(StatusCode::SERVICE_UNAVAILABLE), &h, now),
            RetryDecision::Retry {
                retry_after: Some(Duration::from_secs(30))
            }
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 UTC", now),
            None
        );
    }

    #[test]
    fn exponential_and_linear_schedules() {
        let exp: Vec<_> = spec(BackoffPolicy::Exponential, 100, 5)
            .schedule()
            .collect();
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(exp, ms(&[100, 200, 400, 800, 1600]));
        let lin: Vec<_> = spec(BackoffPolicy::Linear, 100, 4).schedule().collect();
        assert_eq!(lin, ms(&[100, 200, 300, 400]));
        assert_eq!(spec(BackoffPolicy::Linear, 100, 0).schedule().count(), 0);
        // Huge retry counts saturate instead of overflowing.
        let big = spec(BackoffPolicy::Exponential, 100, 100);
        assert!(big.backoff(100) >= big.backoff(40));
    }

    #[test]
    fn retry_after_capped_and_longer_wins() {
        let mut s = spec(BackoffPolicy::Exponential, 1000, 3);
        s.retry_after_max = Some(Duration::from_secs(5));
        let secs = Duration::from_secs;
        assert_eq!(s.wait_before_retry(1, Some(secs(3))), secs(3));
        assert_eq!(s.wait_before_retry(1, Some(secs(60))), secs(5));
        assert_eq!(s.wait_before_retry(3, Some(secs(2))), secs(4));
        assert_eq!(s.wait_before_retry(1, None), secs(1));
        s.retry_after_max = Some(Duration::ZERO);
        assert_eq!(s.wait_before_retry(1, Some(secs(60))), secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn schedule_runs_on_paused_time() {
        let s = spec(BackoffPolicy::Exponential, 200, 10);
        let start = tokio::time::Instant::now();
        for d in s.schedule() {
            tokio::time::sleep(d).await;
        }
        // 0.2s * (2^10 - 1)
        assert_eq!(start.elapsed(), Duration::from_millis(200 * 1023));
    }
}
