//! Fuzz target: a stored record (a damaged disk, another producer's topic): it
//! decodes or is refused, never panics, and what decodes encodes back to a record
//! that decodes to the same event.
#![no_main]

#[path = "common.rs"]
mod common;

use broker::event::codec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(e) = codec::decode(&bytes::Bytes::copy_from_slice(data)) else {
        return;
    };
    let mut again = Vec::new();
    codec::encode(&e, &mut again);
    let back = codec::decode(&bytes::Bytes::from(again)).expect("re-encoded record decodes");
    assert_eq!(back, e);
    common::check_valid(&e);
});
