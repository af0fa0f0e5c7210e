//! Fuzz target: parse arbitrary UTF-8 as a CESQL expression and, when it
//! parses, evaluate it against a fixed event. Parsing and evaluation must
//! never panic, and `matches` must agree with `evaluate`.
//!
//! Run with `cargo +nightly fuzz run parse_eval` from `broker/cesql/`.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use cesql::{Expression, Value};
use libfuzzer_sys::fuzz_target;

fn event() -> &'static HashMap<String, Value> {
    static EVENT: OnceLock<HashMap<String, Value>> = OnceLock::new();
    EVENT.get_or_init(|| {
        [
            ("specversion", Value::from("1.0")),
            ("id", Value::from("A234-1234-1234")),
            ("source", Value::from("https://example.com/source")),
            ("type", Value::from("com.example.object.created")),
            ("subject", Value::from("123")),
            ("time", Value::from("2018-04-05T17:31:00Z")),
            ("datacontenttype", Value::from("application/json")),
            ("myint", Value::Integer(-42)),
            ("mybool", Value::Boolean(true)),
            ("numstr", Value::from("2147483647")),
            ("unicode", Value::from("日本語 ß")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(expr) = Expression::parse(src) else {
        return;
    };
    let ev = event();
    let full = expr.evaluate(ev);
    assert_eq!(expr.matches(ev), full.is_match(), "{src:?}");
    let _ = expr.evaluate(&());
    let _ = expr.diagnostics();
});
