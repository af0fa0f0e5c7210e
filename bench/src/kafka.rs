//! `triggerfish-bench kafka`: ingress throughput on Kafka beside a raw rdkafka producer
//! loop of the same records, in the same run against the same cluster.
//!
//! - Triggerfish: the real `triggerfish serve --storage kafka://...` as a child process
//!   (4 partitions, no triggers), driven by the harness's load generator with `conns`
//!   keep-alive connections, each POSTing the 1 KiB binary-mode bench event and waiting
//!   for the 202 (which the ingress sends after Kafka's delivery report).
//! - raw: `conns` concurrent tasks sharing one idempotent `acks=all` FutureProducer
//!   (the settings Triggerfish's producer has, plus the same `--kafka-option`s), each
//!   producing the record the CloudEvents Kafka binding makes of the bench event
//!   (same headers, same 1 KiB value) to a 4-partition topic and awaiting its
//!   delivery report.
//!
//! Each window is 1 s of warm-up then `secs` of counting; the raw loop runs before and
//! after Triggerfish, to show drift. Topics get a unique name; they are not deleted
//! (tansu's memory engine forgets them when it stops).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use broker::channel::kafka::binding;
use broker::channel::kafka::rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, TopicReplication,
};
use broker::channel::kafka::rdkafka::client::DefaultClientContext;
use broker::channel::kafka::rdkafka::message::{Header, OwnedHeaders};
use broker::channel::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use broker::channel::kafka::rdkafka::ClientConfig;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::load::{stored_event, DATA_BYTES};
use crate::proc::{ingress_rate, ChannelLoad, IngressRate};

/// Flags of `triggerfish-bench kafka`.
#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// The bootstrap server (e.g. from `scripts/dev-services env`).
    #[arg(long, env = "TRIGGERFISH_TEST_KAFKA_BOOTSTRAP")]
    pub bootstrap: String,
    /// librdkafka settings for both producers (repeatable). Against tansu, the test
    /// broker, pass batch.num.messages=1 (it reads exact offsets only from one-record
    /// batches); a real Kafka cluster needs nothing.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,
    #[command(flatten)]
    pub load: ChannelLoad,
}

const WARMUP: Duration = Duration::from_secs(1);

/// Runs the comparison and prints the figures.
pub async fn run(a: KafkaArgs) -> anyhow::Result<()> {
    let bin = a.load.server_bin()?;
    let conns = a.load.conns;
    let tag = format!("bench-{}", std::process::id());
    let measure = a.load.measure();
    let mut options = Vec::new();
    for kv in &a.kafka_options {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--kafka-option {kv}: expected KEY=VALUE"))?;
        options.push((k.to_owned(), v.to_owned()));
    }
    let client = |id: &str| {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &a.bootstrap)
            .set("client.id", id);
        c
    };
    let raw_topic = format!("{tag}-raw");
    let admin: AdminClient<DefaultClientContext> = client("bench-admin").create()?;
    admin
        .create_topics(
            [&NewTopic::new(&raw_topic, 4, TopicReplication::Fixed(-1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .context("creating the raw topic")?;
    let mut cfg = client("bench-raw");
    // What Triggerfish's producer has (channel::kafka), then the same options.
    cfg.set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("acks", "all");
    for (k, v) in &options {
        cfg.set(k, v);
    }
    let producer: FutureProducer = cfg.create().context("creating the raw producer")?;
    let record = binding::encode(&stored_event("raw")?);

    eprintln!("raw rdkafka producer loop ...");
    let raw1 = raw(&producer, &raw_topic, &record, conns, measure).await;

    eprintln!("triggerfish ingress on Kafka ({}) ...", bin.display());
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default, namespace: default}\n",
    )?;
    let mut args: Vec<String> = [
        "serve",
        "--config",
        &config.to_string_lossy(),
        "--storage",
        &format!("kafka://{}", a.bootstrap),
        "--kafka-topic-template",
        &format!("{tag}-{{namespace}}-{{name}}"),
        "--partitions",
        "4",
        "--listen",
        "127.0.0.1:0",
        "--no-admin",
        "--log",
        "warn",
    ]
    .map(str::to_owned)
    .to_vec();
    for kv in &a.kafka_options {
        args.extend(["--kafka-option".to_owned(), kv.clone()]);
    }
    let IngressRate {
        accepted: tf,
        failed: tf_failed,
        cpu_us,
    } = ingress_rate(&bin, &args, conns, WARMUP, measure).await?;

    eprintln!("raw rdkafka producer loop again ...");
    let raw2 = raw(&producer, &raw_topic, &record, conns, measure).await;

    let raw_mid = (raw1 + raw2) / 2.0;
    println!(
        "Kafka at {}, {} producers, {DATA_BYTES} B binary-mode events, {} s windows, options {:?}:",
        a.bootstrap, conns, a.load.secs, a.kafka_options
    );
    println!("  raw rdkafka produce + report (before)   {raw1:>9.0} ev/s");
    println!("  raw rdkafka produce + report (after)    {raw2:>9.0} ev/s");
    println!(
        "  triggerfish ingress, 202 after report   {tf:>9.0} ev/s  ({tf_failed:.0}/s failed, {cpu_us:.1} µs CPU per event in the server)"
    );
    println!(
        "  ratio ingress / raw (mean of before and after): {:.2}",
        tf / raw_mid
    );
    Ok(())
}

/// Produces `record` from `conns` tasks, each awaiting its delivery report; returns
/// acknowledged records per second.
async fn raw(
    producer: &FutureProducer,
    topic: &str,
    record: &binding::Encoded,
    conns: usize,
    measure: Duration,
) -> f64 {
    let acked = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let tasks: Vec<_> = (0..conns)
        .map(|i| {
            let (producer, acked, stop) = (producer.clone(), acked.clone(), stop.clone());
            let (topic, record) = (topic.to_owned(), record.clone());
            let partition = (i % 4) as i32;
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
                    for (k, v) in &record.headers {
                        headers = headers.insert(Header {
                            key: k,
                            value: Some(v.as_str()),
                        });
                    }
                    let value = record.value.as_deref().unwrap_or_default();
                    let r: FutureRecord<'_, str, [u8]> = FutureRecord::to(&topic)
                        .partition(partition)
                        .headers(headers)
                        .payload(value);
                    if let Ok(f) = producer.send_result(r) {
                        if let Ok(Ok(_)) = f.await {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
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
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
    (n1 - n0) as f64 / dt
}
