//! Rate limits of a broker's ingress, from its annotations:
//!
//! - `triggerfish.dev/rate-limit`: events per second (`100`, `100/s`, `6000/m`,
//!   `36000/h`) the broker accepts from all senders together, or `off`;
//! - `triggerfish.dev/sender-rate-limit`: the same for each sender identity;
//! - `triggerfish.dev/rate-limit-burst` and `triggerfish.dev/sender-rate-limit-burst`:
//!   how many events may come at once after a quiet spell (default: one second's
//!   worth, at least 1).
//!
//! A broker without the annotation follows the `serve` flags (`--rate-limit`,
//! `--sender-rate-limit`), which use the same syntax.

use std::collections::BTreeMap;

use super::Ctx;

/// Annotation: the broker's rate limit.
pub const RATE_LIMIT_ANNOTATION: &str = "triggerfish.dev/rate-limit";
/// Annotation: the broker's burst.
pub const RATE_BURST_ANNOTATION: &str = "triggerfish.dev/rate-limit-burst";
/// Annotation: the rate limit per sender identity.
pub const SENDER_RATE_LIMIT_ANNOTATION: &str = "triggerfish.dev/sender-rate-limit";
/// Annotation: the burst per sender identity.
pub const SENDER_RATE_BURST_ANNOTATION: &str = "triggerfish.dev/sender-rate-limit-burst";

/// The most events per second a limit may name (beyond, say `off`).
const MAX_RATE: f64 = 1e9;
/// The least: one an hour (a bucket refilling slower would ask producers to wait
/// for days).
const MIN_RATE: f64 = 1.0 / 3600.0;
/// The largest burst.
const MAX_BURST: u32 = 1 << 30;

/// A token bucket's shape: refilled at `per_second`, holding at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Events per second.
    pub per_second: f64,
    /// Events that may come at once.
    pub burst: u32,
}

impl RateLimit {
    /// Parses `RATE[/s|/m|/h]`; the burst is one second's worth (at least 1).
    pub fn parse(text: &str) -> Result<RateLimit, String> {
        let text = text.trim();
        let (number, per) = match text.split_once('/') {
            None => (text, 1.0),
            Some((n, "s")) => (n, 1.0),
            Some((n, "m")) => (n, 60.0),
            Some((n, "h")) => (n, 3600.0),
            Some((_, unit)) => {
                return Err(format!(
                    "'{unit}' is not a unit: use s, m or h (100/s, 6000/m)"
                ))
            }
        };
        let count: f64 = number
            .trim()
            .parse()
            .ok()
            .filter(|n: &f64| n.is_finite() && *n > 0.0)
            .ok_or_else(|| {
                format!("'{text}' is not a positive rate such as 100/s, 6000/m or off")
            })?;
        let per_second = count / per;
        if per_second > MAX_RATE {
            return Err(format!("'{text}' is more than {MAX_RATE} per second"));
        }
        if per_second < MIN_RATE * (1.0 - 1e-9) {
            return Err(format!("'{text}' is less than 1/h"));
        }
        Ok(RateLimit {
            per_second,
            burst: (per_second.ceil() as u32).clamp(1, MAX_BURST),
        })
    }

    /// Parses a burst: a whole number from 1.
    pub fn parse_burst(text: &str) -> Result<u32, String> {
        match text.trim().parse::<u32>() {
            Ok(n) if (1..=MAX_BURST).contains(&n) => Ok(n),
            _ => Err(format!(
                "'{text}' is not a whole number from 1 to {MAX_BURST}"
            )),
        }
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/s (burst {})", self.per_second, self.burst)
    }
}

/// A broker's choice for one rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum RateSetting {
    /// No annotation: the `serve` flag decides.
    #[default]
    Inherit,
    /// `off`: no limit, whatever the flag says.
    Off,
    /// This limit.
    Limit(RateLimit),
}

impl RateSetting {
    /// The limit in force, given the flag's default.
    pub fn effective(self, default: Option<RateLimit>) -> Option<RateLimit> {
        match self {
            RateSetting::Inherit => default,
            RateSetting::Off => None,
            RateSetting::Limit(l) => Some(l),
        }
    }
}

/// Reads one limit and its burst from `annotations`; errors go to `ctx`.
pub(super) fn parse_setting(
    annotations: &BTreeMap<String, String>,
    rate_key: &str,
    burst_key: &str,
    ctx: &mut Ctx<'_>,
) -> RateSetting {
    let field = |k: &str| format!("metadata.annotations.{k}");
    let mut setting = match annotations.get(rate_key).map(|v| v.trim()) {
        None => RateSetting::Inherit,
        Some("off") => RateSetting::Off,
        Some(v) => match RateLimit::parse(v) {
            Ok(l) => RateSetting::Limit(l),
            Err(e) => {
                ctx.err(&field(rate_key), e);
                RateSetting::Inherit
            }
        },
    };
    if let Some(b) = annotations.get(burst_key) {
        match (RateLimit::parse_burst(b), &mut setting) {
            (Ok(n), RateSetting::Limit(l)) => l.burst = n,
            (Ok(_), _) => ctx.err(
                &field(burst_key),
                format!("needs a rate in {rate_key} on the same broker"),
            ),
            (Err(e), _) => ctx.err(&field(burst_key), e),
        }
    }
    setting
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        let l = RateLimit::parse("100").unwrap();
        assert_eq!((l.per_second, l.burst), (100.0, 100));
        let l = RateLimit::parse("6000/m").unwrap();
        assert_eq!((l.per_second, l.burst), (100.0, 100));
        let l = RateLimit::parse("1/h").unwrap();
        assert_eq!(l.burst, 1);
        assert!((l.per_second - 1.0 / 3600.0).abs() < 1e-12);
        assert_eq!(RateLimit::parse("2.5/s").unwrap().burst, 3);
        for bad in [
            "", "0", "-1", "x", "10/d", "NaN", "inf", "1e12", "1e-30/s", "0.5/h",
        ] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(RateLimit::parse_burst("5"), Ok(5));
        assert!(RateLimit::parse_burst("0").is_err());
    }
}
