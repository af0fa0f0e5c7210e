//! The CloudEvents HTTP protocol binding (bindings_http-protocol-binding.md): decoding
//! requests in binary, structured and batched mode, and encoding events in binary or
//! structured mode for delivery.

use std::cell::RefCell;
use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};

use super::{json, known_name, AttrValue, DataKind, Event, EventError, Str, DATACONTENTTYPE};

/// Media type of a structured-mode JSON event.
pub const STRUCTURED_JSON: &str = "application/cloudevents+json";
/// Media type of a batched-mode JSON body.
pub const BATCH_JSON: &str = "application/cloudevents-batch+json";

/// Why an HTTP message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The content type names an event format or batch format we do not support.
    #[error("unsupported content type '{0}': supported are binary mode, {STRUCTURED_JSON} and {BATCH_JSON}")]
    UnsupportedMediaType(String),
    /// The message is not a valid CloudEvent.
    #[error(transparent)]
    Invalid(#[from] EventError),
    /// An event has more attributes than the limit given to [`decode_bounded`]
    /// (decoding stopped at the one past it).
    #[error("an event has more than {0} attributes")]
    TooManyAttributes(usize),
}

/// The content mode of a request, decided by its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `ce-` headers and the body as data.
    Binary,
    /// One event as `application/cloudevents+json`.
    Structured,
    /// A JSON array of events as `application/cloudevents-batch+json`.
    Batched,
}

/// Decides the content mode from the request headers.
pub fn mode(headers: &HeaderMap) -> Result<Mode, DecodeError> {
    let Some(ct) = headers.get(CONTENT_TYPE) else {
        return Ok(Mode::Binary);
    };
    let ct = ct.to_str().map_err(|_| {
        DecodeError::Invalid(EventError::new(
            "content-type",
            "not a visible ASCII header",
        ))
    })?;
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(STRUCTURED_JSON) {
        Ok(Mode::Structured)
    } else if essence.eq_ignore_ascii_case(BATCH_JSON) {
        Ok(Mode::Batched)
    } else if starts_with_ignore_case(essence, "application/cloudevents") {
        Err(DecodeError::UnsupportedMediaType(ct.to_owned()))
    } else {
        Ok(Mode::Binary)
    }
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Decodes a request into one or more events (not yet validated: see
/// [`super::validate`]).
pub fn decode(headers: &HeaderMap, body: Bytes) -> Result<Vec<Event>, DecodeError> {
    decode_as(mode(headers)?, headers, body)
}

/// Like [`decode`], with the mode already decided by [`mode`].
pub fn decode_as(mode: Mode, headers: &HeaderMap, body: Bytes) -> Result<Vec<Event>, DecodeError> {
    decode_bounded(mode, headers, body, usize::MAX)
}

/// Like [`decode_as`], refusing an event with more than `max_attributes` attributes
/// as soon as the decoder meets the one past the limit, so that the cost of a
/// hostile body is that of an event at the limit (the ingress's
/// `--max-attributes`).
pub fn decode_bounded(
    mode: Mode,
    headers: &HeaderMap,
    body: Bytes,
    max_attributes: usize,
) -> Result<Vec<Event>, DecodeError> {
    let bounded = |e: json::Bounded| match e {
        json::Bounded::Invalid(e) => DecodeError::Invalid(e),
        json::Bounded::TooManyAttributes(n) => DecodeError::TooManyAttributes(n),
    };
    match mode {
        Mode::Structured => Ok(vec![
            json::parse_event_bounded(&body, max_attributes).map_err(bounded)?
        ]),
        Mode::Batched => json::parse_batch_bounded(&body, max_attributes).map_err(bounded),
        Mode::Binary => {
            let ce = headers
                .keys()
                .filter(|n| n.as_str().starts_with("ce-"))
                .count();
            // `Content-Type` is `datacontenttype`.
            if ce + usize::from(headers.contains_key(CONTENT_TYPE)) > max_attributes {
                return Err(DecodeError::TooManyAttributes(max_attributes));
            }
            Ok(vec![decode_binary(headers, body)?])
        }
    }
}

/// Decodes a binary-mode message. The attribute values (and names other than the
/// well-known ones) are decoded into one buffer and share it.
pub fn decode_binary(headers: &HeaderMap, body: Bytes) -> Result<Event, EventError> {
    let mut event = Event::new();
    let mut saw_specversion = false;
    // Unquoting and percent-decoding never lengthen a value, so this is enough room
    // for every name and value: one allocation instead of one per attribute.
    let room = headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("ce-"))
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum::<usize>()
        + headers.get(CONTENT_TYPE).map_or(0, HeaderValue::len);
    let mut buf = BytesMut::with_capacity(room);
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        if attr == DATACONTENTTYPE {
            // Binary mode carries datacontenttype in Content-Type only.
            continue;
        }
        saw_specversion |= attr == "specversion";
        let decoded = decode_header_value_in(value.as_bytes(), &mut buf)
            .map_err(|reason| EventError::new(attr, reason))?;
        let attr_name = match known_name(attr.as_bytes()) {
            Some(known) => Str::from_static(known),
            None => {
                buf.extend_from_slice(attr.as_bytes());
                // Header names are ASCII.
                Str::from_utf8(buf.split().freeze())
                    .map_err(|_| EventError::new(attr, "name is not ASCII"))?
            }
        };
        if event
            .add_new(attr_name, AttrValue::String(decoded))
            .is_err()
        {
            return Err(EventError::new(attr, "header given more than once"));
        }
    }
    if !saw_specversion {
        return Err(EventError::new(
            "specversion",
            "binary mode needs a ce-specversion header (for structured mode send Content-Type: application/cloudevents+json)",
        ));
    }
    if let Some(ct) = headers.get(CONTENT_TYPE) {
        let not_ascii = || EventError::new(DATACONTENTTYPE, "Content-Type is not visible ASCII");
        ct.to_str().map_err(|_| not_ascii())?;
        buf.extend_from_slice(ct.as_bytes());
        let ct = Str::from_utf8(buf.split().freeze()).map_err(|_| not_ascii())?;
        event.set(DATACONTENTTYPE, AttrValue::String(ct));
    }
    if !body.is_empty() {
        event.set_data(DataKind::Binary, Some(body));
    }
    Ok(event)
}

/// Undoes RFC 7230 double-quoting, then one round of percent-decoding; rejects
/// invalid UTF-8 (HTTP binding 3.1.3.2).
pub fn decode_header_value(raw: &[u8]) -> Result<Str, String> {
    let mut out = BytesMut::with_capacity(raw.len());
    let percent = decode_header_value_into(raw, &mut out)?;
    utf8_value(out.freeze(), percent)
}

/// [`decode_header_value`] into the spare room of `buf` (allocating only if there is
/// too little), returning a slice of it.
fn decode_header_value_in(raw: &[u8], buf: &mut BytesMut) -> Result<Str, String> {
    let percent = decode_header_value_into(raw, buf);
    let value = buf.split().freeze();
    utf8_value(value, percent?)
}

/// The decoded value as a string, or the binding's error for invalid UTF-8.
fn utf8_value(value: Bytes, percent_decoded: bool) -> Result<Str, String> {
    Str::from_utf8(value).map_err(|_| {
        if percent_decoded {
            "percent-decoded header value is not valid UTF-8".to_owned()
        } else {
            "header value is not valid UTF-8".to_owned()
        }
    })
}

/// Appends the unquoted, percent-decoded bytes of a header value to `out`; says
/// whether percent-decoding changed anything. UTF-8 is the caller's check.
fn decode_header_value_into(raw: &[u8], out: &mut BytesMut) -> Result<bool, String> {
    let unquoted: std::borrow::Cow<'_, [u8]> =
        if raw.len() >= 2 && raw[0] == b'"' && raw[raw.len() - 1] == b'"' {
            let mut out = Vec::with_capacity(raw.len());
            let mut it = raw[1..raw.len() - 1].iter();
            while let Some(&b) = it.next() {
                if b == b'\\' {
                    match it.next() {
                        Some(&n) => out.push(n),
                        None => return Err("dangling backslash in quoted header".into()),
                    }
                } else {
                    out.push(b);
                }
            }
            out.into()
        } else {
            raw.into()
        };
    if !unquoted.contains(&b'%') {
        out.extend_from_slice(&unquoted);
        return Ok(false);
    }
    let mut i = 0;
    while i < unquoted.len() {
        let b = unquoted[i];
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                unquoted.get(i + 1).and_then(|&c| hex(c)),
                unquoted.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => {
                    out.put_u8((h * 16 + l) as u8);
                    i += 3;
                }
                _ => return Err("invalid percent-encoding".into()),
            }
        } else {
            out.put_u8(b);
            i += 1;
        }
    }
    Ok(true)
}

/// Whether a byte goes into a `ce-` header as it is: printable ASCII other than `"`
/// and `%`.
fn plain(b: u8) -> bool {
    (0x21..=0x7E).contains(&b) && b != b'"' && b != b'%'
}

/// Whether a whole value goes into a `ce-` header as it is. Checks every byte without
/// stopping early, which lets the compiler check several bytes per instruction.
fn all_plain(s: &str) -> bool {
    s.bytes().fold(true, |ok, b| ok & plain(b))
}

/// Percent-encodes a string for a `ce-` header: space, `"`, `%` and everything outside
/// printable ASCII.
pub fn encode_header_value(s: &str) -> HeaderValue {
    if all_plain(s) {
        if let Ok(v) = HeaderValue::from_str(s) {
            return v;
        }
    }
    let mut out = String::with_capacity(s.len() + 16);
    for b in s.bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[(b >> 4) as usize]));
            out.push(char::from(b"0123456789ABCDEF"[(b & 15) as usize]));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// [`encode_header_value`] for a string attribute: a value that needs no escaping
/// becomes a header value over the attribute's own buffer, without a copy.
fn encode_str_header_value(s: &Str) -> HeaderValue {
    if all_plain(s) {
        // Checks the bytes again (visible ASCII), which cannot fail after `plain`.
        if let Ok(v) = HeaderValue::from_maybe_shared(s.as_bytes().clone()) {
            return v;
        }
    }
    encode_header_value(s)
}

/// Encodes an event in binary mode: `ce-` headers (and `Content-Type`) into `headers`,
/// returning the body.
pub fn encode_binary(event: &Event, headers: &mut HeaderMap) -> Bytes {
    let mut buf = String::new();
    for (name, value) in event.attributes() {
        if name == DATACONTENTTYPE {
            continue;
        }
        let Some(header) = header_name(name).or_else(|| extension_header_name(name)) else {
            continue; // names were validated; cannot happen for a stored event
        };
        let value = match value {
            AttrValue::String(s) => encode_str_header_value(s),
            other => encode_header_value(other.canonical(&mut buf)),
        };
        headers.insert(header, value);
    }
    let content_type = match event.get(DATACONTENTTYPE) {
        // Sent as it is (not percent-encoded), so only if it is visible ASCII, as
        // `HeaderValue::from_str` requires (`from_maybe_shared` also takes obs-text).
        Some(AttrValue::String(ct)) if ct.is_ascii() => {
            HeaderValue::from_maybe_shared(ct.as_bytes().clone()).ok()
        }
        Some(AttrValue::String(_)) => None,
        _ => event
            .effective_content_type()
            .and_then(|ct| HeaderValue::from_str(ct).ok()),
    };
    if let Some(v) = content_type {
        headers.insert(CONTENT_TYPE, v);
    }
    event.data().cloned().unwrap_or_default()
}

/// Header names of the attributes most events carry, built at compile time.
fn header_name(attr: &str) -> Option<HeaderName> {
    const SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
    const ID: HeaderName = HeaderName::from_static("ce-id");
    const SOURCE: HeaderName = HeaderName::from_static("ce-source");
    const TYPE: HeaderName = HeaderName::from_static("ce-type");
    const SUBJECT: HeaderName = HeaderName::from_static("ce-subject");
    const TIME: HeaderName = HeaderName::from_static("ce-time");
    const DATASCHEMA: HeaderName = HeaderName::from_static("ce-dataschema");
    const ARRIVAL_TIME: HeaderName = HeaderName::from_static("ce-knativearrivaltime");
    const BROKER_TTL: HeaderName = HeaderName::from_static("ce-knativebrokerttl");
    const PARTITION_KEY: HeaderName = HeaderName::from_static("ce-partitionkey");
    const TRACEPARENT: HeaderName = HeaderName::from_static("ce-traceparent");
    Some(match attr {
        "specversion" => SPECVERSION,
        "id" => ID,
        "source" => SOURCE,
        "type" => TYPE,
        "subject" => SUBJECT,
        "time" => TIME,
        "dataschema" => DATASCHEMA,
        "knativearrivaltime" => ARRIVAL_TIME,
        "knativebrokerttl" => BROKER_TTL,
        "partitionkey" => PARTITION_KEY,
        "traceparent" => TRACEPARENT,
        _ => return None,
    })
}

/// How many extension header names each thread keeps.
const CACHED_EXTENSION_NAMES: usize = 32;

thread_local! {
    /// `ce-` header names of other attributes, by attribute name: the same extensions
    /// come with event after event, and building a name allocates twice (about 1,000
    /// instructions per extension and delivery, docs/benchmarks.md). Cloning a cached
    /// name shares its buffer. Bounded; the oldest entry goes when it is full.
    static EXTENSION_NAMES: RefCell<VecDeque<(Box<str>, HeaderName)>> =
        const { RefCell::new(VecDeque::new()) };
}

/// The `ce-` header name of an attribute without a static one (`None` if the name
/// cannot be a header name, which validated names always can).
fn extension_header_name(attr: &str) -> Option<HeaderName> {
    EXTENSION_NAMES.with(|cell| {
        let mut names = cell.borrow_mut();
        if let Some((_, header)) = names.iter().find(|(n, _)| **n == *attr) {
            return Some(header.clone());
        }
        let mut full = String::with_capacity(3 + attr.len());
        full.push_str("ce-");
        full.push_str(attr);
        let header = HeaderName::from_bytes(full.as_bytes()).ok()?;
        if names.len() == CACHED_EXTENSION_NAMES {
            names.pop_front();
        }
        names.push_back((attr.into(), header.clone()));
        Some(header)
    })
}

/// Encodes an event in structured JSON mode.
pub fn encode_structured(event: &Event, headers: &mut HeaderMap) -> Bytes {
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(STRUCTURED_JSON));
    Bytes::from(json::to_vec(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn percent_encoding_follows_the_spec_example() {
        let v = encode_header_value("Euro \u{20AC} \u{1F600}");
        assert_eq!(v, "Euro%20%E2%82%AC%20%F0%9F%98%80");
        assert_eq!(
            decode_header_value(b"Euro%20%e2%82%ac%20%F0%9F%98%80").as_deref(),
            Ok("Euro \u{20AC} \u{1F600}")
        );
        assert_eq!(decode_header_value(b"%41bc").as_deref(), Ok("Abc"));
        assert!(decode_header_value(b"%C0%A0").is_err(), "overlong UTF-8");
        assert!(decode_header_value(b"%4").is_err());
        assert_eq!(
            decode_header_value(br#""a \"b\"""#).as_deref(),
            Ok(r#"a "b""#)
        );
    }

    #[test]
    fn binary_round_trip() {
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "42"),
            ("ce-source", "/x"),
            ("ce-type", "t"),
            ("ce-myext", "hello%20world"),
            ("content-type", "text/plain"),
        ]);
        let events = decode(&h, Bytes::from_static(b"payload")).expect("decodes");
        let e = &events[0];
        assert_eq!(e.get_str("myext"), Some("hello world"));
        assert_eq!(e.get_str("datacontenttype"), Some("text/plain"));
        let mut out = HeaderMap::new();
        let body = encode_binary(e, &mut out);
        assert_eq!(&body[..], b"payload");
        assert_eq!(
            out.get("ce-myext").map(|v| v.as_bytes()),
            Some(&b"hello%20world"[..])
        );
        assert_eq!(
            out.get("content-type").map(|v| v.as_bytes()),
            Some(&b"text/plain"[..])
        );
        let again = decode(&out, body).expect("decodes");
        assert_eq!(&again[0], e);
    }

    /// Extension names come from the per-thread cache after the first event, and the
    /// cache stays bounded when events carry ever new extensions.
    #[test]
    fn extension_header_names() {
        for i in 0..(CACHED_EXTENSION_NAMES * 2) {
            let mut e = Event::new();
            e.set_str("myext", "1");
            e.set_str(format!("ext{i}"), "2");
            let mut out = HeaderMap::new();
            encode_binary(&e, &mut out);
            assert_eq!(out.get("ce-myext").map(|v| v.as_bytes()), Some(&b"1"[..]));
            assert_eq!(
                out.get(format!("ce-ext{i}")).map(|v| v.as_bytes()),
                Some(&b"2"[..])
            );
        }
        EXTENSION_NAMES.with(|c| assert_eq!(c.borrow().len(), CACHED_EXTENSION_NAMES));
        assert_eq!(header_name("id"), Some(HeaderName::from_static("ce-id")));
    }

    /// Binary-mode values are decoded into one buffer (one allocation per event, not
    /// per attribute), and each is still checked: invalid UTF-8, raw or
    /// percent-encoded, is an error naming the attribute.
    #[test]
    fn binary_values_share_one_buffer_and_are_checked() {
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "\"quoted \\\"id\\\"\""),
            ("ce-myext", "a%20b"),
            ("content-type", "text/plain"),
        ]);
        let e = decode_binary(&h, Bytes::new()).expect("decodes");
        assert_eq!(e.id(), "quoted \"id\"");
        assert_eq!(e.get_str("myext"), Some("a b"));
        // In header order: the id, myext's value, its name, then the content type.
        let span = |name: &str| {
            let Some(AttrValue::String(s)) = e.get(name) else {
                panic!("{name} is a string")
            };
            s.as_bytes().as_ptr_range()
        };
        let (id, myext, ct) = (span("id"), span("myext"), span("datacontenttype"));
        assert_eq!(id.end, myext.start, "values are slices of one buffer");
        assert_eq!(myext.end.wrapping_add("myext".len()), ct.start);

        let mut bad = HeaderMap::new();
        bad.insert("ce-specversion", HeaderValue::from_static("1.0"));
        bad.insert(
            "ce-id",
            HeaderValue::from_bytes(b"\xff").expect("obs-text is a header value"),
        );
        let err = decode_binary(&bad, Bytes::new()).expect_err("not UTF-8");
        assert_eq!(err.attribute, "id");
        assert!(err.to_string().contains("not valid UTF-8"), "{err}");
        bad.insert("ce-id", HeaderValue::from_static("%FF"));
        let err = decode_binary(&bad, Bytes::new()).expect_err("not UTF-8");
        assert!(err.to_string().contains("percent-decoded"), "{err}");
    }

    #[test]
    fn modes() {
        assert_eq!(mode(&headers(&[])), Ok(Mode::Binary));
        assert_eq!(
            mode(&headers(&[(
                "content-type",
                "application/cloudevents+json; charset=utf-8"
            )])),
            Ok(Mode::Structured)
        );
        assert_eq!(
            mode(&headers(&[(
                "content-type",
                "application/cloudevents-batch+json"
            )])),
            Ok(Mode::Batched)
        );
        assert!(matches!(
            mode(&headers(&[("content-type", "application/cloudevents+xml")])),
            Err(DecodeError::UnsupportedMediaType(_))
        ));
        assert_eq!(
            mode(&headers(&[("content-type", "application/json")])),
            Ok(Mode::Binary)
        );
    }

    #[test]
    fn binary_without_specversion_is_invalid() {
        let err = decode(
            &headers(&[("content-type", "application/json")]),
            Bytes::new(),
        )
        .expect_err("invalid");
        assert!(matches!(err, DecodeError::Invalid(e) if e.attribute == "specversion"));
    }
}
