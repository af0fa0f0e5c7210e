//! What the targets share: reading headers and a body out of fuzz bytes, and the
//! round-trip checks every decoded, valid event must pass.

#![allow(dead_code)]

use broker::event::{self, codec, http as binding, json, Event, EventLimits};

/// Splits `data` into header lines (`name:value`, one per line) and a body: the
/// first empty line ends the headers. Lines without a colon are skipped.
pub fn split(data: &[u8]) -> (Vec<(&[u8], &[u8])>, &[u8]) {
    let mut headers = Vec::new();
    let mut rest = data;
    loop {
        let (line, after) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => return (headers, &[]),
        };
        rest = after;
        if line.is_empty() {
            return (headers, rest);
        }
        if let Some(c) = line.iter().position(|&b| b == b':') {
            headers.push((&line[..c], &line[c + 1..]));
        }
    }
}

/// The same headers as an `http::HeaderMap` (names or values http refuses are
/// skipped, as hyper would refuse the request).
pub fn header_map(headers: &[(&[u8], &[u8])]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (n, v) in headers {
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(n),
            http::HeaderValue::from_bytes(v),
        ) else {
            continue;
        };
        if map.len() < 1000 {
            map.append(n, v);
        }
    }
    map
}

/// Attribute names and canonical values, sorted, and the data bytes: what every
/// binding must carry unchanged.
fn essence(e: &Event) -> (Vec<(String, String)>, Vec<u8>) {
    // `datacontenttype` as a binary-mode message carries it: data that came as a
    // JSON member without one is `application/json` (JSON format 3.1.2).
    let mut attrs: Vec<(String, String)> = e
        .attributes()
        .filter(|(n, _)| *n != "datacontenttype")
        .map(|(n, v)| (n.to_owned(), v.to_canonical_string()))
        .collect();
    if let Some(ct) = e.effective_content_type() {
        attrs.push(("datacontenttype".to_owned(), ct.to_owned()));
    }
    attrs.sort();
    (attrs, e.data().map(|d| d.to_vec()).unwrap_or_default())
}

/// Every check a valid event must pass: the limits check runs, and the event
/// survives the stored-record codec, binary mode and structured mode unchanged.
pub fn check_valid(e: &Event) {
    if event::validate(e).is_err() {
        return;
    }
    let _ = EventLimits::default().check(e);
    // The record holds names of up to 255 bytes; the ingress's limits (at most
    // that) keep longer ones out of every log that uses it.
    if e.attributes()
        .all(|(n, _)| n.len() <= codec::MAX_NAME_BYTES)
    {
        let mut rec = Vec::new();
        codec::encode(e, &mut rec);
        let back = codec::decode(&bytes::Bytes::from(rec)).expect("a stored record decodes");
        assert_eq!(&back, e, "record codec round trip");
    }

    let mut headers = http::HeaderMap::new();
    let body = binding::encode_binary(e, &mut headers);
    // Binary mode carries at most what fits in headers: hyper's 100 fields.
    if e.attribute_count() < 100 {
        let back = binding::decode_binary(&headers, body).expect("binary mode decodes");
        assert_eq!(essence(&back), essence(e), "binary mode round trip");
    }

    let text = json::to_vec(e);
    let back = json::parse_event(&text).unwrap_or_else(|err| {
        panic!(
            "structured mode parses: {err:?}\nevent: {e:?}\njson: {}",
            String::from_utf8_lossy(&text)
        )
    });
    let (mut got, mut want) = (essence(&back), essence(e));
    // JSON data is a JSON value in structured mode: whitespace around it is not
    // kept (a binary-mode body of "\n{}" comes back as "{}").
    if got.1 != want.1 && got.1 == want.1.trim_ascii() {
        (got.1, want.1) = (Vec::new(), Vec::new());
    }
    assert_eq!(got, want, "structured mode round trip");
}
