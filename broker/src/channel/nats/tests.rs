//! Unit tests of the NATS binding and naming (no server needed; the backend itself is
//! tested against a real nats-server by `tests/channel_conformance/` and
//! `tests/nats_interop.rs`).

#![allow(clippy::unwrap_used)]

use async_nats::HeaderMap;
use bytes::Bytes;

use super::binding::{self, BindingError};
use super::{stream_names, token};
use crate::channel::LogKind;
use crate::config::BrokerId;
use crate::event::{AttrValue, DataKind, Event};

fn sample() -> Event {
    let mut e = Event::new();
    e.set_str("specversion", "1.0");
    e.set_str("id", "A 234-1234-1234");
    e.set_str("source", "/mycontext/subcontext");
    e.set_str("type", "com.example.someevent");
    e.set_str("time", "2018-04-05T03:56:24Z");
    e.set_str("datacontenttype", "application/json");
    e.set_str("greeting", "Euro \u{20AC} \u{1F600} \"quoted\" 100%");
    e.set("count", AttrValue::Integer(-7));
    e.set("flag", AttrValue::Boolean(true));
    e.set_data(DataKind::Json, Some(Bytes::from_static(b"{\"a\":1}")));
    e
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, *v);
    }
    h
}

#[test]
fn binary_mode_follows_the_spec_headers() {
    let (h, payload) = binding::encode(&sample()).unwrap();
    assert_eq!(&payload[..], b"{\"a\":1}");
    let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned());
    assert_eq!(get("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(get("ce-id").as_deref(), Some("A%20234-1234-1234"));
    assert_eq!(get("ce-type").as_deref(), Some("com.example.someevent"));
    assert_eq!(get("ce-time").as_deref(), Some("2018-04-05T03:56:24Z"));
    // datacontenttype is an attribute like any other (3.1.3.1), plus Content-Type.
    assert_eq!(
        get("ce-datacontenttype").as_deref(),
        Some("application/json")
    );
    assert_eq!(get("Content-Type").as_deref(), Some("application/json"));
    // 3.1.3.2: space, double-quote, percent and non-ASCII percent-encoded, upper-case.
    assert_eq!(
        get("ce-greeting").as_deref(),
        Some("Euro%20%E2%82%AC%20%F0%9F%98%80%20%22quoted%22%20100%25")
    );
    assert_eq!(get("ce-count").as_deref(), Some("-7"));
    assert_eq!(get("ce-flag").as_deref(), Some("true"));
}

#[test]
fn round_trip_is_exact() {
    let e = sample();
    let (h, payload) = binding::encode(&e).unwrap();
    assert_eq!(binding::decode(Some(&h), payload).unwrap(), e);

    // No data, no datacontenttype; empty-but-present data stays present.
    let mut bare = Event::new();
    for (k, v) in [
        ("specversion", "1.0"),
        ("id", "1"),
        ("source", "s"),
        ("type", "t"),
    ] {
        bare.set_str(k, v);
    }
    let (h, payload) = binding::encode(&bare).unwrap();
    assert!(h.get("Content-Type").is_none());
    assert_eq!(binding::decode(Some(&h), payload).unwrap(), bare);
    let mut empty = bare.clone();
    empty.set_data(DataKind::Text, Some(Bytes::new()));
    let (h, payload) = binding::encode(&empty).unwrap();
    assert_eq!(binding::decode(Some(&h), payload).unwrap(), empty);
}

#[test]
fn foreign_binary_messages_decode_by_the_spec() {
    // As another SDK would write it: mixed-case names, a quoted value, lower-case hex,
    // content type only in Content-Type, no Triggerfish headers.
    let h = headers(&[
        ("CE-SpecVersion", "1.0"),
        ("ce-id", "\"x \\\"y\\\"\""),
        ("ce-source", "/s"),
        ("ce-type", "t"),
        ("ce-ext", "%e2%82%ac"),
        ("Content-Type", "text/plain"),
    ]);
    let e = binding::decode(Some(&h), Bytes::from_static(b"hi")).unwrap();
    assert_eq!(e.id(), "x \"y\"");
    assert_eq!(e.get_str("ext"), Some("\u{20AC}"));
    assert_eq!(e.get_str("datacontenttype"), Some("text/plain"));
    assert_eq!(e.data().map(|d| &d[..]), Some(&b"hi"[..]));
    let names: Vec<_> = e.attributes().map(|(n, _)| n.to_owned()).collect();
    assert_eq!(
        names[..4],
        ["specversion", "id", "source", "type"].map(String::from)
    );
}

#[test]
fn structured_mode_is_read() {
    let h = headers(&[(
        "Content-Type",
        "application/cloudevents+json; charset=utf-8",
    )]);
    let body = br#"{"specversion":"1.0","id":"9","source":"/s","type":"t","data":{"k":true}}"#;
    let e = binding::decode(Some(&h), Bytes::from_static(body)).unwrap();
    assert_eq!(e.id(), "9");
    assert_eq!(e.data_kind(), DataKind::Json);
    // A message without any header is structured too (pre-2.2 NATS).
    let e = binding::decode(None, Bytes::from_static(body)).unwrap();
    assert_eq!(e.ty(), "t");
    let h = headers(&[("Content-Type", "application/cloudevents+avro")]);
    assert!(matches!(
        binding::decode(Some(&h), Bytes::from_static(body)),
        Err(BindingError::UnsupportedFormat(_))
    ));
}

#[test]
fn malformed_messages_are_errors_not_panics() {
    let base = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ];
    let with = |extra: &[(&str, &str)]| {
        let mut all: Vec<(&str, &str)> = base.to_vec();
        all.extend_from_slice(extra);
        headers(&all)
    };
    let cases: Vec<(&str, HeaderMap)> = vec![
        ("no headers at all, not JSON", HeaderMap::new()),
        ("no specversion", headers(&[("ce-id", "1")])),
        ("bad percent-encoding", with(&[("ce-x", "%4")])),
        ("overlong UTF-8", with(&[("ce-x", "%C0%A0")])),
        ("duplicate header", with(&[("ce-id", "2")])),
        ("same attribute in two cases", with(&[("CE-ID", "2")])),
        (
            "listed but missing",
            with(&[(binding::ATTRIBUTES_HEADER, "id,gone")]),
        ),
        (
            "bad integer",
            with(&[("ce-n", "x"), (binding::ATTRIBUTES_HEADER, "n:integer")]),
        ),
        (
            "bad boolean",
            with(&[("ce-b", "yes"), (binding::ATTRIBUTES_HEADER, "b:boolean")]),
        ),
        (
            "unknown type",
            with(&[("ce-b", "1"), (binding::ATTRIBUTES_HEADER, "b:float")]),
        ),
        ("unknown data kind", with(&[(binding::DATA_HEADER, "xml")])),
        (
            "invalid event",
            headers(&[("ce-specversion", "0.3"), ("ce-id", "1")]),
        ),
        ("invalid attribute name", with(&[("ce-Bad_Name", "1")])),
    ];
    for (what, h) in cases {
        let got = binding::decode(Some(&h), Bytes::from_static(b"\xff\x00junk"));
        assert!(got.is_err(), "{what}: expected an error, got {got:?}");
    }
    assert!(binding::decode(None, Bytes::from_static(b"[1,2")).is_err());
}

#[test]
fn msg_id_depends_on_source_and_id_only() {
    let mut a = sample();
    let first = binding::msg_id(&a);
    assert_eq!(first.len(), 32);
    a.set_str("knativearrivaltime", "2024-01-01T00:00:00Z");
    a.set_data(DataKind::Binary, Some(Bytes::from_static(b"other")));
    assert_eq!(
        binding::msg_id(&a),
        first,
        "a retry with a new arrival time"
    );
    a.set_str("id", "other");
    assert_ne!(binding::msg_id(&a), first);
    // Length-prefixed: moving a character between source and id changes the id.
    let mut x = Event::new();
    x.set_str("source", "ab");
    x.set_str("id", "c");
    let mut y = Event::new();
    y.set_str("source", "a");
    y.set_str("id", "bc");
    assert_ne!(binding::msg_id(&x), binding::msg_id(&y));
}

#[test]
fn wire_size_counts_headers_and_payload() {
    let mut h = HeaderMap::new();
    h.insert("ce-id", "1");
    let payload = Bytes::from_static(b"12345");
    // "NATS/1.0\r\n" + "ce-id: 1\r\n" + "\r\n" + payload
    assert_eq!(binding::wire_size(&h, &payload), 10 + 10 + 2 + 5);
}

#[test]
fn names_map_injectively() {
    let b = BrokerId::new("ns", "b");
    assert_eq!(token("my-broker", &b).unwrap(), "my-broker");
    assert_eq!(token("a.b", &b).unwrap(), "a_2Eb");
    assert_eq!(token("A_b*>", &b).unwrap(), "_41_5Fb_2A_3E");
    assert!(token("", &b).is_err());
    let names = |ns: &str, name: &str| {
        stream_names("tf", &BrokerId::new(ns, name), LogKind::Events).unwrap()
    };
    let (s, subj) = names("team-a", "orders.v1");
    assert_eq!(s, "tf_events_team-a__orders_2Ev1");
    assert_eq!(subj, "tf.events.team-a.orders_2Ev1");
    // Pairs that naive joining would confuse.
    let pairs = [
        (("a", "b.c"), ("a.b", "c")),
        (("a-", "b"), ("a", "-b")),
        (("a_", "b"), ("a", "_b")),
        (("a__b", "c"), ("a", "b__c")),
    ];
    for (x, y) in pairs {
        assert_ne!(names(x.0, x.1), names(y.0, y.1), "{x:?} vs {y:?}");
    }
    let (dl, dl_subj) =
        stream_names("tf", &BrokerId::new("ns", "b"), LogKind::DeadLetters).unwrap();
    assert_eq!(
        (dl.as_str(), dl_subj.as_str()),
        ("tf_deadletters_ns__b", "tf.deadletters.ns.b")
    );
    assert!(stream_names("tf", &BrokerId::new("n", "x".repeat(300)), LogKind::Events).is_err());
}
