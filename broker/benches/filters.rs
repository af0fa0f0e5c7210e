//! Per-event cost of trigger filters: each dialect on its own, a typical CESQL
//! expression, and a broker with 1, 100 and 1000 exact-`type` triggers of which one
//! matches, evaluated naively (every filter) and through `FilterIndex`.
//!
//! Run: `cargo bench -p broker --bench filters -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use broker::event::{AttrValue, Event};
use broker::filter::{Filter, FilterIndex};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn event() -> Event {
    let mut e = Event::new();
    e.set_str("specversion", "1.0");
    e.set_str("id", "b7c9a2c4-4d7e-4f0e-9b3a-6c2f1f0e8d11");
    e.set_str("source", "/shop");
    e.set_str("type", "com.example.order.created");
    e.set_str("subject", "orders/12345");
    e.set_str("time", "2026-01-01T12:00:00Z");
    e.set_str("datacontenttype", "application/json");
    e.set_str("knativearrivaltime", "2026-01-01T12:00:00.001Z");
    e.set("priority", AttrValue::Integer(3));
    e
}

fn compile(yaml: &str) -> Filter {
    Filter::from_filters_yaml(yaml).unwrap_or_else(|e| panic!("{yaml}: {e:?}"))
}

fn dialects(c: &mut Criterion) {
    let e = event();
    let cases = [
        ("exact/match", "[{exact: {type: com.example.order.created}}]"),
        ("exact/miss", "[{exact: {type: com.example.order.deleted}}]"),
        ("exact/2-keys", "[{exact: {type: com.example.order.created, source: /shop}}]"),
        ("prefix/match", "[{prefix: {type: com.example.}}]"),
        ("suffix/match", "[{suffix: {type: .created}}]"),
        ("prefix/integer-ext", "[{prefix: {priority: '3'}}]"),
        (
            "all-any/match",
            "[{all: [{prefix: {type: com.example.}}, {any: [{exact: {source: /warehouse}}, {suffix: {subject: '45'}}]}]}]",
        ),
        (
            "all-any/miss",
            "[{all: [{prefix: {type: com.example.}}, {any: [{exact: {source: /warehouse}}, {suffix: {subject: '99'}}]}]}]",
        ),
        ("not/match", "[{not: {exact: {type: com.example.order.deleted}}}]"),
        (
            "cesql/typical",
            "[{cesql: \"type LIKE 'com.example.%' AND source = '/shop' AND (EXISTS subject OR priority > 2)\"}]",
        ),
        (
            "cesql/typical-miss",
            "[{cesql: \"type LIKE 'com.example.%' AND source = '/warehouse' AND (EXISTS subject OR priority > 2)\"}]",
        ),
        ("cesql/missing-attribute", "[{cesql: \"region = 'eu'\"}]"),
    ];
    let mut group = c.benchmark_group("filter");
    for (name, yaml) in cases {
        let f = compile(yaml);
        group.bench_function(name, |b| b.iter(|| black_box(&f).matches(black_box(&e))));
    }
    let legacy = Filter::attributes([("type", "com.example.order.created"), ("source", "/shop")]);
    group.bench_function("attributes/2-keys", |b| {
        b.iter(|| black_box(&legacy).matches(black_box(&e)))
    });
    group.finish();
}

fn broker(c: &mut Criterion) {
    let mut group = c.benchmark_group("broker");
    for n in [1usize, 100, 1000] {
        let filters: Vec<Filter> = (0..n)
            .map(|i| {
                let ty = if i == n / 2 {
                    "com.example.order.created".to_owned()
                } else {
                    format!("com.example.type{i}")
                };
                compile(&format!("[{{exact: {{type: '{ty}'}}}}]"))
            })
            .collect();
        let e = event();
        let index = FilterIndex::build(&filters);
        let mut out = Vec::with_capacity(4);
        index.matching(&e, &mut out);
        assert_eq!(out, [n / 2], "exactly one trigger matches");
        group.bench_with_input(BenchmarkId::new("naive", n), &n, |b, _| {
            b.iter(|| {
                let e = black_box(&e);
                let mut matched = 0usize;
                for f in &filters {
                    if f.matches(e) {
                        matched += 1;
                    }
                }
                matched
            })
        });
        group.bench_with_input(BenchmarkId::new("indexed", n), &n, |b, _| {
            b.iter(|| {
                index.matching(black_box(&e), &mut out);
                out.len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, dialects, broker);
criterion_main!(benches);
