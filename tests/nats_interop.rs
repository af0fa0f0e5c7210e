//! Interoperability of the NATS channel: an event appended through `NatsLog` is read
//! with a plain NATS client (a core subscription and a JetStream consumer) and decoded
//! by the rules of the CloudEvents NATS protocol binding alone — written here, not
//! taken from `broker::channel::nats` — with every attribute and the data intact.
//!
//! Needs `TRIGGERFISH_TEST_NATS_URL` (set by `scripts/test`); fails without it unless
//! `TRIGGERFISH_SKIP_NATS=1`.

#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use broker::channel::nats::async_nats::{self, jetstream, HeaderMap};
use broker::channel::nats::{stream_names, NatsLog, NatsOptions};
use broker::channel::EventLog;
use broker::config::BrokerId;
use broker::event::{AttrValue, DataKind, Event};
use bytes::Bytes;
use futures_util::StreamExt;

/// Binding 3.1.3.2, receiving side: undo RFC 7230 double-quoting (with backslash
/// escapes), then one round of percent-decoding; the bytes must be valid UTF-8.
fn spec_decode_value(raw: &str) -> Result<String, String> {
    let unquoted: Vec<u8> = if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') {
        let mut out = Vec::new();
        let mut bytes = raw[1..raw.len() - 1].bytes();
        while let Some(b) = bytes.next() {
            out.push(if b == b'\\' {
                bytes.next().ok_or("dangling backslash")?
            } else {
                b
            });
        }
        out
    } else {
        raw.as_bytes().to_vec()
    };
    let mut out = Vec::with_capacity(unquoted.len());
    let mut i = 0;
    while i < unquoted.len() {
        if unquoted[i] == b'%' {
            let hex = unquoted
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad percent-encoding")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(unquoted[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8".to_owned())
}

/// Binding 3: binary mode unless Content-Type is application/cloudevents*; every
/// `ce-` header (names case-insensitive) is one attribute; the payload is the data.
fn spec_decode(headers: &HeaderMap, payload: &Bytes) -> (BTreeMap<String, String>, Bytes) {
    let mut attrs = BTreeMap::new();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        let lower = name.to_ascii_lowercase();
        if lower == "content-type" {
            for v in values {
                assert!(
                    !v.as_str()
                        .to_ascii_lowercase()
                        .starts_with("application/cloudevents"),
                    "Triggerfish writes binary mode"
                );
            }
        }
        let Some(attr) = lower.strip_prefix("ce-") else {
            continue;
        };
        assert_eq!(values.len(), 1, "one value per attribute header ({name})");
        let value = values[0].as_str();
        assert!(
            value
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b'"'),
            "{name}: header values are printable ASCII without spaces or quotes: {value:?}"
        );
        let decoded = spec_decode_value(value).unwrap();
        assert!(
            attrs.insert(attr.to_owned(), decoded).is_none(),
            "{name} twice"
        );
    }
    (attrs, payload.clone())
}

fn the_event() -> Event {
    let mut e = Event::new();
    e.set_str("specversion", "1.0");
    e.set_str("id", "order 42/\"eu\"");
    e.set_str("source", "https://shop.example/orders?x=1&y=%20");
    e.set_str("type", "com.example.order.created");
    e.set_str("subject", "Bestellung für Jürgen – €5 😀");
    e.set_str("time", "2024-05-06T07:08:09.123+02:00");
    e.set_str("dataschema", "https://schemas.example/order.json");
    e.set_str("datacontenttype", "application/octet-stream");
    e.set_str("region", "eu-west 100%");
    e.set_str("partitionkey", "customer-7");
    e.set("priority", AttrValue::Integer(-3));
    e.set("urgent", AttrValue::Boolean(true));
    let data: Vec<u8> = (0..=255u8).chain([0, 13, 10, 0xff]).collect();
    e.set_data(DataKind::Binary, Some(Bytes::from(data)));
    e
}

fn expected(e: &Event) -> BTreeMap<String, String> {
    e.attributes()
        .map(|(n, v)| (n.to_owned(), v.to_canonical_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_by_triggerfish_decode_by_the_binding_spec_alone() {
    let Some(url) = common::nats_url() else {
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let prefix = format!("interop-{}-{nanos}", std::process::id());
    let mut opts = NatsOptions::from_url(&url).unwrap();
    opts.prefix = prefix.clone();
    opts.partitions = 3;
    opts.limits.max_bytes = Some(64 << 20);
    let log = NatsLog::connect(opts).await.unwrap();
    let id = BrokerId::new("team.a", "orders.v1");
    let b = log
        .open(&id, broker::channel::LogKind::Events)
        .await
        .unwrap();
    let (stream, subject_base) =
        stream_names(&prefix, &id, broker::channel::LogKind::Events).unwrap();

    // A plain client, knowing only the subject layout.
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let mut live = client.subscribe(format!("{subject_base}.*")).await.unwrap();
    // `flush` only writes the client's buffer: the server may register the subscription
    // after the append below arrives on the log's own connection (seen once in CI).
    // A request is answered only after the server processed what came before it on
    // this connection, the SUB included; nobody answers it, which is all we need.
    let probe = client
        .request(format!("_INBOX.{prefix}.probe"), Bytes::new())
        .await;
    assert!(probe.is_err(), "nobody answers the probe: {probe:?}");

    let event = the_event();
    b.append(std::slice::from_ref(&event)).await.unwrap();
    let want = expected(&event);
    let want_data = event.data().unwrap().clone();

    // 1. The message as published, through a core subscription.
    let msg = tokio::time::timeout(Duration::from_secs(10), live.next())
        .await
        .expect("published message within 10 s")
        .unwrap();
    let partition = broker::channel::partition_for(&event, 3, 0);
    assert_eq!(msg.subject.as_str(), format!("{subject_base}.{partition}"));
    let (attrs, data) = spec_decode(msg.headers.as_ref().unwrap(), &msg.payload);
    assert_eq!(attrs, want, "every attribute, as canonical strings");
    assert_eq!(data, want_data, "data bytes intact");

    // 2. The stored message, through a JetStream consumer of the stream.
    let js = jetstream::new(client.clone());
    let consumer = js
        .create_consumer_on_stream(
            jetstream::consumer::pull::Config {
                filter_subject: format!("{subject_base}.>"),
                ack_policy: jetstream::consumer::AckPolicy::None,
                ..Default::default()
            },
            stream.as_str(),
        )
        .await
        .unwrap();
    let mut stored = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), stored.next())
        .await
        .expect("stored message within 10 s")
        .unwrap()
        .unwrap();
    let (attrs, data) = spec_decode(msg.headers.as_ref().unwrap(), &msg.payload);
    assert_eq!(attrs, want);
    assert_eq!(data, want_data);
    // Percent-encoding as the spec's example does it (upper-case hex, one round).
    let headers = msg.headers.as_ref().unwrap();
    assert_eq!(
        headers.get("ce-region").map(|v| v.as_str()),
        Some("eu-west%20100%25")
    );
    assert_eq!(headers.get("ce-priority").map(|v| v.as_str()), Some("-3"));
    assert!(stored.next().await.is_none(), "exactly one message stored");
}

#[test]
fn the_spec_decoder_in_this_test_follows_the_spec_example() {
    assert_eq!(
        spec_decode_value("Euro%20%E2%82%AC%20%F0%9F%98%80").as_deref(),
        Ok("Euro \u{20AC} \u{1F600}")
    );
    assert_eq!(spec_decode_value("%e2%82%ac").as_deref(), Ok("\u{20AC}"));
    assert_eq!(spec_decode_value(r#""a \"b\"""#).as_deref(), Ok(r#"a "b""#));
    assert!(spec_decode_value("%C0%A0").is_err(), "overlong UTF-8");
    assert!(spec_decode_value("%4").is_err());
}
