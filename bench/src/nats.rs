//! `triggerfish-bench nats`: ingress throughput on NATS JetStream beside raw JetStream
//! publishing of the same payload, in the same run against the same server.
//!
//! - Triggerfish: the real `triggerfish serve --storage nats://...` as a child process
//!   (4 partitions, no triggers), driven by the harness's load generator with `conns`
//!   keep-alive connections, each POSTing the 1 KiB binary-mode bench event and
//!   waiting for the 202 (which the ingress sends after the PubAck).
//! - raw: `conns` concurrent tasks on one async-nats connection, each publishing the
//!   same 1 KiB payload to a plain 4-subject file stream and awaiting the PubAck.
//! - raw + headers: the same with the headers the CloudEvents NATS binding gives the
//!   event and a `Nats-Msg-Id`, which is what Triggerfish stores.
//!
//! Each window is 1 s of warm-up then `secs` of counting; the raw run goes first and
//! last, to show drift. Streams get a unique prefix and are deleted at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use broker::channel::nats::async_nats::{self, jetstream, HeaderMap};
use bytes::Bytes;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::load::{stored_event, DATA_BYTES};
use crate::proc::{ingress_rate, ChannelLoad, IngressRate};

/// Flags of `triggerfish-bench nats`.
#[derive(Debug, Args)]
pub struct NatsArgs {
    /// The NATS server (e.g. from `scripts/dev-services env`).
    #[arg(long, env = "TRIGGERFISH_TEST_NATS_URL")]
    pub url: String,
    #[command(flatten)]
    pub load: ChannelLoad,
}

const WARMUP: Duration = Duration::from_secs(1);

/// Runs the comparison and prints the figures.
pub async fn run(a: NatsArgs) -> anyhow::Result<()> {
    let bin = a.load.server_bin()?;
    let conns = a.load.conns;
    let prefix = format!("bench-{}", std::process::id());
    let measure = a.load.measure();
    let client = async_nats::connect(a.url.trim_start_matches("nats://"))
        .await
        .with_context(|| format!("connecting to {}", a.url))?;
    let js = jetstream::new(client);
    let raw_stream = format!("{prefix}_raw");
    js.create_stream(jetstream::stream::Config {
        name: raw_stream.clone(),
        subjects: (0..4).map(|p| format!("{prefix}.raw.{p}")).collect(),
        max_bytes: 1 << 30,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("creating the raw stream")?;
    let event = stored_event("raw")?;
    let (headers, payload) = broker::channel::nats::encode(&event)?;

    eprintln!("raw JetStream publish ...");
    let raw1 = raw(&js, &prefix, None, payload.clone(), conns, measure).await;
    eprintln!("raw JetStream publish with the binding's headers ...");
    let rawh = raw(&js, &prefix, Some(headers), payload.clone(), conns, measure).await;

    eprintln!("triggerfish ingress on JetStream ({}) ...", bin.display());
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default, namespace: default}\n",
    )?;
    let args = [
        "serve",
        "--config",
        &config.to_string_lossy(),
        "--storage",
        &a.url,
        "--nats-prefix",
        &prefix,
        "--nats-max-bytes",
        "1073741824",
        "--listen",
        "127.0.0.1:0",
        "--no-admin",
        "--log",
        "warn",
    ]
    .map(str::to_owned);
    let IngressRate {
        accepted: tf,
        failed: tf_failed,
        cpu_us,
    } = ingress_rate(&bin, &args, conns, WARMUP, measure).await?;

    eprintln!("raw JetStream publish again ...");
    let raw2 = raw(&js, &prefix, None, payload, conns, measure).await;

    for name in [
        raw_stream,
        format!("{prefix}_events_default__default"),
        format!("{prefix}_deadletters_default__default"),
        format!("KV_{prefix}_checkpoints"),
        format!("KV_{prefix}_leases"),
    ] {
        let _ = js.delete_stream(&name).await;
    }

    let raw_mid = (raw1 + raw2) / 2.0;
    println!(
        "NATS JetStream, {} producers, {DATA_BYTES} B binary-mode events, {} s windows:",
        conns, a.load.secs
    );
    println!("  raw publish + PubAck (before)          {raw1:>9.0} ev/s");
    println!("  raw publish + PubAck (after)           {raw2:>9.0} ev/s");
    println!("  raw with binding headers + Msg-Id      {rawh:>9.0} ev/s");
    println!(
        "  triggerfish ingress, 202 after PubAck  {tf:>9.0} ev/s  ({tf_failed:.0}/s failed, {cpu_us:.1} µs CPU per event in the server)"
    );
    println!(
        "  ratio ingress / raw (mean of before and after): {:.2}; / raw with headers: {:.2}",
        tf / raw_mid,
        tf / rawh
    );
    Ok(())
}

/// Publishes `payload` (with `headers`, plus a unique `Nats-Msg-Id` when given) from
/// `conns` tasks, each awaiting its PubAck; returns acknowledged publishes per second.
async fn raw(
    js: &jetstream::Context,
    prefix: &str,
    headers: Option<HeaderMap>,
    payload: Bytes,
    conns: usize,
    measure: Duration,
) -> f64 {
    let acked = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..conns)
        .map(|i| {
            let (js, acked, stop, next) = (js.clone(), acked.clone(), stop.clone(), next.clone());
            let (headers, payload) = (headers.clone(), payload.clone());
            let subject = format!("{prefix}.raw.{}", i % 4);
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let sent = match &headers {
                        None => js.publish(subject.clone(), payload.clone()).await,
                        Some(h) => {
                            let mut h = h.clone();
                            h.insert("Nats-Msg-Id", format!("{prefix}-{n}").as_str());
                            js.publish_with_headers(subject.clone(), h, payload.clone())
                                .await
                        }
                    };
                    if let Ok(ack) = sent {
                        if ack.await.is_ok() {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(WARMUP).await;
    let (n0, t0) = (acked.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(measure).await;
    let n1 = acked.load(Ordering::Relaxed);
    let dt = t0.elapsed().as_secs_f64();
    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    (n1 - n0) as f64 / dt
}
