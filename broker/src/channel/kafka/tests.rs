//! Unit tests of the Kafka binding and naming (no cluster needed; the backend itself is
//! tested against a real Kafka-protocol broker by `tests/channel_conformance/` and
//! `tests/kafka_interop.rs`).

#![allow(clippy::unwrap_used)]

use bytes::Bytes;

use super::binding::{self, BindingError, Encoded};
use super::{collision_key, murmur2, murmur2_partition, topic_name, DEFAULT_TOPIC_TEMPLATE};
use crate::config::BrokerId;
use crate::event::{AttrValue, DataKind, Event};

fn sample() -> Event {
    let mut e = Event::new();
    e.set_str("specversion", "1.0");
    e.set_str("id", "A 234-1234-1234");
    e.set_str("source", "/mycontext/subcontext");
    e.set_str("type", "com.example.someevent");
    e.set_str("time", "2018-04-05T03:56:24Z");
    e.set_str("datacontenttype", "application/avro");
    e.set_str("partitionkey", "mykey");
    e.set_str("greeting", "Euro \u{20AC} 100%");
    e.set("count", AttrValue::Integer(-7));
    e.set("flag", AttrValue::Boolean(true));
    e.set_data(DataKind::Binary, Some(Bytes::from_static(b"\x00\x01avro")));
    e
}

fn decode(enc: &Encoded) -> Result<Event, BindingError> {
    binding::decode(
        enc.headers
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_bytes()))),
        enc.value.as_deref(),
    )
}

fn foreign(headers: &[(&str, &str)], value: Option<&[u8]>) -> Result<Event, BindingError> {
    binding::decode(headers.iter().map(|(k, v)| (*k, Some(v.as_bytes()))), value)
}

#[test]
fn binary_mode_follows_the_spec() {
    let enc = binding::encode(&sample());
    // 3.1: partitionkey is the key, and stays an attribute.
    assert_eq!(enc.key.as_deref(), Some("mykey"));
    let get = |k: &str| {
        enc.headers
            .iter()
            .find(|(h, _)| h == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("ce_specversion"), Some("1.0"));
    assert_eq!(get("ce_id"), Some("A 234-1234-1234"));
    assert_eq!(get("ce_type"), Some("com.example.someevent"));
    assert_eq!(get("ce_partitionkey"), Some("mykey"));
    // 3.2.1: datacontenttype is content-type, not a ce_ header.
    assert_eq!(get("content-type"), Some("application/avro"));
    assert_eq!(get("ce_datacontenttype"), None);
    // 3.2.3: UTF-8 values as they are (no percent-encoding in the Kafka binding).
    assert_eq!(get("ce_greeting"), Some("Euro \u{20AC} 100%"));
    assert_eq!(get("ce_count"), Some("-7"));
    assert_eq!(enc.value.as_deref().unwrap(), b"\x00\x01avro");
    assert_eq!(decode(&enc).unwrap(), sample());
}

#[test]
fn round_trips() {
    let mut bare = Event::new();
    for (k, v) in [
        ("specversion", "1.0"),
        ("id", "1"),
        ("source", "s"),
        ("type", "t"),
    ] {
        bare.set_str(k, v);
    }
    let enc = binding::encode(&bare);
    assert_eq!(enc.value, None, "no data, no value");
    assert_eq!(enc.key, None);
    assert_eq!(decode(&enc).unwrap(), bare);

    let mut empty = bare.clone();
    empty.set_data(DataKind::Text, Some(Bytes::new()));
    assert_eq!(decode(&binding::encode(&empty)).unwrap(), empty);

    let mut json = bare.clone();
    json.set_str("datacontenttype", "application/json");
    json.set_data(DataKind::Json, Some(Bytes::from_static(b"{\"a\":[1,2]}")));
    assert_eq!(decode(&binding::encode(&json)).unwrap(), json);

    // A data content type that would read as structured mode stays an attribute.
    let mut nested = bare.clone();
    nested.set_str("datacontenttype", "application/cloudevents+json");
    nested.set_data(DataKind::Binary, Some(Bytes::from_static(b"{}")));
    let enc = binding::encode(&nested);
    assert!(enc.headers.iter().all(|(k, _)| k != "content-type"));
    assert_eq!(decode(&enc).unwrap(), nested);
}

#[test]
fn records_from_other_producers() {
    // The spec's binary-mode example, as a Java producer writes it.
    let e = foreign(
        &[
            ("ce_specversion", "1.0"),
            ("ce_type", "com.example.someevent"),
            ("ce_source", "/mycontext/subcontext"),
            ("ce_id", "1234-1234-1234"),
            ("ce_time", "2018-04-05T03:56:24Z"),
            ("content-type", "application/avro"),
            ("traceparent", "not ours"),
        ],
        Some(b"avro"),
    )
    .unwrap();
    assert_eq!(e.id(), "1234-1234-1234");
    assert_eq!(e.get_str("datacontenttype"), Some("application/avro"));
    assert_eq!(e.data().map(|d| &d[..]), Some(&b"avro"[..]));
    assert_eq!(e.get("traceparent"), None);
    // Header names in any case.
    let e = foreign(
        &[
            ("CE_SPECVERSION", "1.0"),
            ("Ce_Id", "1"),
            ("ce_source", "s"),
            ("ce_type", "t"),
            ("Content-Type", "text/plain"),
        ],
        Some(b"hi"),
    )
    .unwrap();
    assert_eq!(e.get_str("datacontenttype"), Some("text/plain"));
    // Structured mode.
    let e = foreign(
        &[(
            "content-type",
            "application/cloudevents+json; charset=UTF-8",
        )],
        Some(br#"{"specversion":"1.0","id":"9","source":"s","type":"t","data":{"x":1}}"#),
    )
    .unwrap();
    assert_eq!(e.id(), "9");
    assert_eq!(e.data_kind(), DataKind::Json);
}

#[test]
fn malformed_records_are_errors() {
    let ok = [
        ("ce_specversion", "1.0"),
        ("ce_id", "1"),
        ("ce_source", "s"),
        ("ce_type", "t"),
    ];
    // No headers at all: plain Kafka data, not a CloudEvent.
    assert!(foreign(&[], Some(b"{\"hello\":1}")).is_err());
    // A required attribute missing.
    assert!(foreign(&ok[..3], None).is_err());
    // Wrong spec version.
    let mut v = ok.to_vec();
    v[0] = ("ce_specversion", "0.3");
    assert!(foreign(&v, None).is_err());
    // Duplicates.
    let mut v = ok.to_vec();
    v.push(("CE_ID", "2"));
    assert!(foreign(&v, None).is_err());
    let mut v = ok.to_vec();
    v.push(("content-type", "a/b"));
    v.push(("content-type", "c/d"));
    assert!(foreign(&v, None).is_err());
    // Not UTF-8.
    let bad = binding::decode(
        ok.iter()
            .map(|(k, v)| (*k, Some(v.as_bytes())))
            .chain([("ce_x", Some(&b"\xff\xfe"[..]))]),
        None,
    );
    assert!(matches!(bad, Err(BindingError::Header { .. })));
    // A null ce_ header.
    let bad = binding::decode(
        ok.iter()
            .map(|(k, v)| (*k, Some(v.as_bytes())))
            .chain([("ce_x", None)]),
        None,
    );
    assert!(bad.is_err());
    // Structured, but not JSON / not an event.
    assert!(matches!(
        foreign(
            &[("content-type", "application/cloudevents+avro")],
            Some(b"x")
        ),
        Err(BindingError::UnsupportedFormat(_))
    ));
    assert!(foreign(
        &[("content-type", "application/cloudevents+json")],
        Some(b"garbage")
    )
    .is_err());
    assert!(foreign(&[("content-type", "application/cloudevents+json")], None).is_err());
    // Our type header lying.
    let mut v = ok.to_vec();
    v.push(("ce_n", "x"));
    v.push(("triggerfish-types", "n:integer"));
    assert!(foreign(&v, None).is_err());
    let mut v = ok.to_vec();
    v.push(("triggerfish-types", "m:integer"));
    assert!(foreign(&v, None).is_err());
    // Too many headers (the duplicate checks are bounded).
    let mut many = ok.to_vec();
    let names: Vec<String> = (0..300).map(|i| format!("x-{i}")).collect();
    many.extend(names.iter().map(|n| (n.as_str(), "v")));
    assert!(foreign(&many, None).is_err());
    // Invalid attribute name.
    let mut v = ok.to_vec();
    v.push(("ce_Bad-Name", "x"));
    assert!(foreign(&v, None).is_err());
}

#[test]
fn topic_names() {
    let b = BrokerId {
        namespace: "team-a".into(),
        name: "orders.v1".into(),
    };
    assert_eq!(
        topic_name(DEFAULT_TOPIC_TEMPLATE, &b).unwrap(),
        "knative-broker-team-a-orders.v1"
    );
    assert_eq!(collision_key("a.b_c"), collision_key("a_b.c"));
    let long = BrokerId {
        namespace: "n".repeat(63),
        name: "b".repeat(253),
    };
    assert!(topic_name(DEFAULT_TOPIC_TEMPLATE, &long).is_err());
}

#[test]
fn keys_land_where_java_producers_put_them() {
    // Kafka's own test vectors (UtilsTest.testMurmur2).
    for (key, want) in [
        (&b"21"[..], -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
    ] {
        assert_eq!(murmur2(key), want, "{}", String::from_utf8_lossy(key));
    }
    assert_eq!(
        murmur2_partition(b"foobar", 10),
        ((-790_332_482i32 & 0x7fff_ffff) % 10) as u32
    );
    assert_eq!(murmur2_partition(b"x", 1), 0);
}
