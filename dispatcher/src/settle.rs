//! Settling one event for one trigger: deliver it, store a reply, or dead-letter it.
//! An event is done (and the checkpoint may pass it) only when one of these happened:
//!
//! 1. the subscriber answered 2xx (and a reply in a 200, if any, was stored or dropped
//!    for its TTL);
//! 2. delivery failed for good and the dead-letter sink answered 2xx;
//! 3. otherwise, the event was appended to the broker's own dead-letter log.
//!
//! Step 3 retries until it succeeds or shutdown abandons it (the event is then not
//! done, so it is delivered again after a restart): nothing is dropped silently.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use broker::channel::BrokerLog;
use broker::delivery::DeliverySpec;
use broker::event::{self, http as binding, AttrValue, Event};
use futures_util::FutureExt;
use http::header::CONTENT_TYPE;
use tokio_util::sync::CancellationToken;

use crate::deliver::{deliver, deliver_with, Attempt, HttpClient};
use crate::lane::TriggerRuntime;

/// Extension naming the URL whose delivery failed.
pub const ERROR_DEST: &str = "knativeerrordest";
/// Extension with the failed delivery's HTTP status (absent for transport errors).
pub const ERROR_CODE: &str = "knativeerrorcode";
/// Extension with base64 of at most the first 1024 bytes of the failed response body.
pub const ERROR_DATA: &str = "knativeerrordata";
/// Extension naming the trigger, on entries of the broker's dead-letter log.
pub const ERROR_TRIGGER: &str = "triggerfishtrigger";
/// How many response body bytes go into `knativeerrordata`.
pub const ERROR_DATA_MAX: usize = 1024;
/// The default reply TTL (Knative's `MAX_TTL`).
pub const DEFAULT_MAX_TTL: i32 = 255;

/// A test-only fault: called with each event just before its delivery. A hook that
/// panics stands for a bug in encoding or delivery (`tests/e2e_poison.rs`).
#[derive(Clone)]
pub struct FaultHook(pub Arc<dyn Fn(&Event) + Send + Sync>);

impl std::fmt::Debug for FaultHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultHook")
    }
}

/// Where a broker's replies and dead letters go.
pub struct BrokerSinks {
    /// The broker's event log (replies are appended here).
    pub events: Arc<dyn BrokerLog>,
    /// The broker's own dead-letter log.
    pub dead_letters: Arc<dyn BrokerLog>,
    /// `knativebrokerttl` of events that carry none.
    pub max_ttl: i32,
    /// Abandons the dead-letter log retry loop.
    pub shutdown: CancellationToken,
    /// See [`FaultHook`]; `None` outside tests.
    pub fault: Option<FaultHook>,
}

/// Delivers and settles one event; returns when it is done.
pub async fn settle(rt: &TriggerRuntime, client: &HttpClient, event: &Event) {
    let cfg = &rt.cfg;
    let sinks = &rt.sinks;
    if let Some(fault) = &sinks.fault {
        (fault.0)(event);
    }
    let d = deliver_with(client, &cfg.subscriber, &cfg.delivery, event, |attempt| {
        store_reply(rt, event, reply_event(attempt))
    })
    .await;
    rt.metrics.attempts.inc_by(u64::from(d.attempts));
    rt.metrics
        .retries
        .inc_by(u64::from(d.attempts.saturating_sub(1)));
    rt.metrics.latency.observe(d.elapsed.as_secs_f64());
    if d.delivered {
        rt.metrics.delivered.inc();
        return;
    }
    if d.attempts == 0 {
        rt.metrics.undeliverable.inc();
    }
    let dead = dead_letter_event(event, cfg.subscriber.as_str(), &d.last);
    tracing::warn!(
        broker = %cfg.broker, trigger = %cfg.name, event_id = event.id(),
        status = ?d.last.status.map(|s| s.as_u16()), error = d.last.error.as_deref().unwrap_or(""),
        attempts = d.attempts, "delivery failed for good; dead-lettering"
    );
    if let Some(sink) = &cfg.delivery.dead_letter_sink {
        let sent = deliver(client, sink, &cfg.delivery, &dead).await;
        if sent.delivered {
            rt.metrics.dead_lettered.inc();
            return;
        }
        tracing::warn!(broker = %cfg.broker, trigger = %cfg.name, event_id = event.id(), sink = %sink,
            status = ?sent.last.status.map(|s| s.as_u16()), error = sent.last.error.as_deref().unwrap_or(""),
            "dead-letter sink failed too; storing in the broker's dead-letter log");
    }
    let mut entry = dead;
    entry.set(ERROR_TRIGGER, AttrValue::String(cfg.name.as_str().into()));
    store_dead_letter(sinks, &cfg.delivery, &entry, &cfg.name).await;
    rt.metrics.dead_letter_log.inc();
    rt.metrics.dead_letter_entries.inc();
}

/// After settling `event` panicked: logs it, counts it, and stores the event in the
/// broker's dead-letter log with the panic message as its reason, so that the lane
/// goes on with the next event. Should building or storing that entry panic too (the
/// event itself is what breaks the code), a minimal entry with the event's `id`,
/// `source` and `type` is stored instead.
pub async fn after_panic(rt: &TriggerRuntime, event: &Event, message: &str) {
    let cfg = &rt.cfg;
    rt.metrics.panics.inc();
    tracing::error!(broker = %cfg.broker, trigger = %cfg.name, event_id = event.id(), panic = message,
        "delivering an event panicked; it goes to the broker's dead-letter log and the trigger goes on");
    let reason = printable(&format!("panic while delivering: {message}"), 512);
    let build = || {
        let mut e = event.clone();
        e.set(
            ERROR_DEST,
            AttrValue::String(cfg.subscriber.as_str().into()),
        );
        e.remove(ERROR_CODE);
        e.set(ERROR_TRIGGER, AttrValue::String(cfg.name.as_str().into()));
        set_reason(&mut e, &reason);
        e
    };
    let entry = std::panic::catch_unwind(AssertUnwindSafe(build))
        .unwrap_or_else(|_| minimal_entry(event, cfg.name.as_str(), &reason));
    let stored = AssertUnwindSafe(store_dead_letter(
        &rt.sinks,
        &cfg.delivery,
        &entry,
        &cfg.name,
    ))
    .catch_unwind()
    .await;
    if stored.is_err() {
        let entry = minimal_entry(event, cfg.name.as_str(), &reason);
        store_dead_letter(&rt.sinks, &cfg.delivery, &entry, &cfg.name).await;
    }
    rt.metrics.dead_letter_log.inc();
    rt.metrics.dead_letter_entries.inc();
}

/// The reason extension on dead-letter entries that did not come from a failed
/// delivery (a panic, a malformed record).
pub const REASON: &str = "triggerfishreason";

/// Sets the reason of a dead-letter entry that did not come from a failed delivery:
/// in [`REASON`], and base64 in `knativeerrordata` as for failed deliveries. Control
/// characters are replaced (attribute values must be printable).
pub fn set_reason(e: &mut Event, reason: &str) {
    let reason = printable(reason, usize::MAX);
    e.set(
        ERROR_DATA,
        AttrValue::String(
            base64::engine::general_purpose::STANDARD
                .encode(reason.as_bytes())
                .into(),
        ),
    );
    e.set(REASON, AttrValue::String(reason.into()));
}

/// A dead-letter entry that keeps only the event's identity: for an event that the
/// code cannot even copy or encode.
fn minimal_entry(event: &Event, trigger: &str, reason: &str) -> Event {
    let mut e = Event::new();
    e.set_str("specversion", "1.0");
    for name in [event::ID, event::SOURCE, event::TYPE] {
        let v = event.get_str(name).unwrap_or("unknown");
        e.set_str(name, printable(v, 1024));
    }
    e.set_str(ERROR_TRIGGER, trigger);
    e.set_str(REASON, format!("{reason} (attributes and data not kept)"));
    e
}

/// `s` cut to at most `max` bytes with control characters replaced by spaces (an
/// attribute value must be printable).
fn printable(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The text of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// The event as it goes to a dead-letter sink: the original plus the three
/// `knativeerror*` extensions.
pub fn dead_letter_event(event: &Event, dest: &str, last: &Attempt) -> Event {
    let mut dead = event.clone();
    dead.set(ERROR_DEST, AttrValue::String(dest.into()));
    match last.status {
        Some(s) => dead.set(ERROR_CODE, AttrValue::String(s.as_u16().to_string().into())),
        None => {
            dead.remove(ERROR_CODE);
        }
    }
    let body = &last.body[..last.body.len().min(ERROR_DATA_MAX)];
    if body.is_empty() {
        dead.remove(ERROR_DATA);
    } else {
        let b64 = base64::engine::general_purpose::STANDARD.encode(body);
        dead.set(ERROR_DATA, AttrValue::String(b64.into()));
    }
    dead
}

async fn store_dead_letter(sinks: &BrokerSinks, spec: &DeliverySpec, entry: &Event, trigger: &str) {
    let mut wait = spec.backoff_delay.max(Duration::from_millis(50));
    loop {
        match sinks.dead_letters.append(std::slice::from_ref(entry)).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(broker = %sinks.events.broker(), trigger, event_id = entry.id(), error = %e,
                    "cannot store a dead letter; retrying (the trigger's checkpoint waits for it)");
            }
        }
        tokio::select! {
            () = sinks.shutdown.cancelled() => {
                // Not done: redelivered after restart.
                std::future::pending::<()>().await;
            }
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Reads the TTL of an event (`knativebrokerttl`): `max` when absent or unreadable,
/// and never more than `max` (`--max-ttl`), so a producer cannot set a reply loop
/// going for 2^31 hops.
pub fn ttl_of(event: &Event, max: i32) -> i32 {
    let ttl = match event.get(event::BROKER_TTL) {
        Some(AttrValue::Integer(i)) => *i,
        Some(AttrValue::String(s)) => s.trim().parse().unwrap_or(max),
        _ => max,
    };
    ttl.min(max)
}

/// If a 200 response carries a valid CloudEvent, stores it in the broker with the TTL
/// decremented, or drops it when the TTL is used up. Other responses are ignored.
async fn store_reply(
    rt: &TriggerRuntime,
    original: &Event,
    reply: Option<Event>,
) -> Result<(), String> {
    let Some(mut reply) = reply else {
        return Ok(());
    };
    let ttl = ttl_of(original, rt.sinks.max_ttl).saturating_sub(1);
    if ttl <= 0 {
        rt.metrics.replies_dropped_ttl.inc();
        tracing::warn!(broker = %rt.cfg.broker, trigger = %rt.cfg.name, event_id = original.id(), reply_id = reply.id(),
            "reply dropped: knativebrokerttl exhausted (a reply loop?)");
        return Ok(());
    }
    reply.set(event::BROKER_TTL, AttrValue::Integer(ttl));
    reply.set(
        event::ARRIVAL_TIME,
        AttrValue::String(jiff::Timestamp::now().to_string().into()),
    );
    rt.sinks
        .events
        .append(std::slice::from_ref(&reply))
        .await
        .map_err(|e| format!("the reply could not be stored: {e}"))?;
    rt.metrics.replies_stored.inc();
    Ok(())
}

/// The CloudEvent in a 200 response, if it holds a valid one (binary or structured).
pub fn reply_event(attempt: &Attempt) -> Option<Event> {
    if attempt.status.map(|s| s.as_u16()) != Some(200) {
        return None;
    }
    let has_ce = attempt.headers.contains_key("ce-specversion")
        || attempt
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.to_ascii_lowercase()
                    .starts_with("application/cloudevents")
            });
    if !has_ce {
        if !attempt.body.is_empty() {
            tracing::debug!("200 response body is not a CloudEvent; ignored");
        }
        return None;
    }
    let mut events = match binding::decode(&attempt.headers, attempt.body.clone()) {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(error = %e, "reply is not a valid CloudEvent; ignored");
            return None;
        }
    };
    if events.len() != 1 {
        tracing::debug!(
            count = events.len(),
            "batched replies are not supported; ignored"
        );
        return None;
    }
    let reply = events.pop()?;
    match event::validate(&reply) {
        Ok(()) => Some(reply),
        Err(e) => {
            tracing::debug!(error = %e, "reply is not a valid CloudEvent; ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, StatusCode};

    use super::*;

    fn attempt(
        status: Option<u16>,
        headers: &[(&'static str, &'static str)],
        body: &'static [u8],
    ) -> Attempt {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, HeaderValue::from_static(v));
        }
        Attempt {
            status: status.map(|s| StatusCode::from_u16(s).expect("status")),
            headers: h,
            body: Bytes::from_static(body),
            error: None,
        }
    }

    fn original() -> Event {
        let mut e = Event::new();
        e.set_str("specversion", "1.0");
        e.set_str("id", "1");
        e.set_str("source", "/s");
        e.set_str("type", "t");
        e
    }

    #[test]
    fn dead_letter_extensions() {
        let long = [b'x'; 2000];
        let mut a = attempt(Some(400), &[], b"");
        a.body = Bytes::copy_from_slice(&long);
        let d = dead_letter_event(&original(), "http://sub/", &a);
        assert_eq!(d.get_str(ERROR_DEST), Some("http://sub/"));
        assert_eq!(d.get_str(ERROR_CODE), Some("400"));
        let data = base64::engine::general_purpose::STANDARD
            .decode(d.get_str(ERROR_DATA).expect("data"))
            .expect("base64");
        assert_eq!(data.len(), ERROR_DATA_MAX);
        // Transport errors: no code, no data.
        let d = dead_letter_event(&original(), "http://sub/", &attempt(None, &[], b""));
        assert_eq!(d.get(ERROR_CODE), None);
        assert_eq!(d.get(ERROR_DATA), None);
        assert_eq!(d.id(), "1");
    }

    #[test]
    fn replies_are_valid_cloudevents_in_200_only() {
        let binary = [
            ("ce-specversion", "1.0"),
            ("ce-id", "r"),
            ("ce-source", "/r"),
            ("ce-type", "reply"),
        ];
        assert_eq!(
            reply_event(&attempt(Some(200), &binary, b"x")).map(|e| e.id().to_owned()),
            Some("r".into())
        );
        assert!(reply_event(&attempt(Some(202), &binary, b"x")).is_none());
        assert!(reply_event(&attempt(
            Some(200),
            &[("content-type", "application/json")],
            b"{}"
        ))
        .is_none());
        assert!(
            reply_event(&attempt(Some(200), &[("ce-specversion", "1.0")], b"")).is_none(),
            "invalid: no id"
        );
        let structured = attempt(
            Some(200),
            &[("content-type", "application/cloudevents+json")],
            br#"{"specversion":"1.0","id":"s","source":"/r","type":"reply"}"#,
        );
        assert_eq!(
            reply_event(&structured).map(|e| e.id().to_owned()),
            Some("s".into())
        );
    }

    #[test]
    fn ttl_reading() {
        let mut e = original();
        assert_eq!(ttl_of(&e, 255), 255);
        e.set_str(event::BROKER_TTL, "7");
        assert_eq!(ttl_of(&e, 255), 7);
        e.set(event::BROKER_TTL, AttrValue::Integer(3));
        assert_eq!(ttl_of(&e, 255), 3);
        e.set_str(event::BROKER_TTL, "junk");
        assert_eq!(ttl_of(&e, 255), 255);
        // A producer's TTL above the maximum is capped; extremes do not overflow.
        e.set(event::BROKER_TTL, AttrValue::Integer(i32::MAX));
        assert_eq!(ttl_of(&e, 255), 255);
        e.set_str(event::BROKER_TTL, "2147483647");
        assert_eq!(ttl_of(&e, 10), 10);
        e.set(event::BROKER_TTL, AttrValue::Integer(i32::MIN));
        assert_eq!(ttl_of(&e, 255), i32::MIN);
        assert_eq!(
            ttl_of(&e, 255).saturating_sub(1),
            i32::MIN,
            "no wrap to i32::MAX"
        );
    }
}
