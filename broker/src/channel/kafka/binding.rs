//! The CloudEvents Kafka protocol binding (`bindings_kafka-protocol-binding.md`), so that
//! any Kafka client can read what Triggerfish stores and Triggerfish can route what any
//! conforming producer writes.
//!
//! **Writing** is binary content mode (3.2): the data bytes are the record value (no
//! value when the event has no data), `datacontenttype` is the `content-type` header,
//! and every other attribute is a `ce_<name>` header holding its canonical string form
//! as UTF-8 (the Kafka binding does not percent-encode). The record key is the
//! `partitionkey` extension when present (3.1's opt-in key mapper); the attribute stays
//! in `ce_partitionkey` too, as the spec requires. One exception: an event whose
//! `datacontenttype` is itself `application/cloudevents...` keeps it in a
//! `ce_datacontenttype` header, since a reader would take that `content-type` for
//! structured mode.
//!
//! Two headers outside the `ce_` space keep our own round trip exact where binary mode
//! is lossy, and are ignored by other readers:
//! - `triggerfish-types: n:integer,b:boolean`: extensions that are not strings;
//! - `triggerfish-data: binary|json|text`: that the event has data (possibly empty) and
//!   how it arrived, which decides how structured delivery writes it back.
//!
//! **Reading** accepts both modes: a `content-type` starting with
//! `application/cloudevents` is structured mode (only `+json` is supported); otherwise
//! `ce_` headers are matched case-insensitively. Every failure is a [`BindingError`],
//! never a panic: the record came from outside (Kafka Connect, another team's producer,
//! a bug).

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::event::{
    self, json, AttrValue, DataKind, Event, EventError, DATACONTENTTYPE, ID, SOURCE, SPECVERSION,
    TYPE,
};

/// Header listing non-string extensions.
pub const TYPES_HEADER: &str = "triggerfish-types";
/// Header carrying the data kind (present when the event has data).
pub const DATA_HEADER: &str = "triggerfish-data";
/// The content type header.
pub const CONTENT_TYPE: &str = "content-type";
/// Prefix of attribute headers.
pub const PREFIX: &str = "ce_";
const STRUCTURED_PREFIX: &str = "application/cloudevents";
const STRUCTURED_JSON: &str = "application/cloudevents+json";
/// The most headers a record may have.
pub const MAX_HEADERS: usize = 256;

/// Why a Kafka record is not a CloudEvent.
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
    /// A structured-mode record with an event format other than JSON.
    #[error("unsupported event format '{0}' (only {STRUCTURED_JSON})")]
    UnsupportedFormat(String),
    /// The record decodes but is not a valid CloudEvent.
    #[error("not a valid CloudEvent: {0}")]
    Invalid(#[from] EventError),
}

fn header_err(header: &str, reason: impl Into<String>) -> BindingError {
    BindingError::Header {
        header: header.to_owned(),
        reason: reason.into(),
    }
}

/// A record as Triggerfish writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The record key (`partitionkey`), if any.
    pub key: Option<String>,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The value (`None`: a record without value, for an event without data).
    pub value: Option<Bytes>,
}

impl Encoded {
    /// Bytes the record takes in a batch, roughly as the broker counts them against
    /// `message.max.bytes` (key, value, headers, plus the record overhead).
    pub fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 10)
            .sum();
        self.key.as_ref().map_or(0, String::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + headers
            + 70
    }
}

/// Calls `header(name, value)` for each header of the event's binary-mode record, in
/// order, without allocating per attribute (the caller copies what it keeps).
pub fn for_each_header(event: &Event, mut header: impl FnMut(&str, &str)) {
    let mut name = String::with_capacity(32);
    let mut buf = String::new();
    let mut types = String::new();
    for (attr, v) in event.attributes() {
        let value = v.canonical(&mut buf);
        if attr == DATACONTENTTYPE
            && !starts_with_ignore_case(value.trim_start(), STRUCTURED_PREFIX)
        {
            header(CONTENT_TYPE, value);
            continue;
        }
        match v {
            AttrValue::String(_) => {}
            AttrValue::Integer(_) => push_type(&mut types, attr, "integer"),
            AttrValue::Boolean(_) => push_type(&mut types, attr, "boolean"),
        }
        name.clear();
        name.push_str(PREFIX);
        name.push_str(attr);
        header(&name, value);
    }
    if !types.is_empty() {
        header(TYPES_HEADER, &types);
    }
    if event.data().is_some() {
        let kind = match event.data_kind() {
            DataKind::Binary => "binary",
            DataKind::Json => "json",
            DataKind::Text => "text",
        };
        header(DATA_HEADER, kind);
    }
}

/// Bytes a record takes in a batch, roughly as the broker counts them against
/// `message.max.bytes` (key, value, headers, plus the record overhead).
pub fn record_size(key: Option<&str>, value: Option<&[u8]>, headers: usize) -> usize {
    key.map_or(0, str::len) + value.map_or(0, <[u8]>::len) + headers + 70
}

/// What one header adds to [`record_size`].
pub fn header_size(name: &str, value: &str) -> usize {
    name.len() + value.len() + 10
}

/// Encodes an event in binary content mode, as owned values (for tools and tests;
/// the channel writes [`for_each_header`] straight into the record).
pub fn encode(event: &Event) -> Encoded {
    let mut headers = Vec::with_capacity(event.attribute_count() + 2);
    for_each_header(event, |k, v| headers.push((k.to_owned(), v.to_owned())));
    let mut buf = String::new();
    Encoded {
        key: event.partition_key(&mut buf).map(str::to_owned),
        headers,
        value: event.data().cloned(),
    }
}

fn push_type(types: &mut String, attr: &str, ty: &str) {
    if !types.is_empty() {
        types.push(',');
    }
    types.push_str(attr);
    types.push(':');
    types.push_str(ty);
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// A header value as UTF-8 text (the binding requires it); `None` for a null value.
fn text<'a>(name: &str, value: Option<&'a [u8]>) -> Result<Option<&'a str>, BindingError> {
    value
        .map(|v| std::str::from_utf8(v).map_err(|_| header_err(name, "value is not UTF-8")))
        .transpose()
}

/// Decodes a record (its headers in order, and its value) into a validated event.
pub fn decode<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    value: Option<&[u8]>,
) -> Result<Event, BindingError> {
    let mut content_type: Option<&str> = None;
    let mut types: Option<&str> = None;
    let mut data_kind: Option<&str> = None;
    // Attribute name -> value, in header order for determinism; `seen` finds a
    // repeated name in O(1) (a scan per header was quadratic in the header count).
    let mut attrs: Vec<(String, &str)> = Vec::new();
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    let single = |slot: &mut Option<&'a str>, name: &str, v: Option<&'a [u8]>| {
        if slot.is_some() {
            return Err(header_err(name, "given more than once"));
        }
        *slot = Some(text(name, v)?.unwrap_or(""));
        Ok(())
    };
    for (n, (name, v)) in headers.into_iter().enumerate() {
        // Bound the work a record from outside can cause.
        if n >= MAX_HEADERS {
            return Err(header_err(name, format!("more than {MAX_HEADERS} headers")));
        }
        if name.eq_ignore_ascii_case(CONTENT_TYPE) {
            single(&mut content_type, name, v)?;
            // In binary mode it is `datacontenttype`, in its place among the headers.
            if !seen.insert(DATACONTENTTYPE.to_owned()) {
                return Err(header_err(name, "given together with ce_datacontenttype"));
            }
            attrs.push((
                DATACONTENTTYPE.to_owned(),
                content_type.unwrap_or("").trim(),
            ));
        } else if name.eq_ignore_ascii_case(TYPES_HEADER) {
            single(&mut types, name, v)?;
        } else if name.eq_ignore_ascii_case(DATA_HEADER) {
            single(&mut data_kind, name, v)?;
        } else if name.len() > PREFIX.len()
            && name.as_bytes()[..PREFIX.len()].eq_ignore_ascii_case(PREFIX.as_bytes())
        {
            let attr = name[PREFIX.len()..].to_ascii_lowercase();
            if !seen.insert(attr.clone()) {
                return Err(header_err(
                    name,
                    if attr == DATACONTENTTYPE {
                        "given together with content-type"
                    } else {
                        "given more than once"
                    },
                ));
            }
            let Some(v) = text(name, v)? else {
                return Err(header_err(name, "has no value"));
            };
            attrs.push((attr, v));
        }
    }
    let structured = match content_type {
        Some(ct) if starts_with_ignore_case(ct.trim_start(), STRUCTURED_PREFIX) => {
            let essence = ct.split(';').next().unwrap_or("").trim();
            if !essence.eq_ignore_ascii_case(STRUCTURED_JSON) {
                return Err(BindingError::UnsupportedFormat(ct.to_owned()));
            }
            true
        }
        _ => false,
    };
    let event = if structured {
        json::parse_event(value.unwrap_or_default())?
    } else {
        decode_binary(attrs, types, data_kind, value)?
    };
    event::validate(&event)?;
    Ok(event)
}

fn decode_binary(
    attrs: Vec<(String, &str)>,
    types: Option<&str>,
    data_kind: Option<&str>,
    value: Option<&[u8]>,
) -> Result<Event, BindingError> {
    if !attrs.iter().any(|(a, _)| a == SPECVERSION) {
        return Err(header_err(
            "ce_specversion",
            "missing: not a CloudEvent in binary mode (structured mode needs content-type: application/cloudevents+json)",
        ));
    }
    let mut typed: BTreeMap<&str, &str> = BTreeMap::new();
    for entry in types.unwrap_or("").split(',').map(str::trim) {
        if entry.is_empty() {
            continue;
        }
        let Some((attr, ty)) = entry.split_once(':') else {
            return Err(header_err(
                TYPES_HEADER,
                format!("'{entry}' is not name:type"),
            ));
        };
        typed.insert(attr, ty);
    }
    let mut event = Event::new();
    // Required attributes first (foreign producers order headers as they like), then
    // the rest in header order.
    let mut ordered: Vec<&(String, &str)> = Vec::with_capacity(attrs.len());
    for req in [SPECVERSION, ID, SOURCE, TYPE] {
        ordered.extend(attrs.iter().filter(|(a, _)| a == req));
    }
    ordered.extend(
        attrs
            .iter()
            .filter(|(a, _)| ![SPECVERSION, ID, SOURCE, TYPE].contains(&a.as_str())),
    );
    for (attr, raw) in ordered {
        let v = match typed.remove(attr.as_str()) {
            None | Some("string") => AttrValue::String((*raw).into()),
            Some("integer") => AttrValue::Integer(raw.trim().parse().map_err(|_| {
                header_err(
                    &format!("{PREFIX}{attr}"),
                    "declared integer but is not one",
                )
            })?),
            Some("boolean") => match raw.trim() {
                "true" => AttrValue::Boolean(true),
                "false" => AttrValue::Boolean(false),
                _ => {
                    return Err(header_err(
                        &format!("{PREFIX}{attr}"),
                        "declared boolean but is not true or false",
                    ))
                }
            },
            Some(other) => {
                return Err(header_err(
                    TYPES_HEADER,
                    format!("unknown type '{other}' for '{attr}'"),
                ))
            }
        };
        event.set(attr.clone(), v);
    }
    if let Some((attr, _)) = typed.into_iter().next() {
        return Err(header_err(
            TYPES_HEADER,
            format!("lists '{attr}' but there is no {PREFIX}{attr} header"),
        ));
    }
    let data = value.map(Bytes::copy_from_slice);
    match data_kind {
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
            event.set_data(kind, Some(data.unwrap_or_default()));
        }
        None => {
            if let Some(data) = data {
                event.set_data(DataKind::Binary, Some(data));
            }
        }
    }
    Ok(event)
}

/// Kafka's default partitioner for keyed records (Java's `Utils.murmur2`, then
/// `toPositive(h) % partitions`).
pub fn murmur2_partition(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) as u32 % partitions.max(1)
}

/// Kafka's 32-bit MurmurHash2 (seed `0x9747b28c`), as Java's `Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}
