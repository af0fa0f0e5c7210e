//! Fuzz target: a Kafka record (headers, some without a value, and a value) from
//! any producer on the topic, decoded by the Kafka binding; a decoded event must
//! encode back and decode to the same event, and round-trip through the others.
#![no_main]

#[path = "common.rs"]
mod common;

use broker::channel::kafka::binding;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (lines, value) = common::split(data);
    let mut headers: Vec<(&str, Option<&[u8]>)> = Vec::new();
    for (n, v) in &lines {
        let Ok(n) = std::str::from_utf8(n) else {
            continue;
        };
        // A header named with a trailing `!` has no value (a null header).
        match n.strip_suffix('!') {
            Some(n) => headers.push((n, None)),
            None => headers.push((n, Some(v))),
        }
    }
    // A value of a single `-` stands for a record without one.
    let value = (value != b"-").then_some(value);
    if let Ok(e) = binding::decode(headers.iter().copied(), value) {
        let enc = binding::encode(&e);
        let again = enc
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_bytes())));
        let back = binding::decode(again, enc.value.as_deref()).expect("an encoded event decodes");
        assert_eq!(back, e, "Kafka round trip");
        common::check_valid(&e);
    }
});
