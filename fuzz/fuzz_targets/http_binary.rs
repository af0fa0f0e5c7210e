//! Fuzz target: an HTTP request's headers and body, decoded as the ingress does
//! (mode from Content-Type, bounded decoding, validation, limits); a valid event
//! must round-trip through every binding (`common::check_valid`).
#![no_main]

#[path = "common.rs"]
mod common;

use broker::event::{http as binding, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (headers, body) = common::split(data);
    let headers = common::header_map(&headers);
    let Ok(mode) = binding::mode(&headers) else {
        return;
    };
    let body = bytes::Bytes::copy_from_slice(body);
    if let Ok(events) = binding::decode_bounded(mode, &headers, body, 64) {
        for e in &events {
            if validate(e).is_ok() {
                common::check_valid(e);
            }
        }
    }
});
