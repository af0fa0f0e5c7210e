//! Fuzz target: a batched-mode body (`application/cloudevents-batch+json`); each
//! valid event of a batch must round-trip.
#![no_main]

#[path = "common.rs"]
mod common;

use broker::event::json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(events) = json::parse_batch_bounded(data, 64) {
        for e in &events {
            common::check_valid(e);
        }
    }
});
