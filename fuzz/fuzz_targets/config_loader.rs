//! Fuzz target: config text (Knative YAML, possibly several documents) through the
//! loader: it loads or gives located errors, never panics; what loads describes
//! every filter.
#![no_main]

use std::path::Path;

use broker::config::{parse_sources, LoadOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let opts = LoadOptions {
        cluster_domain: "cluster.local".to_owned(),
    };
    if let Ok(config) = parse_sources(&[(Path::new("fuzz.yaml"), text)], &opts) {
        for b in &config.brokers {
            for t in &b.triggers {
                let _ = t.filter.describe();
            }
        }
    }
});
