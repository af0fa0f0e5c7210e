//! Field-level parsing shared by Broker and Trigger documents: `DeliverySpec`, ISO 8601
//! durations and Kubernetes object names.

use std::time::Duration;

use super::raw::RawDelivery;
use super::{resolve_destination, Ctx, LoadOptions};
use crate::delivery::{BackoffPolicy, DeliverySpec, Format};

pub(super) fn parse_delivery(
    raw: &RawDelivery,
    namespace: &str,
    field: &str,
    ctx: &mut Ctx<'_>,
    opts: &LoadOptions,
) -> DeliverySpec {
    let mut spec = DeliverySpec::unset();
    if let Some(r) = raw.retry {
        match u32::try_from(r) {
            Ok(r) => spec.retry = r,
            Err(_) => ctx.err(
                &format!("{field}.retry"),
                format!("{r} is not a whole number >= 0"),
            ),
        }
    }
    match raw.backoff_policy.as_deref() {
        None | Some("exponential") => spec.backoff_policy = BackoffPolicy::Exponential,
        Some("linear") => spec.backoff_policy = BackoffPolicy::Linear,
        Some(other) => ctx.err(
            &format!("{field}.backoffPolicy"),
            format!("'{other}' is not 'exponential' or 'linear'"),
        ),
    }
    let mut duration = |value: &Option<String>, name: &str, positive: bool| -> Option<Duration> {
        let v = value.as_ref()?;
        match parse_duration(v) {
            Ok(d) if positive && d.is_zero() => {
                ctx.err(&format!("{field}.{name}"), "must be greater than zero");
                None
            }
            Ok(d) => Some(d),
            Err(reason) => {
                ctx.err(&format!("{field}.{name}"), reason);
                None
            }
        }
    };
    if let Some(d) = duration(&raw.backoff_delay, "backoffDelay", false) {
        spec.backoff_delay = d;
    }
    if let Some(d) = duration(&raw.timeout, "timeout", true) {
        spec.timeout = d;
    }
    if let Some(d) = duration(&raw.retry_after_max, "retryAfterMax", false) {
        spec.retry_after_max = Some(d);
    }
    match raw.format.as_deref() {
        None | Some("binary") => spec.format = Format::Binary,
        Some("json") => spec.format = Format::Json,
        Some(other) => ctx.err(
            &format!("{field}.format"),
            format!("'{other}' is not 'json' or 'binary'"),
        ),
    }
    if let Some(dls) = &raw.dead_letter_sink {
        match resolve_destination(dls, namespace, opts) {
            Ok(url) => spec.dead_letter_sink = Some(url),
            Err(reason) => ctx.err(&format!("{field}.deadLetterSink"), reason),
        }
        spec.dead_letter_sink_ca_certs = super::ca_certs::parse_field(
            dls.ca_certs.as_deref(),
            &format!("{field}.deadLetterSink.CACerts"),
            ctx,
        );
    }
    spec
}

/// Parses an ISO 8601 duration such as `PT0.2S`, `PT1M30S` or `P1D` (days count as 24
/// hours). Years, months and weeks are rejected as ambiguous, and so are negative
/// durations.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("'{s}' is not an ISO 8601 duration such as PT0.2S or PT1M30S");
    let upper = s.trim().to_ascii_uppercase();
    if !upper.starts_with('P') {
        return Err(bad());
    }
    if upper.contains('Y')
        || upper.contains('W')
        || upper.split('T').next().is_some_and(|d| d.contains('M'))
    {
        return Err(format!(
            "'{s}': years, months and weeks are not allowed (use days or smaller units)"
        ));
    }
    let span: jiff::Span = upper.parse().map_err(|_| bad())?;
    let d = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| bad())?;
    Duration::try_from(d).map_err(|_| format!("'{s}' must not be negative"))
}

/// Whether `name` is a Kubernetes DNS-1123 label (`label`: a namespace) or
/// subdomain (most object names).
pub fn is_k8s_name(name: &str, label: bool) -> bool {
    let max = if label { 63 } else { 253 };
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !p.starts_with('-')
            && !p.ends_with('-')
    };
    name.len() <= max
        && if label {
            part_ok(name)
        } else {
            name.split('.').all(part_ok)
        }
}

pub(super) fn check_k8s_name(name: &str, label: bool, field: &str, ctx: &mut Ctx<'_>) {
    if name.is_empty() {
        ctx.err(field, "required");
        return;
    }
    let max = if label { 63 } else { 253 };
    let ok = is_k8s_name(name, label);
    if !ok {
        let what = if label {
            "DNS-1123 label"
        } else {
            "DNS-1123 subdomain"
        };
        ctx.err(
            field,
            format!("'{name}' is not a valid {what} (lower-case letters, digits and '-'{}, at most {max} characters)", if label { "" } else { " in '.'-separated parts" }),
        );
    }
}
