//! The conformance suite on Kafka (needs a Kafka-protocol broker: `scripts/test`
//! starts tansu, or `scripts/dev-services start` and `source .dev-services/env`).

use super::*;
use broker::channel::kafka::rdkafka::message::{Header, OwnedHeaders};
use broker::channel::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use broker::channel::kafka::rdkafka::ClientConfig;
use broker::channel::kafka::{KafkaLog, KafkaOptions};

/// A topic template no other run or test uses on the same cluster.
pub fn unique_template(tag: &str) -> String {
    format!(
        "{}-{{namespace}}-{{name}}",
        crate::common::procs::unique(tag)
    )
}

pub fn options(bootstrap: &str, template: &str, partitions: u32) -> KafkaOptions {
    let mut opts = KafkaOptions::from_url(&format!("kafka://{bootstrap}")).unwrap();
    opts.topic_template = template.to_owned();
    opts.partitions = partitions;
    // tansu reads exact offsets only from one-record batches (docs/design/kafka.md).
    opts.add_option("batch.num.messages=1").unwrap();
    opts
}

/// Fresh logs get a new topic template (so new topics and groups); reopen
/// connects again with the same one.
pub struct Kafka {
    bootstrap: String,
    partitions: u32,
    template: String,
}

impl Kafka {
    pub fn new(bootstrap: String, partitions: u32) -> Kafka {
        Kafka {
            bootstrap,
            partitions,
            template: unique_template("cf"),
        }
    }
}

impl Backend for Kafka {
    fn fresh(&mut self) -> Arc<dyn EventLog> {
        self.template = unique_template("cf");
        self.reopen()
    }
    fn reopen(&mut self) -> Arc<dyn EventLog> {
        let opts = options(&self.bootstrap, &self.template, self.partitions);
        let log = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(KafkaLog::connect(opts))
        })
        .unwrap();
        Arc::new(log)
    }
}

/// A producer that is not Triggerfish's.
pub fn foreign_producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("batch.num.messages", "1")
        .create()
        .unwrap()
}

/// Records written by another producer: binary mode (with a key and headers in
/// an order of its own), structured mode, and garbage, which reads back as
/// malformed with its bytes, between good records.
pub async fn foreign_records_are_read(b: &mut Kafka) {
    let log = b
        .fresh()
        .open(&broker(), broker::channel::LogKind::Events)
        .await
        .unwrap();
    let topic = b
        .template
        .replace("{namespace}", "default")
        .replace("{name}", "conformance");
    let producer = foreign_producer(&b.bootstrap);
    let send = |headers: OwnedHeaders, value: Option<&'static [u8]>| {
        let mut r: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(&topic).partition(0).headers(headers);
        if let Some(v) = value {
            r = r.payload(v);
        }
        producer.send(r, Duration::from_secs(10))
    };
    let h = |pairs: &[(&str, &str)]| {
        pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(*v),
            })
        })
    };
    send(
        h(&[
            ("content-type", "application/json"),
            ("ce_type", "com.example.foreign"),
            ("ce_source", "/connect"),
            ("ce_id", "f-1"),
            ("ce_specversion", "1.0"),
        ]),
        Some(br#"{"a":1}"#),
    )
    .await
    .unwrap();
    send(
        h(&[("content-type", "text/plain")]),
        Some(b"not a cloudevent"),
    )
    .await
    .unwrap();
    send(
        h(&[("content-type", "application/cloudevents+json")]),
        Some(br#"{"specversion":"1.0","id":"f-2","source":"/s","type":"t2","data":[1]}"#),
    )
    .await
    .unwrap();
    let mut r = log.reader(0, StartAt::Earliest).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let batch = tokio::time::timeout(Duration::from_secs(20), r.next_batch(10))
            .await
            .expect("records within 20 s")
            .unwrap();
        got.extend(batch);
    }
    let first = got[0].event.as_ref().unwrap();
    assert_eq!(first.id(), "f-1");
    assert_eq!(first.ty(), "com.example.foreign");
    assert_eq!(first.get_str("datacontenttype"), Some("application/json"));
    assert_eq!(first.data().map(|d| &d[..]), Some(&br#"{"a":1}"#[..]));
    let bad = got[1].event.as_ref().unwrap_err();
    assert!(
        bad.reason.contains(&format!(
            "topic {topic} partition 0 offset {}",
            got[1].offset
        )),
        "{}",
        bad.reason
    );
    assert_eq!(bad.data.as_deref(), Some(&b"not a cloudevent"[..]));
    assert_eq!(got[2].event.as_ref().unwrap().id(), "f-2");
    assert_eq!(
        [got[0].offset + 1, got[0].offset + 2],
        [got[1].offset, got[2].offset],
        "dense offsets"
    );
}

/// Two clients on the same topics, asking for 3 and 8 partitions.
pub async fn two_processes(bootstrap: &str) -> (KafkaLog, KafkaLog) {
    let template = unique_template("share");
    let first = KafkaLog::connect(options(bootstrap, &template, 3))
        .await
        .unwrap();
    let second = KafkaLog::connect(options(bootstrap, &template, 8))
        .await
        .unwrap();
    (first, second)
}

/// Two brokers whose names map to one topic are refused.
pub async fn colliding_topics_are_refused(bootstrap: &str) {
    let log = KafkaLog::connect(options(bootstrap, &unique_template("collide"), 1))
        .await
        .unwrap();
    log.open(&BrokerId::new("a-b", "c"), broker::channel::LogKind::Events)
        .await
        .unwrap();
    assert!(log
        .open(&BrokerId::new("a", "b-c"), broker::channel::LogKind::Events)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_second_process_shares_the_broker() {
    let Some(bootstrap) = common::kafka_bootstrap() else {
        return;
    };
    let (first, second) = two_processes(&bootstrap).await;
    a_second_process_shares_the_broker(&first, &second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_colliding_topics_are_refused() {
    let Some(bootstrap) = common::kafka_bootstrap() else {
        return;
    };
    colliding_topics_are_refused(&bootstrap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_leases_hand_over_explicitly() {
    let Some(bootstrap) = common::kafka_bootstrap() else {
        return;
    };
    let template = unique_template("handover");
    let first = KafkaLog::connect(options(&bootstrap, &template, 4))
        .await
        .unwrap();
    let second = KafkaLog::connect(options(&bootstrap, &template, 4))
        .await
        .unwrap();
    let (a, b) = (
        first
            .open(&broker(), broker::channel::LogKind::Events)
            .await
            .unwrap(),
        second
            .open(&broker(), broker::channel::LogKind::Events)
            .await
            .unwrap(),
    );
    leases_hand_over_explicitly(a.as_ref(), b.as_ref()).await;
}

/// A fresh group join (what a dispatcher does when partitions stay unassigned)
/// hands over what this member owns and gets the partitions back under new epochs;
/// a group where every partition is assigned reports none unowned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_rejoin_hands_over_and_joins_afresh() {
    let Some(bootstrap) = common::kafka_bootstrap() else {
        return;
    };
    let log = KafkaLog::connect(options(&bootstrap, &unique_template("rejoin"), 4))
        .await
        .unwrap();
    let b = log
        .open(&broker(), broker::channel::LogKind::Events)
        .await
        .unwrap();
    let a = b.leases("dispatcher-a", HandOver::default());
    let first = refresh_until(a.as_ref(), Duration::from_secs(30), "all assigned", |l| {
        l.owned.len() == 4 && l.unowned.is_empty()
    })
    .await;
    a.rejoin(&[]).await;
    let leaving = refresh_until(a.as_ref(), Duration::from_secs(30), "revoking", |l| {
        !l.revoking.is_empty()
    })
    .await;
    assert_eq!(leaving.revoking, vec![0, 1, 2, 3]);
    a.release(&leaving.revoking).await;
    let again = refresh_until(a.as_ref(), Duration::from_secs(60), "joined afresh", |l| {
        l.owned.len() == 4
    })
    .await;
    for l in &again.owned {
        assert!(
            l.epoch > first.epoch(l.partition).unwrap(),
            "{again:?} after {first:?}"
        );
    }
    a.close().await;
}
