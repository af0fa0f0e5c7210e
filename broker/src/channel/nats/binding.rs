//! The CloudEvents NATS protocol binding (`bindings_nats-protocol-binding.md`), so that
//! any NATS client can read what Triggerfish stores and Triggerfish can read what any
//! conforming producer publishes.
//!
//! **Writing** is always binary content mode (section 3.1): every attribute, extensions
//! and `datacontenttype` included, becomes a `ce-<name>` header whose value is the
//! canonical string form, percent-encoded per 3.1.3.2 (space, `"`, `%` and everything
//! outside printable ASCII); the data bytes are the payload. A `Content-Type` header
//! repeats the (effective) content type for tools that look there; it is left out when
//! it would read as `application/cloudevents*`, which a receiver takes as structured
//! mode.
//!
//! Two headers outside the `ce-` space keep our own round trip exact where binary mode
//! is lossy, and are ignored by other readers (the spec decodes `ce-` headers only):
//! - `Triggerfish-Attributes: specversion,id,source,type,n:integer,...`: attribute order
//!   (NATS headers are a map) and the types of non-string extensions.
//! - `Triggerfish-Data: binary|json|text`: that the event has data (possibly empty)
//!   and how it arrived, which decides how structured delivery writes it back.
//!
//! **Reading** accepts both modes: `Content-Type: application/cloudevents+json` is
//! structured mode (the JSON event format); otherwise `ce-` headers are matched
//! case-insensitively, double-quoted values unescaped and one round of percent-decoding
//! applied (invalid UTF-8 rejected). Every failure is a [`BindingError`], never a panic:
//! the message came from outside.

use std::collections::HashMap;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;

use crate::event::http::decode_header_value;
use crate::event::{
    self, json, AttrValue, DataKind, Event, EventError, Str, DATACONTENTTYPE, ID, SOURCE,
    SPECVERSION, TYPE,
};

/// Header carrying attribute order and non-string types.
pub const ATTRIBUTES_HEADER: &str = "Triggerfish-Attributes";
/// Header carrying the data kind (present when the event has data).
pub const DATA_HEADER: &str = "Triggerfish-Data";
/// JetStream's de-duplication header.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Media type prefix that marks structured mode.
const STRUCTURED_PREFIX: &str = "application/cloudevents";
const STRUCTURED_JSON: &str = "application/cloudevents+json";

/// Why a NATS message is not a CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// A header is malformed.
    #[error("header {header}: {reason}")]
    Header {
        /// The header name.
        header: String,
        /// Why.
        reason: String,
    },
    /// A structured-mode message with an event format other than JSON.
    #[error("unsupported event format '{0}' (only {STRUCTURED_JSON})")]
    UnsupportedFormat(String),
    /// The message decodes but is not a valid CloudEvent.
    #[error("not a valid CloudEvent: {0}")]
    Invalid(#[from] EventError),
    /// An event cannot be written (an attribute name unfit for a header).
    #[error("cannot encode attribute '{0}' as a NATS header")]
    Encode(String),
}

fn header_err(header: &str, reason: impl Into<String>) -> BindingError {
    BindingError::Header {
        header: header.to_owned(),
        reason: reason.into(),
    }
}

/// Percent-encodes an attribute value for a header (3.1.3.2): space, `"`, `%` and every
/// byte outside printable ASCII, upper-case hex.
pub fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x21..=0x7E).contains(&b) && b != b'"' && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    out
}

fn name(s: &str) -> Result<HeaderName, BindingError> {
    s.parse().map_err(|_| BindingError::Encode(s.to_owned()))
}

fn value(header: &str, s: String) -> Result<HeaderValue, BindingError> {
    s.parse()
        .map_err(|_| header_err(header, "value contains CR or LF"))
}

/// Encodes an event in binary content mode: the headers (without `Nats-Msg-Id`) and
/// the payload.
pub fn encode(event: &Event) -> Result<(HeaderMap, Bytes), BindingError> {
    let mut headers = HeaderMap::new();
    let mut buf = String::new();
    let mut order = String::with_capacity(64);
    for (attr, v) in event.attributes() {
        if attr.is_empty() || !attr.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(BindingError::Encode(attr.to_owned()));
        }
        let header = format!("ce-{attr}");
        let encoded = percent_encode(v.canonical(&mut buf));
        headers.insert(name(&header)?, value(&header, encoded)?);
        if !order.is_empty() {
            order.push(',');
        }
        order.push_str(attr);
        match v {
            AttrValue::String(_) => {}
            AttrValue::Integer(_) => order.push_str(":integer"),
            AttrValue::Boolean(_) => order.push_str(":boolean"),
        }
    }
    headers.insert(name(ATTRIBUTES_HEADER)?, value(ATTRIBUTES_HEADER, order)?);
    if let Some(ct) = event.effective_content_type() {
        let printable = ct.bytes().all(|b| (0x20..=0x7E).contains(&b));
        if printable && !starts_with_ignore_case(ct.trim_start(), STRUCTURED_PREFIX) {
            headers.insert(name("Content-Type")?, value("Content-Type", ct.to_owned())?);
        }
    }
    let payload = match event.data() {
        Some(data) => {
            let kind = match event.data_kind() {
                DataKind::Binary => "binary",
                DataKind::Json => "json",
                DataKind::Text => "text",
            };
            headers.insert(name(DATA_HEADER)?, value(DATA_HEADER, kind.to_owned())?);
            data.clone()
        }
        None => Bytes::new(),
    };
    Ok((headers, payload))
}

/// The size a message takes on the wire and in the stream (headers block + payload),
/// which is what `max_payload` and a stream's max message size limit.
pub fn wire_size(headers: &HeaderMap, payload: &Bytes) -> usize {
    // "NATS/1.0\r\n", then "name: value\r\n" per value, then "\r\n".
    let mut n = 10 + 2;
    for (k, values) in headers.iter() {
        let k: &str = k.as_ref();
        for v in values {
            n += k.len() + 2 + v.as_str().len() + 2;
        }
    }
    n + payload.len()
}

/// The `Nats-Msg-Id` of an event: 128 bits of SHA-256 over its `source` and `id`
/// (length-prefixed, so `("ab","c")` and `("a","bc")` differ), in hex. A producer's
/// retry of the same event gets the same id and JetStream stores it once within the
/// stream's duplicate window; distinct events cannot be made to collide.
pub fn msg_id(event: &Event) -> String {
    let source = event.source().as_bytes();
    let id = event.id().as_bytes();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(source.len() as u64).to_be_bytes());
    ctx.update(source);
    ctx.update(id);
    let digest = ctx.finish();
    let mut out = String::with_capacity(32);
    for b in digest.as_ref().iter().take(16) {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// The single value of a header looked up case-insensitively; an error when it is
/// given more than once.
fn single<'a>(headers: &'a HeaderMap, wanted: &str) -> Result<Option<&'a str>, BindingError> {
    let mut found: Option<&str> = None;
    for (k, values) in headers.iter() {
        let k: &str = k.as_ref();
        if !k.eq_ignore_ascii_case(wanted) {
            continue;
        }
        for v in values {
            if found.is_some() {
                return Err(header_err(wanted, "given more than once"));
            }
            found = Some(v.as_str());
        }
    }
    Ok(found)
}

/// Decodes a NATS message into a validated event.
pub fn decode(headers: Option<&HeaderMap>, payload: Bytes) -> Result<Event, BindingError> {
    let empty = HeaderMap::new();
    let headers = headers.unwrap_or(&empty);
    let content_type = single(headers, "Content-Type")?;
    let structured = match content_type {
        Some(ct) if starts_with_ignore_case(ct.trim_start(), STRUCTURED_PREFIX) => {
            let essence = ct.split(';').next().unwrap_or("").trim();
            if !essence.eq_ignore_ascii_case(STRUCTURED_JSON) {
                return Err(BindingError::UnsupportedFormat(ct.to_owned()));
            }
            true
        }
        // Without headers there is no binary mode: a pre-2.2 style structured message.
        _ => headers.is_empty(),
    };
    let event = if structured {
        json::parse_event(&payload)?
    } else {
        decode_binary(headers, content_type, payload)?
    };
    event::validate(&event)?;
    Ok(event)
}

fn decode_binary(
    headers: &HeaderMap,
    content_type: Option<&str>,
    payload: Bytes,
) -> Result<Event, BindingError> {
    // Attribute name -> decoded value, from the ce- headers (a hash map: a message
    // of 100,000 headers must not cost a tree's comparisons per header).
    let mut attrs: HashMap<String, Str> = HashMap::new();
    for (k, values) in headers.iter() {
        let k: &str = k.as_ref();
        if k.len() <= 3 || !k.as_bytes()[..3].eq_ignore_ascii_case(b"ce-") {
            continue;
        }
        let attr = k[3..].to_ascii_lowercase();
        let mut values = values.iter();
        let (Some(v), None) = (values.next(), values.next()) else {
            return Err(header_err(k, "given more than once"));
        };
        let decoded =
            decode_header_value(v.as_str().trim().as_bytes()).map_err(|r| header_err(k, r))?;
        if attrs.insert(attr, decoded).is_some() {
            return Err(header_err(k, "given more than once (in different case)"));
        }
    }
    if !attrs.contains_key(SPECVERSION) {
        return Err(header_err(
            "ce-specversion",
            "missing: not a CloudEvent in binary mode (structured mode needs Content-Type: application/cloudevents+json)",
        ));
    }
    let mut event = Event::new();
    let listed = single(headers, ATTRIBUTES_HEADER)?;
    if let Some(list) = listed {
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (attr, ty) = entry.split_once(':').unwrap_or((entry, "string"));
            let Some(raw) = attrs.remove(attr) else {
                return Err(header_err(
                    ATTRIBUTES_HEADER,
                    format!("lists '{attr}' but there is no ce-{attr} header"),
                ));
            };
            let v = match ty {
                "string" => AttrValue::String(raw),
                "integer" => AttrValue::Integer(raw.parse().map_err(|_| {
                    header_err(&format!("ce-{attr}"), "declared integer but is not one")
                })?),
                "boolean" => match raw.as_str() {
                    "true" => AttrValue::Boolean(true),
                    "false" => AttrValue::Boolean(false),
                    _ => {
                        return Err(header_err(
                            &format!("ce-{attr}"),
                            "declared boolean but is not true or false",
                        ))
                    }
                },
                other => {
                    return Err(header_err(
                        ATTRIBUTES_HEADER,
                        format!("unknown type '{other}' for '{attr}'"),
                    ))
                }
            };
            event.set(attr.to_owned(), v);
        }
    }
    // Attributes not listed (all of them, from other producers): required ones first,
    // then by name, so that decoding is deterministic.
    for attr in [SPECVERSION, ID, SOURCE, TYPE] {
        if let Some(v) = attrs.remove(attr) {
            event.set(attr, AttrValue::String(v));
        }
    }
    let mut rest: Vec<(String, Str)> = attrs.into_iter().collect();
    rest.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (attr, v) in rest {
        event.set(attr, AttrValue::String(v));
    }
    // Other producers may carry the content type in Content-Type only.
    if listed.is_none() && event.get(DATACONTENTTYPE).is_none() {
        if let Some(ct) = content_type {
            event.set(DATACONTENTTYPE, AttrValue::String(ct.trim().into()));
        }
    }
    match single(headers, DATA_HEADER)? {
        Some(kind) => {
            let kind = match kind.trim() {
                "binary" => DataKind::Binary,
                "json" => DataKind::Json,
                "text" => DataKind::Text,
                other => {
                    return Err(header_err(
                        DATA_HEADER,
                        format!("unknown data kind '{other}'"),
                    ))
                }
            };
            event.set_data(kind, Some(payload));
        }
        None if !payload.is_empty() => event.set_data(DataKind::Binary, Some(payload)),
        None => {}
    }
    Ok(event)
}
