//! Append throughput of the NATS channel against raw JetStream, in the same run.
//!
//! ```sh
//! scripts/dev-services start && source .dev-services/env
//! cargo run --release -p broker --example nats_throughput -- [producers] [seconds]
//! ```
//!
//! Both sides publish 1 KiB events with the same number of concurrent producers, each
//! waiting for its PubAck before the next publish (what an ingress request does):
//! - `NatsBroker::append`: binding encoding, `Nats-Msg-Id`, partitioning, size checks,
//!   one event per append;
//! - raw: `jetstream.publish(subject, payload)` then await the ack, on a plain stream
//!   (run before and after the append run, to see drift);
//! - raw with the same headers: the binding's headers and a `Nats-Msg-Id`, published
//!   raw, which splits the cost between the server and Triggerfish's client side.
//!
//! Prints events/s of each and their ratio. A load harness, not a test: it asserts
//! nothing about speed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::channel::nats::async_nats::{self, jetstream};
use broker::channel::nats::{NatsLog, NatsOptions};
use broker::channel::{BrokerLog, EventLog};
use broker::config::BrokerId;
use broker::event::{DataKind, Event};
use bytes::Bytes;

const PAYLOAD: usize = 1024;

fn event(i: u64, payload: &Bytes) -> Event {
    let mut e = Event::new();
    e.set_str("specversion", "1.0");
    e.set_str("id", format!("ev-{i}"));
    e.set_str("source", "/bench/producer");
    e.set_str("type", "com.example.bench");
    e.set_str("datacontenttype", "application/octet-stream");
    e.set_data(DataKind::Binary, Some(payload.clone()));
    e
}

async fn run<F, Fut>(producers: usize, secs: u64, f: F) -> (u64, u64)
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..producers {
        let (f, ok, failed, counter) = (f.clone(), ok.clone(), failed.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                if f(i).await {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let producers: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let secs: u64 = args.next().map_or(Ok(10), |a| a.parse())?;
    let url = std::env::var("TRIGGERFISH_TEST_NATS_URL")
        .map_err(|_| "set TRIGGERFISH_TEST_NATS_URL (scripts/dev-services start)")?;
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let tag = std::process::id();

    let mut opts = NatsOptions::from_url(&url)?;
    opts.prefix = format!("bench-{tag}");
    opts.limits.max_bytes = Some(2 << 30);
    let log = NatsLog::connect(opts).await?;
    let b: Arc<dyn BrokerLog> = log
        .open(
            &BrokerId::new("bench", "b"),
            broker::channel::LogKind::Events,
        )
        .await?;

    let client = async_nats::connect(url.as_str()).await?;
    let js = jetstream::new(client);
    let raw_stream = format!("bench-raw-{tag}");
    js.create_stream(jetstream::stream::Config {
        name: raw_stream.clone(),
        subjects: vec![format!("bench.raw.{tag}")],
        max_bytes: 2 << 30,
        ..Default::default()
    })
    .await?;

    println!("{producers} producers, {secs} s each, {PAYLOAD}-byte events");
    // Raw first, then Triggerfish, then raw again to see drift.
    let raw = |js: jetstream::Context, subject: String, payload: Bytes| {
        move |_i: u64| {
            let (js, subject, payload) = (js.clone(), subject.clone(), payload.clone());
            async move {
                match js.publish(subject, payload).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                }
            }
        }
    };
    let subject = format!("bench.raw.{tag}");
    let (raw1, raw1_failed) = run(
        producers,
        secs,
        raw(js.clone(), subject.clone(), payload.clone()),
    )
    .await;
    let tf = {
        let b = b.clone();
        let payload = payload.clone();
        move |i: u64| {
            let (b, e) = (b.clone(), event(i, &payload));
            async move { b.append(std::slice::from_ref(&e)).await.is_ok() }
        }
    };
    let (tf_ok, tf_failed) = run(producers, secs, tf).await;
    let (raw2, raw2_failed) = run(
        producers,
        secs,
        raw(js.clone(), subject.clone(), payload.clone()),
    )
    .await;
    // Raw again with the same headers Triggerfish writes (binding + Nats-Msg-Id), to
    // split the cost between the server (headers, de-duplication) and our client side.
    let with_headers = {
        let (js, subject, payload) = (js.clone(), subject.clone(), payload.clone());
        move |i: u64| {
            let (js, subject, payload) = (js.clone(), subject.clone(), payload.clone());
            async move {
                let e = event(i, &payload);
                let Ok((mut headers, body)) = broker::channel::nats::encode(&e) else {
                    return false;
                };
                headers.insert("Nats-Msg-Id", broker::channel::nats::msg_id(&e).as_str());
                match js.publish_with_headers(subject, headers, body).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                }
            }
        }
    };
    let (hdr, hdr_failed) = run(producers, secs, with_headers).await;

    let rate = |n: u64| n as f64 / secs as f64;
    let raw_rate = (rate(raw1) + rate(raw2)) / 2.0;
    println!(
        "raw JetStream publish+ack : {:>9.0} events/s (runs {:.0} and {:.0}; failed {})",
        raw_rate,
        rate(raw1),
        rate(raw2),
        raw1_failed + raw2_failed
    );
    println!(
        "NatsBroker::append        : {:>9.0} events/s (failed {tf_failed})",
        rate(tf_ok)
    );
    println!(
        "raw + same headers/msg-id : {:>9.0} events/s (failed {hdr_failed})",
        rate(hdr)
    );
    println!(
        "ratio append / raw        : {:>9.2}",
        rate(tf_ok) / raw_rate
    );
    println!(
        "ratio append / raw+headers: {:>9.2}",
        rate(tf_ok) / rate(hdr)
    );
    let _ = js.delete_stream(&raw_stream).await;
    Ok(())
}
