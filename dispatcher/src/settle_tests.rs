//! What settling an event comes to ([`Settled`]), against a subscriber that refuses
//! the event for good and a dead-letter log that works or does not.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use broker::config::{BrokerId, DeliveryOrder, TriggerConfig};
use broker::delivery::DeliverySpec;
use broker::event::Event;
use broker::filter::Filter;
use broker::telemetry::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::settle::{settle, BrokerSinks, Settled};
use crate::test_logs::Recording;
use crate::trigger::TriggerRuntime;

/// A subscriber answering every request `400 Bad Request` (never retried).
async fn refusing_subscriber() -> url::Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = sock
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    url::Url::parse(&format!("http://{addr}/")).unwrap()
}

fn runtime(
    subscriber: url::Url,
    dead_letters: Arc<Recording>,
    shutdown: CancellationToken,
) -> TriggerRuntime {
    let events = Recording::new(1);
    let cfg = TriggerConfig {
        name: "t".into(),
        broker: BrokerId::new("ns", "b"),
        filter: Filter::match_all(),
        subscriber,
        delivery: DeliverySpec::broker_default().into(),
        order: DeliveryOrder::Unordered,
        concurrency: 1,
        annotations: Default::default(),
        spec_hash: 0,
        subscriber_ca_certs: None,
    };
    let metrics = Metrics::new().trigger("ns/b", "t");
    TriggerRuntime {
        lane: Arc::new(crate::fanout::LaneInfo {
            incarnation: 1,
            filter: cfg.filter.clone(),
            trigger: "t".into(),
            metrics: metrics.clone(),
            account: crate::held::LaneAccount::new(
                1 << 20,
                broker::budget::MemoryBudget::unlimited(),
            ),
        }),
        health: Arc::default(),
        metrics,
        clients: crate::trust::Trust::new(None, None).for_trigger(&cfg),
        cfg: Arc::new(cfg),
        sinks: Arc::new(BrokerSinks {
            events,
            dead_letters,
            max_ttl: crate::settle::DEFAULT_MAX_TTL,
            shutdown,
            fault: None,
            limits: Default::default(),
            max_reply_bytes: 1 << 20,
            budget: broker::budget::MemoryBudget::unlimited(),
        }),
    }
}

fn event() -> Event {
    let mut e = Event::new();
    for (k, v) in [
        ("specversion", "1.0"),
        ("id", "e1"),
        ("source", "/s"),
        ("type", "t"),
    ] {
        e.set_str(k, v);
    }
    e
}

#[tokio::test]
async fn a_refused_event_goes_to_the_dead_letter_log_and_is_counted_once() {
    let dead = Recording::new(1);
    let rt = runtime(
        refusing_subscriber().await,
        dead.clone(),
        CancellationToken::new(),
    );
    let settled = settle(&rt, &event()).await;
    assert_eq!(settled, Settled::ToLog);
    assert_eq!(dead.appended.lock().unwrap().len(), 1);
    assert_eq!(
        rt.metrics.dead_letter_counts().1,
        0,
        "settle itself counts nothing"
    );
    settled.count(&rt.metrics);
    assert_eq!(rt.metrics.dead_letter_counts().1, 1);
    assert_eq!(rt.metrics.delivered.get(), 0);
}

/// The dead-letter log is down and shutdown begins: settling ends (instead of
/// waiting forever for the log), the event is not done, and nothing is counted as
/// stored. Before, the future never completed and the lane sat out its whole drain.
#[tokio::test]
async fn shutdown_while_the_dead_letter_log_is_down_abandons_the_event() {
    let dead = Recording::new(1);
    dead.fail_appends.store(true, Ordering::Relaxed);
    let shutdown = CancellationToken::new();
    let rt = Arc::new(runtime(
        refusing_subscriber().await,
        dead.clone(),
        shutdown.clone(),
    ));
    let task = tokio::spawn({
        let rt = rt.clone();
        async move { settle(&rt, &event()).await }
    });
    // It keeps retrying the store while the log is down...
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !task.is_finished(),
        "gave up on the dead-letter log before shutdown"
    );
    shutdown.cancel();
    let settled = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("settling ends once shutdown begins")
        .unwrap();
    assert_eq!(settled, Settled::Abandoned);
    settled.count(&rt.metrics);
    assert_eq!(rt.metrics.dead_letter_counts().1, 0);
    assert!(dead.appended.lock().unwrap().is_empty());
}
