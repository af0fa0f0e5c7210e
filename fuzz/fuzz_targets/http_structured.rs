//! Fuzz target: a structured-mode body (`application/cloudevents+json`), bounded
//! and unbounded; both must agree, and a valid event must round-trip.
#![no_main]

#[path = "common.rs"]
mod common;

use broker::event::json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let unbounded = json::parse_event(data);
    let bounded = json::parse_event_bounded(data, 64);
    match (&unbounded, &bounded) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Ok(a), Err(json::Bounded::TooManyAttributes(_))) => assert!(a.attribute_count() > 64),
        (Err(_), Err(_)) => {}
        (Ok(_), Err(e)) => panic!("only the bounded parse failed: {e:?}"),
        (Err(e), Ok(_)) => panic!("only the unbounded parse failed: {e:?}"),
    }
    if let Ok(e) = unbounded {
        common::check_valid(&e);
    }
});
