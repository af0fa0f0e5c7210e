//! Fuzz target: a NATS message (headers and payload) from any publisher on the
//! stream's subjects, decoded by the NATS binding; a decoded event must encode back
//! and decode to the same event, and round-trip through the other bindings.
#![no_main]

#[path = "common.rs"]
mod common;

use broker::channel::nats::{self, async_nats::HeaderMap};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (lines, payload) = common::split(data);
    let no_headers = lines.is_empty();
    let mut headers = HeaderMap::new();
    for (n, v) in lines {
        let (Ok(n), Ok(v)) = (std::str::from_utf8(n), std::str::from_utf8(v)) else {
            continue;
        };
        // async-nats refuses names and values it could not send.
        let Ok(name) = n.parse::<nats::async_nats::HeaderName>() else {
            continue;
        };
        let Ok(value) = v.parse::<nats::async_nats::HeaderValue>() else {
            continue;
        };
        headers.append(name, value);
    }
    let payload = bytes::Bytes::copy_from_slice(payload);
    let decoded = nats::decode((!no_headers).then_some(&headers), payload);
    if let Ok(e) = decoded {
        let (h, p) = nats::encode(&e).expect("a decoded event encodes");
        let back = nats::decode(Some(&h), p).expect("an encoded event decodes");
        assert_eq!(back, e, "NATS round trip");
        common::check_valid(&e);
    }
});
