//! Decoding cost per byte of the shapes a hostile producer would pick, from 1 KiB to
//! 1 MiB: each decoder must stay linear, so the time per byte is flat across sizes
//! (issue 14). Shapes:
//!
//! - `structured/many-attributes`: one event with as many short extensions as fit;
//! - `structured/long-names`: few extensions whose long names share a prefix;
//! - `structured/deep-data`: `data` of arrays nested 100 deep, repeated;
//! - `batched/many-events`: a batch of small events;
//! - `binary/many-headers`: binary mode with as many `ce-` headers as fit, up to
//!   128 KiB (hyper admits 100 per request; the decoder itself has no such bound);
//! - `record/many-attributes`: the stored-record codec reading a wide event;
//! - `nats/many-headers` and `kafka/many-headers`: the channel bindings (with their
//!   features).
//!
//! Throughput is reported in bytes, so criterion prints bytes/s; ns per byte is its
//! inverse. Run: `cargo bench -p broker --features nats,kafka --bench decode --
//! --warm-up-time 1 --measurement-time 2` (docs/benchmarks.md has figures).

use std::hint::black_box;

use broker::event::{codec, http as binding, json, AttrValue, Event};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderName, HeaderValue};

const SIZES: [usize; 4] = [1 << 10, 16 << 10, 256 << 10, 1 << 20];
/// A Kafka record holds at most 256 headers (the binding's bound).
const KAFKA_SIZES: [usize; 3] = [256, 1 << 10, 2 << 10];
/// An `http::HeaderMap` holds at most 32,768 fields: the widest header block is
/// 128 KiB of short names.
const HEADER_SIZES: [usize; 4] = [1 << 10, 8 << 10, 32 << 10, 128 << 10];
const HEAD: &str = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t""#;

fn many_attributes(size: usize) -> Vec<u8> {
    let mut s = String::from(HEAD);
    let mut i = 0;
    while s.len() + 16 < size {
        s.push_str(&format!(r#","a{i}":"v""#));
        i += 1;
    }
    s.push('}');
    s.into_bytes()
}

fn long_names(size: usize) -> Vec<u8> {
    let prefix = "x".repeat(2000);
    let mut s = String::from(HEAD);
    let mut i = 0;
    while s.len() + prefix.len() + 20 < size || i == 0 {
        s.push_str(&format!(r#","{prefix}{i}":"v""#));
        i += 1;
    }
    s.push('}');
    s.into_bytes()
}

fn deep_data(size: usize) -> Vec<u8> {
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let mut s = format!(r#"{HEAD},"data":[{deep}"#);
    while s.len() + deep.len() + 4 < size {
        s.push(',');
        s.push_str(&deep);
    }
    s.push_str("]}");
    s.into_bytes()
}

fn many_events(size: usize) -> Vec<u8> {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() + 80 < size || i == 0 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"specversion":"1.0","id":"{i}","source":"/s","type":"t","data":1}}"#
        ));
        i += 1;
    }
    s.push(']');
    s.into_bytes()
}

fn many_headers(size: usize) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut used = 0;
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
        used += k.len() + v.len();
    }
    let mut i = 0;
    while used + 16 < size {
        let name = format!("ce-a{i}");
        used += name.len() + 1;
        h.insert(
            HeaderName::try_from(name).expect("valid name"),
            HeaderValue::from_static("v"),
        );
        i += 1;
    }
    h
}

fn wide_event(size: usize) -> Event {
    let mut e = Event::new();
    for (k, v) in [
        ("specversion", "1.0"),
        ("id", "1"),
        ("source", "/s"),
        ("type", "t"),
    ] {
        e.set_str(k, v);
    }
    let mut used = 0;
    let mut i = 0;
    while used + 16 < size {
        let name = format!("a{i}");
        used += name.len() + 7;
        e.set(name, AttrValue::String("v".into()));
        i += 1;
    }
    e
}

fn run<I, O>(
    c: &mut Criterion,
    sizes: &[usize],
    group: &str,
    make: impl Fn(usize) -> I,
    len: impl Fn(&I) -> usize,
    decode: impl Fn(&I) -> O,
) {
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    for &size in sizes {
        let input = make(size);
        let bytes = len(&input);
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &input, |b, input| {
            b.iter(|| black_box(decode(black_box(input))))
        });
    }
    g.finish();
}

fn structured(c: &mut Criterion) {
    let len = |b: &Vec<u8>| b.len();
    run(
        c,
        &SIZES,
        "structured/many-attributes",
        many_attributes,
        len,
        |b| json::parse_event(b).expect("valid"),
    );
    run(c, &SIZES, "structured/long-names", long_names, len, |b| {
        json::parse_event(b).expect("valid")
    });
    run(c, &SIZES, "structured/deep-data", deep_data, len, |b| {
        json::parse_event(b).expect("valid")
    });
    run(c, &SIZES, "batched/many-events", many_events, len, |b| {
        json::parse_batch(b).expect("valid")
    });
}

fn binary(c: &mut Criterion) {
    let header_bytes = |h: &HeaderMap| h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    run(
        c,
        &HEADER_SIZES,
        "binary/many-headers",
        many_headers,
        header_bytes,
        |h| binding::decode_binary(h, Bytes::new()).expect("valid"),
    );
    run(
        c,
        &SIZES,
        "record/many-attributes",
        |size| {
            let mut out = Vec::new();
            codec::encode(&wide_event(size), &mut out);
            Bytes::from(out)
        },
        |b: &Bytes| b.len(),
        |b| codec::decode(b).expect("valid"),
    );
}

#[cfg(feature = "nats")]
fn nats(c: &mut Criterion) {
    use broker::channel::nats;
    let encoded = |size| nats::encode(&wide_event(size)).expect("encodes");
    let len = |(h, p): &(nats::async_nats::HeaderMap, Bytes)| {
        h.iter()
            .map(|(k, vs)| {
                AsRef::<str>::as_ref(k).len() + vs.iter().map(|v| v.as_str().len()).sum::<usize>()
            })
            .sum::<usize>()
            + p.len()
    };
    run(c, &SIZES, "nats/many-headers", encoded, len, |(h, p)| {
        nats::decode(Some(h), p.clone()).expect("valid")
    });
}

#[cfg(not(feature = "nats"))]
fn nats(_: &mut Criterion) {}

#[cfg(feature = "kafka")]
fn kafka(c: &mut Criterion) {
    use broker::channel::kafka::binding;
    // Kafka records hold at most 256 headers: the widest record is that many
    // (about 2 KiB of headers), so the sizes stop there.
    let encoded = |size: usize| binding::encode(&wide_event(size));
    let len = |e: &binding::Encoded| e.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    run(c, &KAFKA_SIZES, "kafka/many-headers", encoded, len, |e| {
        let headers = e
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_bytes())));
        binding::decode(headers, e.value.as_deref()).expect("valid")
    });
}

#[cfg(not(feature = "kafka"))]
fn kafka(_: &mut Criterion) {}

criterion_group!(benches, structured, binary, nats, kafka);
criterion_main!(benches);
