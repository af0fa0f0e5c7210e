//! Triggers using each filter dialect receive exactly the events they should, end to
//! end through the dispatcher's indexed fan-out.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_dialect_receives_exactly_its_events() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let triggers: &[(&str, &str)] = &[
        ("exact", "filters: [{exact: {type: order.created}}]"),
        ("prefix", "filters: [{prefix: {type: order.}}]"),
        ("suffix", "filters: [{suffix: {source: /eu}}]"),
        (
            "all",
            "filters: [{all: [{prefix: {type: order.}}, {exact: {region: eu}}]}]",
        ),
        (
            "any",
            "filters: [{any: [{exact: {type: payment.done}}, {exact: {region: us}}]}]",
        ),
        ("not", "filters: [{not: {prefix: {type: order.}}}]"),
        (
            "cesql",
            "filters: [{cesql: \"type LIKE 'order.%' AND INT(amount) > 100\"}]",
        ),
        (
            "implicitall",
            "filters: [{prefix: {type: order.}}, {suffix: {type: .created}}]",
        ),
        (
            "legacy",
            "filter: {attributes: {type: payment.done, region: ''}}",
        ),
        (
            "overrides",
            "filter: {attributes: {type: nothing}}\n  filters: [{exact: {type: payment.done}}]",
        ),
    ];
    let mut yaml = String::from(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default}\n",
    );
    for (name, filter) in triggers {
        yaml.push_str(&format!(
            "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: {name}}}\nspec:\n  broker: default\n  {filter}\n  subscriber: {{uri: '{}'}}\n",
            sub.url(&format!("/{name}"))
        ));
    }
    // Many more exact-type triggers that never match: they must cost nothing and get
    // nothing.
    for i in 0..200 {
        yaml.push_str(&format!(
            "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: noise{i}}}\nspec:\n  broker: default\n  filter: {{attributes: {{type: noise.{i}}}}}\n  subscriber: {{uri: '{}'}}\n",
            sub.url("/noise")
        ));
    }
    let server = start_server(&yaml, dir.path()).await;
    // (id, type, source, extensions)
    type Sent<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);
    let events: &[Sent] = &[
        (
            "e1",
            "order.created",
            "/shop/eu",
            &[("region", "eu"), ("amount", "150")],
        ),
        (
            "e2",
            "order.created",
            "/shop/us",
            &[("region", "us"), ("amount", "50")],
        ),
        ("e3", "order.cancelled", "/shop/eu", &[("region", "eu")]),
        ("e4", "payment.done", "/pay", &[("region", "eu")]),
        ("e5", "payment.done", "/pay", &[]),
        ("e6", "user.signup", "/web/eu", &[]),
    ];
    for (id, ty, source, ext) in events {
        let mut h = vec![
            ("ce-specversion", "1.0"),
            ("ce-id", *id),
            ("ce-source", *source),
            ("ce-type", *ty),
        ];
        let ext_headers: Vec<(String, &str)> =
            ext.iter().map(|(k, v)| (format!("ce-{k}"), *v)).collect();
        for (k, v) in &ext_headers {
            h.push((k.as_str(), v));
        }
        let (s, _, body) = post(server.addr, "/default/default", &h, "").await;
        assert_eq!(s, 202, "{body}");
    }
    let want: BTreeMap<&str, BTreeSet<&str>> = [
        ("exact", vec!["e1", "e2"]),
        ("prefix", vec!["e1", "e2", "e3"]),
        ("suffix", vec!["e1", "e3", "e6"]),
        ("all", vec!["e1", "e3"]),
        ("any", vec!["e2", "e4", "e5"]),
        ("not", vec!["e4", "e5", "e6"]),
        ("cesql", vec!["e1"]),
        ("implicitall", vec!["e1", "e2"]),
        ("legacy", vec!["e4"]),
        ("overrides", vec!["e4", "e5"]),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.into_iter().collect()))
    .collect();
    let total: usize = want.values().map(BTreeSet::len).sum();
    sub.wait_until("every expected delivery", Duration::from_secs(10), |r| {
        r.len() >= total
    })
    .await;
    // Let any wrong extra delivery surface: the checkpoints of every trigger pass the
    // last event only once it was handled (delivered or filtered out).
    let checkpoints = dir.path().join("brokers/default/default/checkpoints");
    eventually(
        "every trigger past the last event",
        Duration::from_secs(10),
        || async {
            // Trigger checkpoints only: `_`-prefixed files are internal cursors
            // (such as the malformed-record scan's), which no trigger name can be.
            std::fs::read_dir(&checkpoints).unwrap().all(|e| {
                let path = e.unwrap().path();
                if path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('_'))
                {
                    return true;
                }
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                v["offsets"]
                    .as_array()
                    .is_some_and(|o| o.iter().map(|x| x.as_u64().unwrap_or(0)).sum::<u64>() == 6)
            })
        },
    )
    .await;
    let mut got: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for r in sub.received() {
        let name = want
            .keys()
            .find(|k| r.path == format!("/{k}"))
            .copied()
            .unwrap_or("unexpected");
        got.entry(name)
            .or_default()
            .insert(r.header("ce-id").unwrap().to_owned());
    }
    for (name, ids) in &want {
        let ids: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
        assert_eq!(got.get(name), Some(&ids), "trigger {name}");
    }
    assert!(!got.contains_key("unexpected"), "{got:?}");
    assert_eq!(sub.received().len(), total, "no duplicates");
    server.shutdown();
    server.wait().await.unwrap();
}

/// A trigger that matched nothing has its checkpoint stored only every
/// `skips_stored_every` (losing such a move costs a re-scan, not a redelivery), one
/// that delivered at every flush, and a clean shutdown stores both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_moved_only_past_unmatched_events_are_stored_less_often() {
    let sub = Subscriber::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = broker_with_triggers(&[
        (
            "hits",
            "  filter: {attributes: {type: hit}}\n",
            sub.url("/hits"),
        ),
        (
            "misses",
            "  filter: {attributes: {type: never}}\n",
            sub.url("/misses"),
        ),
    ]);
    let mut opts = server_options(&yaml, dir.path());
    opts.dispatcher.skips_stored_every = Duration::from_secs(3600);
    let server = start_with(opts).await;
    for i in 0..20 {
        let id = format!("e{i}");
        let (status, _, _) = post(
            server.addr,
            "/default/default",
            &binary_headers(&id, "hit"),
            b"{}".to_vec(),
        )
        .await;
        assert_eq!(status, 202);
    }
    sub.wait_until("20 deliveries", Duration::from_secs(10), |r| r.len() >= 20)
        .await;
    let stored = |trigger: &str| -> Option<u64> {
        let path = dir.path().join(format!(
            "brokers/default/default/checkpoints/{trigger}.json"
        ));
        let text = std::fs::read(path).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
        v["offsets"][0].as_u64()
    };
    eventually(
        "the delivering trigger's checkpoint stored at 20",
        Duration::from_secs(10),
        || async { stored("hits") == Some(20) },
    )
    .await;
    // Several flushes later, the trigger that only skipped still has its start point
    // on disk, although its lane has moved past all 20 events.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(stored("misses"), Some(0));
    server.shutdown();
    server.wait().await.unwrap();
    assert_eq!(stored("hits"), Some(20));
    assert_eq!(
        stored("misses"),
        Some(20),
        "a clean stop stores every checkpoint"
    );
}
