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

use broker::event::{
    self, http as binding, AttrValue, Event, ERROR_CODE, ERROR_DEST, ERROR_TRIGGER, REASON,
};
use broker::telemetry::{LaneFailure, TriggerMetrics};
use futures_util::FutureExt;
use http::header::CONTENT_TYPE;

use crate::dead_letter::{entry_for, minimal_entry, printable, set_reason, store};
use crate::deliver::{deliver, deliver_with, Attempt};
use crate::trigger::{append_until_stored, Unstored};
pub use crate::trigger::{Abandoned, BrokerSinks, FaultHook, TriggerRuntime};

/// The default reply TTL (Knative's `MAX_TTL`).
pub const DEFAULT_MAX_TTL: i32 = 255;

/// What settling one event came to: a value the lane acts on (the checkpoint moves
/// past the event unless [`Settled::Abandoned`]) and counts in one place
/// ([`Settled::count`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The subscriber answered 2xx; what became of a reply in the response.
    Delivered(Replied),
    /// Delivery failed for good and the trigger's dead-letter sink took the event.
    ToSink,
    /// Stored in the broker's own dead-letter log: delivery (and the sink) failed for
    /// good, the event cannot be sent at all, or delivering it panicked.
    ToLog,
    /// Shutdown began while a reply or dead letter of the event was still being
    /// stored: the event is not done, and is delivered again after a restart.
    Abandoned,
}

/// What became of the reply in a successful delivery's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replied {
    /// No reply (or not a 200).
    Nothing,
    /// Stored in the broker's log.
    Stored,
    /// Dropped: its `knativebrokerttl` was used up.
    DroppedTtl,
    /// It could not go to the broker: the event went to the dead-letter log with the
    /// reason.
    DeadLettered,
}

impl Settled {
    /// Counts the outcome in the trigger's metrics: the one place that does.
    pub fn count(self, m: &TriggerMetrics) {
        match self {
            Settled::Delivered(replied) => {
                m.delivered.inc();
                match replied {
                    Replied::Nothing => {}
                    Replied::Stored => {
                        m.reply_stored();
                    }
                    Replied::DroppedTtl => {
                        m.reply_dropped_ttl();
                    }
                    Replied::DeadLettered => {
                        m.reply_dead_lettered();
                        m.dead_letter_entries.inc();
                    }
                }
            }
            Settled::ToSink => {
                m.dead_lettered();
            }
            Settled::ToLog => {
                m.dead_letter_logged();
                m.dead_letter_entries.inc();
            }
            Settled::Abandoned => {}
        }
    }
}

/// Delivers and settles one event; returns how (not yet counted: the caller counts
/// it with [`Settled::count`]).
pub async fn settle(rt: &TriggerRuntime, event: &Event) -> Settled {
    let cfg = &rt.cfg;
    let sinks = &rt.sinks;
    if let Some(fault) = &sinks.fault {
        (fault.0)(event);
    }
    // The outcome of the accepted response's reply (one response is accepted).
    let replied = std::sync::Mutex::new(Ok(Replied::Nothing));
    let d = deliver_with(
        &rt.clients.subscriber,
        &cfg.subscriber,
        &cfg.delivery,
        event,
        sinks.max_reply_bytes,
        &sinks.budget,
        |attempt| {
            // Decided now: the future must not borrow the attempt.
            let reply = reply_event(attempt);
            let response = Attempt {
                status: attempt.status,
                headers: http::HeaderMap::new(),
                body: attempt.body.clone(),
                error: None,
                body_error: None,
            };
            let replied = &replied;
            async move {
                let r = handle_reply(rt, event, reply, response).await;
                *replied.lock().unwrap_or_else(|p| p.into_inner()) = r;
                Ok(())
            }
        },
    )
    .await;
    rt.metrics.attempts.inc_by(u64::from(d.attempts));
    rt.metrics
        .retries
        .inc_by(u64::from(d.attempts.saturating_sub(1)));
    rt.metrics.observe_latency(d.elapsed.as_secs_f64());
    if d.delivered {
        return match replied.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Ok(r) => Settled::Delivered(r),
            Err(Abandoned) => Settled::Abandoned,
        };
    }
    if d.attempts == 0 {
        rt.metrics.lane_failure(LaneFailure::undeliverable);
    }
    rt.health.failed(
        d.last.status.map(|s| s.as_u16()),
        match (&d.last.error, d.last.status) {
            (Some(e), _) => e.clone(),
            (None, Some(s)) => format!("the subscriber answered {s} ({} attempts)", d.attempts),
            (None, None) => "no response".to_owned(),
        },
    );
    let dead = entry_for(event, cfg.subscriber.as_str(), &d.last);
    tracing::warn!(
        broker = %cfg.broker, trigger = %cfg.name, event_id = event.id(),
        status = ?d.last.status.map(|s| s.as_u16()), error = d.last.error.as_deref().unwrap_or(""),
        attempts = d.attempts, "delivery failed for good; dead-lettering"
    );
    if let Some(sink) = &cfg.delivery.dead_letter_sink {
        let sent = deliver(&rt.clients.sink, sink, &cfg.delivery, &dead).await;
        if sent.delivered {
            return Settled::ToSink;
        }
        tracing::warn!(broker = %cfg.broker, trigger = %cfg.name, event_id = event.id(), sink = %sink,
            status = ?sent.last.status.map(|s| s.as_u16()), error = sent.last.error.as_deref().unwrap_or(""),
            "dead-letter sink failed too; storing in the broker's dead-letter log");
    }
    let mut entry = dead;
    entry.set(ERROR_TRIGGER, AttrValue::String(cfg.name.as_str().into()));
    match store(
        sinks.dead_letters.as_ref(),
        &entry,
        &cfg.name,
        &sinks.shutdown,
    )
    .await
    {
        Ok(()) => Settled::ToLog,
        Err(Abandoned) => Settled::Abandoned,
    }
}

/// After settling `event` panicked: logs it, counts it, and stores the event in the
/// broker's dead-letter log with the panic message as its reason, so that the lane
/// goes on with the next event. Should building or storing that entry panic too (the
/// event itself is what breaks the code), a minimal entry with the event's `id`,
/// `source` and `type` is stored instead. The panic is counted here (a lane failure);
/// the outcome is returned, for the caller to count.
pub async fn after_panic(rt: &TriggerRuntime, event: &Event, message: &str) -> Settled {
    let cfg = &rt.cfg;
    rt.metrics.lane_failure(LaneFailure::panic);
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
    let stored = match AssertUnwindSafe(store(
        rt.sinks.dead_letters.as_ref(),
        &entry,
        &cfg.name,
        &rt.sinks.shutdown,
    ))
    .catch_unwind()
    .await
    {
        Ok(stored) => stored,
        Err(_) => {
            let entry = minimal_entry(event, cfg.name.as_str(), &reason);
            store(
                rt.sinks.dead_letters.as_ref(),
                &entry,
                &cfg.name,
                &rt.sinks.shutdown,
            )
            .await
        }
    };
    match stored {
        Ok(()) => Settled::ToLog,
        Err(Abandoned) => Settled::Abandoned,
    }
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

/// What a 200 response holds.
#[derive(Debug)]
pub enum Reply {
    /// No CloudEvent (or not a 200): nothing to store.
    None,
    /// A valid CloudEvent.
    Event(Box<Event>),
    /// It claims to be a CloudEvent (a `ce-specversion` header or a CloudEvents
    /// content type) but cannot become one: why.
    Bad(String),
}

/// Handles the response to a delivery that succeeded: a reply in it is stored (with
/// the TTL decremented, or dropped when the TTL is used up); one that cannot be read
/// in full, is invalid, exceeds the attribute limits or can never be stored goes to
/// the broker's dead-letter log with the reason. Never asks for the delivery to be
/// repeated: the subscriber got the event, and a transient failure to store the reply
/// retries the store (see [`append_until_stored`]).
async fn handle_reply(
    rt: &TriggerRuntime,
    original: &Event,
    reply: Reply,
    response: Attempt,
) -> Result<Replied, Abandoned> {
    let attempt = &response;
    let mut reply = match reply {
        Reply::None => return Ok(Replied::Nothing),
        Reply::Bad(reason) => return dead_letter_reply(rt, original, attempt, &reason).await,
        Reply::Event(e) => *e,
    };
    let ttl = ttl_of(original, rt.sinks.max_ttl).saturating_sub(1);
    if ttl <= 0 {
        tracing::warn!(broker = %rt.cfg.broker, trigger = %rt.cfg.name, event_id = original.id(), reply_id = reply.id(),
            "reply dropped: knativebrokerttl exhausted (a reply loop?)");
        return Ok(Replied::DroppedTtl);
    }
    reply.set(event::BROKER_TTL, AttrValue::Integer(ttl));
    reply.set(
        event::ARRIVAL_TIME,
        AttrValue::String(jiff::Timestamp::now().to_string().into()),
    );
    if let Err(e) = rt.sinks.limits.check(&reply) {
        let reason = format!("the reply exceeds a limit: {e}");
        return dead_letter_reply(rt, original, attempt, &reason).await;
    }
    let log = rt.sinks.events.as_ref();
    match append_until_stored(log, &reply, &rt.cfg.name, "reply", &rt.sinks.shutdown).await {
        Ok(()) => Ok(Replied::Stored),
        Err(Unstored::Abandoned) => Err(Abandoned),
        Err(Unstored::Never(e)) => {
            let reason = format!("the reply can never be stored: {e}");
            dead_letter_reply(rt, original, attempt, &reason).await
        }
    }
}

/// Stores a reply that cannot go to the broker: the original event (which the
/// subscriber did receive) goes to the broker's dead-letter log with
/// `knativeerrorcode` 200, the start of the reply's body in `knativeerrordata`, and
/// the reason in `triggerfishreason`. Redriving it to the subscriber asks for the
/// reply again.
async fn dead_letter_reply(
    rt: &TriggerRuntime,
    original: &Event,
    attempt: &Attempt,
    reason: &str,
) -> Result<Replied, Abandoned> {
    let cfg = &rt.cfg;
    tracing::error!(broker = %cfg.broker, trigger = %cfg.name, event_id = original.id(), reason,
        "reply cannot be stored; the event goes to the broker's dead-letter log with the reason");
    let mut entry = entry_for(original, cfg.subscriber.as_str(), attempt);
    entry.set(ERROR_TRIGGER, AttrValue::String(cfg.name.as_str().into()));
    entry.set(REASON, AttrValue::String(printable(reason, 1024).into()));
    store(
        rt.sinks.dead_letters.as_ref(),
        &entry,
        &cfg.name,
        &rt.sinks.shutdown,
    )
    .await?;
    Ok(Replied::DeadLettered)
}

/// What a 200 response holds: a CloudEvent, nothing, or something that claims to be a
/// CloudEvent and is not (binary or structured mode).
pub fn reply_event(attempt: &Attempt) -> Reply {
    if attempt.status.map(|s| s.as_u16()) != Some(200) {
        return Reply::None;
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
        return Reply::None;
    }
    if let Some(e) = &attempt.body_error {
        return Reply::Bad(format!("the reply could not be read: {e}"));
    }
    let mut events = match binding::decode(&attempt.headers, attempt.body.clone()) {
        Ok(e) => e,
        Err(e) => return Reply::Bad(format!("the reply is not a valid CloudEvent: {e}")),
    };
    if events.len() != 1 {
        return Reply::Bad(format!(
            "the reply is a batch of {} events; a reply must be one event",
            events.len()
        ));
    }
    let Some(reply) = events.pop() else {
        return Reply::None;
    };
    match event::validate(&reply) {
        Ok(()) => Reply::Event(Box::new(reply)),
        Err(e) => Reply::Bad(format!("the reply is not a valid CloudEvent: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use broker::event::{ERROR_DATA, ERROR_DATA_MAX};
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
            body_error: None,
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
        let d = entry_for(&original(), "http://sub/", &a);
        assert_eq!(d.get_str(ERROR_DEST), Some("http://sub/"));
        assert_eq!(d.get_str(ERROR_CODE), Some("400"));
        let data = base64::engine::general_purpose::STANDARD
            .decode(d.get_str(ERROR_DATA).expect("data"))
            .expect("base64");
        assert_eq!(data.len(), ERROR_DATA_MAX);
        // Transport errors: no code, no data.
        let d = entry_for(&original(), "http://sub/", &attempt(None, &[], b""));
        assert_eq!(d.get(ERROR_CODE), None);
        assert_eq!(d.get(ERROR_DATA), None);
        assert_eq!(d.id(), "1");
    }

    fn reply_id(r: Reply) -> Result<String, String> {
        match r {
            Reply::Event(e) => Ok(e.id().to_owned()),
            Reply::Bad(why) => Err(why),
            Reply::None => Err("none".into()),
        }
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
            reply_id(reply_event(&attempt(Some(200), &binary, b"x"))),
            Ok("r".into())
        );
        assert!(matches!(
            reply_event(&attempt(Some(202), &binary, b"x")),
            Reply::None
        ));
        assert!(matches!(
            reply_event(&attempt(
                Some(200),
                &[("content-type", "application/json")],
                b"{}"
            )),
            Reply::None
        ));
        let no_id = reply_id(reply_event(&attempt(
            Some(200),
            &[("ce-specversion", "1.0")],
            b"",
        )));
        assert!(
            no_id
                .as_ref()
                .is_err_and(|e| e.contains("not a valid CloudEvent")),
            "{no_id:?}"
        );
        let structured = attempt(
            Some(200),
            &[("content-type", "application/cloudevents+json")],
            br#"{"specversion":"1.0","id":"s","source":"/r","type":"reply"}"#,
        );
        assert_eq!(reply_id(reply_event(&structured)), Ok("s".into()));
        // A reply whose body could not be read in full is not stored without it.
        let mut cut = attempt(Some(200), &binary, b"");
        cut.body_error = Some("the connection closed early".into());
        let cut = reply_id(reply_event(&cut));
        assert!(
            cut.as_ref().is_err_and(|e| e.contains("could not be read")),
            "{cut:?}"
        );
        // A batch is not a reply.
        let batch = attempt(
            Some(200),
            &[("content-type", "application/cloudevents-batch+json")],
            br#"[{"specversion":"1.0","id":"s","source":"/r","type":"reply"},{"specversion":"1.0","id":"t","source":"/r","type":"reply"}]"#,
        );
        assert!(reply_id(reply_event(&batch)).is_err_and(|e| e.contains("batch of 2")));
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
