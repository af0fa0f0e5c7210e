//! The channel conformance suite: behaviour every `EventLog` backend must show,
//! written once and run for each backend: the embedded log, NATS JetStream (against a
//! real nats-server) and Kafka (against a real Kafka-protocol broker, tansu), both
//! started by `scripts/dev-services`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use broker::channel::embedded::{EmbeddedLog, EmbeddedOptions};
use broker::channel::{BrokerLog, EventLog, StartAt};
use broker::config::BrokerId;
use broker::event::{AttrValue, DataKind, Event};
use bytes::Bytes;

/// A backend under test: makes a fresh, empty log (and can reopen the same one).
trait Backend {
    fn fresh(&mut self) -> Arc<dyn EventLog>;
    fn reopen(&mut self) -> Arc<dyn EventLog>;
}

struct Embedded {
    dir: tempfile::TempDir,
    current: Option<Arc<dyn EventLog>>,
    opts: EmbeddedOptions,
}

impl Embedded {
    fn new(opts: EmbeddedOptions) -> Embedded {
        Embedded {
            dir: tempfile::tempdir().unwrap(),
            current: None,
            opts,
        }
    }
}

impl Backend for Embedded {
    fn fresh(&mut self) -> Arc<dyn EventLog> {
        self.current = None;
        self.dir = tempfile::tempdir().unwrap();
        self.reopen()
    }
    fn reopen(&mut self) -> Arc<dyn EventLog> {
        // Drop the previous handle (and its directory lock) first.
        self.current = None;
        let log: Arc<dyn EventLog> =
            Arc::new(EmbeddedLog::open(self.dir.path(), self.opts.clone()).unwrap());
        self.current = Some(log.clone());
        log
    }
}

fn event(id: &str, key: Option<&str>) -> Event {
    let mut e = Event::new();
    e.set_str("specversion", "1.0");
    e.set_str("id", id);
    e.set_str("source", "/conformance");
    e.set_str("type", "t");
    e.set("n", AttrValue::Integer(42));
    if let Some(k) = key {
        e.set_str("partitionkey", k);
    }
    e.set_data(DataKind::Binary, Some(Bytes::from(format!("data-{id}"))));
    e
}

fn broker() -> BrokerId {
    BrokerId::new("default", "conformance")
}

async fn read_all(log: &dyn BrokerLog, start: StartAt) -> Vec<(u32, u64, Event)> {
    let mut out = Vec::new();
    for p in 0..log.partitions() {
        let mut r = log.reader(p, start).await.unwrap();
        loop {
            let batch = r.try_batch(1000).await.unwrap();
            if batch.is_empty() {
                break;
            }
            for rec in batch {
                out.push((p, rec.offset, rec.event.unwrap()));
            }
        }
    }
    out
}

async fn appended_events_read_back_intact_in_order(b: &mut dyn Backend) {
    let log = b.fresh().open(&broker()).await.unwrap();
    let events: Vec<Event> = (0..100)
        .map(|i| event(&format!("e{i}"), Some("same-key")))
        .collect();
    for chunk in events.chunks(7) {
        log.append(chunk).await.unwrap();
    }
    let got = read_all(log.as_ref(), StartAt::Earliest).await;
    assert_eq!(got.len(), 100);
    // One key, one partition, append order, consecutive offsets.
    let p = got[0].0;
    for (i, (gp, offset, e)) in got.iter().enumerate() {
        assert_eq!(*gp, p);
        assert_eq!(*offset, got[0].1 + i as u64);
        assert_eq!(e, &events[i], "event {i} intact");
    }
}

async fn readers_wait_for_appends_and_survive_being_dropped(b: &mut dyn Backend) {
    let log = b.fresh().open(&broker()).await.unwrap();
    let p = 0;
    let mut r = log.reader(p, StartAt::End).await.unwrap();
    let start = r.position();
    // A read that is dropped before anything arrives loses nothing.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), r.next_batch(10))
            .await
            .is_err()
    );
    // Events with a key hashing to partition 0 (found by trying).
    let mut wanted = Vec::new();
    for i in 0..2000 {
        let e = event(&format!("w{i}"), Some(&format!("k{i}")));
        if log.partition_of(&e, 0) == p {
            wanted.push(e);
        }
        if wanted.len() == 300 {
            break;
        }
    }
    let writer = {
        let log = log.clone();
        let wanted = wanted.clone();
        tokio::spawn(async move {
            for e in wanted.chunks(10) {
                log.append(e).await.unwrap();
            }
        })
    };
    // Read with futures that are often cancelled mid-read: every record exactly once.
    let mut seen = Vec::new();
    while seen.len() < wanted.len() {
        if let Ok(batch) = tokio::time::timeout(Duration::from_micros(200), r.next_batch(7)).await {
            for rec in batch.unwrap() {
                seen.push(rec.offset);
            }
        }
    }
    writer.await.unwrap();
    let expect: Vec<u64> = (start..start + wanted.len() as u64).collect();
    assert_eq!(
        seen, expect,
        "each record once, in order, despite cancelled reads"
    );
    assert_eq!(r.position(), start + wanted.len() as u64);
}

async fn start_positions_and_end_offsets(b: &mut dyn Backend) {
    let log = b.fresh().open(&broker()).await.unwrap();
    let n = log.partitions();
    assert!(n >= 1);
    let events: Vec<Event> = (0..40)
        .map(|i| event(&format!("s{i}"), Some(&format!("key{i}"))))
        .collect();
    log.append(&events).await.unwrap();
    let mut total = 0;
    for p in 0..n {
        let end = log.end_offset(p).await.unwrap();
        let r = log.reader(p, StartAt::End).await.unwrap();
        assert_eq!(r.position(), end);
        // `try_batch` returns what has arrived (never nothing while records exist):
        // a remote log may hand over a partition's records in several batches.
        let mut r = log.reader(p, StartAt::Offset(0)).await.unwrap();
        let mut got = Vec::new();
        while r.position() < end {
            let batch = r.try_batch(1000).await.unwrap();
            assert!(
                !batch.is_empty(),
                "partition {p}: nothing at {} of {end}",
                r.position()
            );
            got.extend(batch);
        }
        assert_eq!(got.len() as u64, end, "partition {p}");
        total += got.len();
        if end > 1 {
            let mut r = log.reader(p, StartAt::Offset(end - 1)).await.unwrap();
            let last = r.try_batch(10).await.unwrap();
            assert_eq!(last.len(), 1);
            assert_eq!(last[0].offset, end - 1);
        }
    }
    assert_eq!(total, 40);
}

async fn data_survives_reopen_and_checkpoints_persist(b: &mut dyn Backend) {
    let log = b.fresh().open(&broker()).await.unwrap();
    let events: Vec<Event> = (0..25).map(|i| event(&format!("r{i}"), None)).collect();
    log.append(&events).await.unwrap();
    let n = log.partitions();
    assert_eq!(
        log.load_checkpoint("t1").await.unwrap(),
        vec![None; n as usize]
    );
    // Partitions are stored separately: a store leaves the others as they are.
    let cp: Vec<(u32, u64)> = (0..n).map(|p| (p, u64::from(p) + 3)).collect();
    let (first, rest) = cp.split_at(1);
    log.store_checkpoint("t1", first, false).await.unwrap();
    let mut want: Vec<Option<u64>> = vec![None; n as usize];
    want[0] = Some(3);
    assert_eq!(log.load_checkpoint("t1").await.unwrap(), want);
    log.store_checkpoint("t1", rest, true).await.unwrap();
    // A start point never overwrites a stored checkpoint; it fills in missing ones.
    log.init_checkpoint("t1", &[(0, 99)]).await.unwrap();
    log.init_checkpoint("t2", &[(0, 7)]).await.unwrap();
    drop(log);
    let log = b.reopen().open(&broker()).await.unwrap();
    let want: Vec<Option<u64>> = cp.iter().map(|&(_, o)| Some(o)).collect();
    assert_eq!(log.load_checkpoint("t1").await.unwrap(), want);
    let mut t2 = vec![None; n as usize];
    t2[0] = Some(7);
    assert_eq!(log.load_checkpoint("t2").await.unwrap(), t2);
    assert!(
        log.store_checkpoint("t1", &[(n, 1)], false).await.is_err(),
        "no such partition"
    );
    let got = read_all(log.as_ref(), StartAt::Earliest).await;
    let ids: HashSet<String> = got.iter().map(|(_, _, e)| e.id().to_owned()).collect();
    assert_eq!(ids.len(), 25);
    for e in &events {
        assert!(ids.contains(e.id()));
    }
    // Appends continue after the recovered end.
    log.append(&[event("after", None)]).await.unwrap();
    assert_eq!(read_all(log.as_ref(), StartAt::Earliest).await.len(), 26);
}

async fn brokers_are_isolated(b: &mut dyn Backend) {
    let log = b.fresh();
    let a = log.open(&BrokerId::new("ns1", "b")).await.unwrap();
    let c = log.open(&BrokerId::new("ns2", "b")).await.unwrap();
    a.append(&[event("only-in-a", None)]).await.unwrap();
    assert_eq!(read_all(a.as_ref(), StartAt::Earliest).await.len(), 1);
    assert!(read_all(c.as_ref(), StartAt::Earliest).await.is_empty());
}

/// An event over the max message size is refused as too large, and a batch with
/// one stores nothing.
async fn oversized_events_are_too_large(b: &mut dyn Backend) {
    let log = b.fresh().open(&broker()).await.unwrap();
    let mut big = event("big", None);
    big.set_data(DataKind::Binary, Some(Bytes::from(vec![b'x'; 2 << 20])));
    match log.append(&[event("small", None), big]).await {
        Err(broker::channel::ChannelError::TooLarge { size, limit }) => {
            assert!(size > limit && size > 2 << 20, "{size} vs {limit}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(read_all(log.as_ref(), StartAt::Earliest).await.is_empty());
}

/// The dead-letter log: one partition, dense offsets, no de-duplication (one event
/// can be dead-lettered by several triggers), separate from the events and with
/// its own checkpoints.
async fn dead_letter_log_keeps_every_entry(b: &mut dyn Backend) {
    let log = b.fresh();
    let events = log.open(&broker()).await.unwrap();
    let dl = log.open_dead_letters(&broker()).await.unwrap();
    assert_eq!(dl.partitions(), 1);
    let start = dl.end_offset(0).await.unwrap();
    let mut a = event("failed", None);
    a.set_str("triggerfishtrigger", "t1");
    let mut b2 = a.clone();
    b2.set_str("triggerfishtrigger", "t2");
    dl.append(&[a.clone()]).await.unwrap();
    dl.append(&[b2.clone()]).await.unwrap();
    assert_eq!(dl.end_offset(0).await.unwrap(), start + 2);
    let got = read_all(dl.as_ref(), StartAt::Offset(start)).await;
    let offsets: Vec<u64> = got.iter().map(|(_, o, _)| *o).collect();
    assert_eq!(offsets, [start, start + 1]);
    assert_eq!(got[0].2, a);
    assert_eq!(got[1].2, b2);
    assert!(read_all(events.as_ref(), StartAt::Earliest)
        .await
        .is_empty());
    dl.store_checkpoint("_redrive", &[(0, start + 1)], true)
        .await
        .unwrap();
    assert!(events
        .load_checkpoint("_redrive")
        .await
        .unwrap()
        .iter()
        .all(Option::is_none));
    assert_eq!(
        dl.load_checkpoint("_redrive").await.unwrap(),
        vec![Some(start + 1)]
    );
}

async fn suite(b: &mut dyn Backend) {
    appended_events_read_back_intact_in_order(b).await;
    readers_wait_for_appends_and_survive_being_dropped(b).await;
    start_positions_and_end_offsets(b).await;
    data_survives_reopen_and_checkpoints_persist(b).await;
    brokers_are_isolated(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_options() {
    suite(&mut Embedded::new(EmbeddedOptions::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_four_partitions() {
    suite(&mut Embedded::new(EmbeddedOptions {
        partitions: 4,
        ..EmbeddedOptions::default()
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_one_partition_small_segments_no_fsync() {
    // Tiny segments exercise rolling and reads across segment boundaries.
    suite(&mut Embedded::new(EmbeddedOptions {
        partitions: 1,
        segment_bytes: 1024,
        fsync: broker::channel::embedded::FsyncPolicy::Never,
        ..EmbeddedOptions::default()
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_retention_by_size_moves_readers_to_the_earliest_event() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions {
        partitions: 1,
        segment_bytes: 2048,
        retention_bytes: Some(8192),
        ..EmbeddedOptions::default()
    };
    let log = EmbeddedLog::open(dir.path(), opts).unwrap();
    let b = log.open(&broker()).await.unwrap();
    for i in 0..200 {
        b.append(&[event(&format!("big{i}"), None)]).await.unwrap();
    }
    assert_eq!(b.end_offset(0).await.unwrap(), 200);
    let pdir = dir.path().join("brokers/default/conformance/p0");
    let size: u64 = std::fs::read_dir(&pdir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    // The limit plus the active segment and one record of slack.
    assert!(size <= 8192 + 2048 + 512, "retention kept {size} bytes");
    // A reader asking for offset 0 starts at the earliest retained event and reads
    // through to the end.
    let mut r = b.reader(0, StartAt::Offset(0)).await.unwrap();
    let mut offsets = Vec::new();
    loop {
        let batch = r.try_batch(1000).await.unwrap();
        if batch.is_empty() {
            break;
        }
        offsets.extend(batch.iter().map(|rec| rec.offset));
    }
    assert!(offsets[0] > 0, "offset 0 was removed by retention");
    assert_eq!(*offsets.last().unwrap(), 199);
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1));
}

// ---------------------------------------------------------------------------------
// NATS JetStream (needs a nats-server with JetStream: `scripts/test` starts one, or
// `scripts/dev-services start` and `source .dev-services/env`).
// ---------------------------------------------------------------------------------

mod nats_backend {
    use super::*;
    use broker::channel::nats::{NatsLog, NatsOptions};

    /// A prefix no other run or test uses on the same server.
    pub fn unique_prefix(tag: &str) -> String {
        crate::common::procs::unique(tag)
    }

    pub fn options(url: &str, prefix: &str, partitions: u32) -> NatsOptions {
        let mut opts = NatsOptions::from_url(url).unwrap();
        opts.prefix = prefix.to_owned();
        opts.partitions = partitions;
        // Keep file-store reservations small on the test server.
        opts.limits.max_bytes = Some(64 << 20);
        opts
    }

    /// Fresh logs get a new prefix (so new streams and checkpoint bucket); reopen
    /// connects again with the same prefix.
    pub struct Nats {
        url: String,
        partitions: u32,
        prefix: String,
    }

    impl Nats {
        pub fn new(url: String, partitions: u32) -> Nats {
            Nats {
                url,
                partitions,
                prefix: unique_prefix("cf"),
            }
        }

        pub async fn connect(&self) -> NatsLog {
            NatsLog::connect(options(&self.url, &self.prefix, self.partitions))
                .await
                .unwrap()
        }
    }

    impl Backend for Nats {
        fn fresh(&mut self) -> Arc<dyn EventLog> {
            self.prefix = unique_prefix("cf");
            self.reopen()
        }
        fn reopen(&mut self) -> Arc<dyn EventLog> {
            let log = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(self.connect())
            });
            Arc::new(log)
        }
    }

    /// Every record from a reader's position to the end, by `try_batch`.
    async fn drain(r: &mut dyn broker::channel::LogReader) -> Vec<broker::channel::Record> {
        let mut out = Vec::new();
        loop {
            let batch = r.try_batch(1000).await.unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch);
        }
    }

    /// `start_positions_and_end_offsets` for sparse offsets: JetStream offsets are
    /// (stream sequences - 1) shared by all partitions, so a partition's offsets increase
    /// with gaps and `end_offset` is the stream's next sequence.
    pub async fn sparse_start_positions_and_end_offsets(b: &mut dyn Backend) {
        let log = b.fresh().open(&broker()).await.unwrap();
        let n = log.partitions();
        assert!(n > 1, "run with several partitions");
        let events: Vec<Event> = (0..40)
            .map(|i| event(&format!("s{i}"), Some(&format!("key{i}"))))
            .collect();
        log.append(&events).await.unwrap();
        let mut all = Vec::new();
        for p in 0..n {
            let end = log.end_offset(p).await.unwrap();
            let mut at_end = log.reader(p, StartAt::End).await.unwrap();
            assert_eq!(at_end.position(), end);
            assert!(at_end.try_batch(10).await.unwrap().is_empty());
            let mut r = log.reader(p, StartAt::Offset(0)).await.unwrap();
            let got = drain(r.as_mut()).await;
            for w in got.windows(2) {
                assert!(w[0].offset < w[1].offset, "partition {p}: increasing");
            }
            for rec in &got {
                assert!(rec.offset < end);
                let e = rec.event.as_ref().unwrap();
                assert_eq!(
                    broker::channel::partition_for(e, n, 0),
                    p,
                    "right partition"
                );
            }
            if let Some(last) = got.last() {
                assert_eq!(r.position(), last.offset + 1);
                // Reading from a record's own offset starts with it.
                let mut again = log.reader(p, StartAt::Offset(last.offset)).await.unwrap();
                let one = drain(again.as_mut()).await;
                assert_eq!(one.len(), 1);
                assert_eq!(one[0].offset, last.offset);
                // Starting in a gap yields the next record of the partition.
                let mut gap = log
                    .reader(p, StartAt::Offset(got[0].offset + 1))
                    .await
                    .unwrap();
                let next = drain(gap.as_mut()).await;
                assert_eq!(next.len(), got.len() - 1);
            }
            all.extend(got.into_iter().map(|r| r.event.unwrap().id().to_owned()));
        }
        all.sort();
        let mut want: Vec<String> = events.iter().map(|e| e.id().to_owned()).collect();
        want.sort();
        assert_eq!(all, want, "every event once");
        // Appends after the end land at or after it.
        let end = log.end_offset(0).await.unwrap();
        let mut r = log.reader(0, StartAt::End).await.unwrap();
        let e = (0..100)
            .map(|i| event(&format!("late{i}"), Some(&format!("k{i}"))))
            .find(|e| broker::channel::partition_for(e, n, 0) == 0)
            .unwrap();
        log.append(std::slice::from_ref(&e)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), r.next_batch(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].offset >= end);
        assert_eq!(got[0].event.as_ref().unwrap(), &e);
    }

    /// A producer's retry (same `source` + `id`) is stored once; a new id is not.
    pub async fn producer_retries_are_deduplicated(b: &mut dyn Backend) {
        let log = b.fresh().open(&broker()).await.unwrap();
        let e = event("dup", Some("k"));
        log.append(std::slice::from_ref(&e)).await.unwrap();
        let mut retry = e.clone();
        retry.set_str("knativearrivaltime", "2030-01-01T00:00:00Z");
        log.append(&[retry]).await.unwrap();
        log.append(&[event("dup2", Some("k"))]).await.unwrap();
        let got = read_all(log.as_ref(), StartAt::Earliest).await;
        let ids: Vec<&str> = got.iter().map(|(_, _, e)| e.id()).collect();
        assert_eq!(ids, ["dup", "dup2"]);
        assert_eq!(got[0].2, e, "the first copy is kept");
    }

    /// Another process (a second dispatcher, a restarted one) sees the same broker:
    /// same partition count, events and checkpoints, even with other settings.
    pub async fn a_second_process_shares_the_broker(url: &str) {
        let prefix = unique_prefix("share");
        let first = NatsLog::connect(options(url, &prefix, 3)).await.unwrap();
        let a = first.open(&broker()).await.unwrap();
        a.append(&[event("shared", None)]).await.unwrap();
        a.store_checkpoint("t", &[(0, 1), (1, 2), (2, 3)], false)
            .await
            .unwrap();
        let second = NatsLog::connect(options(url, &prefix, 8)).await.unwrap();
        let b = second.open(&broker()).await.unwrap();
        assert_eq!(
            b.partitions(),
            3,
            "an existing broker keeps its partition count"
        );
        assert_eq!(
            b.load_checkpoint("t").await.unwrap(),
            vec![Some(1), Some(2), Some(3)]
        );
        // Two processes storing different partitions do not overwrite each other.
        b.store_checkpoint("t", &[(2, 30)], false).await.unwrap();
        a.store_checkpoint("t", &[(0, 10)], false).await.unwrap();
        assert_eq!(
            a.load_checkpoint("t").await.unwrap(),
            vec![Some(10), Some(2), Some(30)]
        );
        let got = read_all(b.as_ref(), StartAt::Earliest).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].2.id(), "shared");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream() {
    let Some(url) = common::nats_url() else {
        return;
    };
    let mut b = nats_backend::Nats::new(url.clone(), 4);
    // The shared cases, except the one that assumes dense offsets, which has a sparse
    // counterpart.
    appended_events_read_back_intact_in_order(&mut b).await;
    readers_wait_for_appends_and_survive_being_dropped(&mut b).await;
    nats_backend::sparse_start_positions_and_end_offsets(&mut b).await;
    data_survives_reopen_and_checkpoints_persist(&mut b).await;
    brokers_are_isolated(&mut b).await;
    // JetStream specifics.
    nats_backend::producer_retries_are_deduplicated(&mut b).await;
    oversized_events_are_too_large(&mut b).await;
    dead_letter_log_keeps_every_entry(&mut b).await;
    nats_backend::a_second_process_shares_the_broker(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream_one_partition() {
    let Some(url) = common::nats_url() else {
        return;
    };
    // With one partition offsets are dense: the whole shared suite applies.
    suite(&mut nats_backend::Nats::new(url, 1)).await;
}

mod kafka_backend {
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
        let log = b.fresh().open(&broker()).await.unwrap();
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

    /// Another process sees the same broker: same topic and partition count, events
    /// and checkpoints, even with other settings; processes storing different
    /// partitions do not overwrite each other.
    pub async fn a_second_process_shares_the_broker(bootstrap: &str) {
        let template = unique_template("share");
        let first = KafkaLog::connect(options(bootstrap, &template, 3))
            .await
            .unwrap();
        let a = first.open(&broker()).await.unwrap();
        a.append(&[event("shared", None)]).await.unwrap();
        a.store_checkpoint("t", &[(0, 1), (1, 2), (2, 3)], false)
            .await
            .unwrap();
        let second = KafkaLog::connect(options(bootstrap, &template, 8))
            .await
            .unwrap();
        let b = second.open(&broker()).await.unwrap();
        assert_eq!(
            b.partitions(),
            3,
            "an existing topic keeps its partition count"
        );
        assert_eq!(
            b.load_checkpoint("t").await.unwrap(),
            vec![Some(1), Some(2), Some(3)]
        );
        b.store_checkpoint("t", &[(2, 30)], false).await.unwrap();
        a.store_checkpoint("t", &[(0, 10)], false).await.unwrap();
        assert_eq!(
            a.load_checkpoint("t").await.unwrap(),
            vec![Some(10), Some(2), Some(30)]
        );
        let got = read_all(b.as_ref(), StartAt::Earliest).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].2.id(), "shared");
        // A new trigger's start point is created once among processes: the first wins,
        // and it never replaces progress.
        a.init_checkpoint("new", &[(0, 100)]).await.unwrap();
        b.init_checkpoint("new", &[(0, 160), (1, 7)]).await.unwrap();
        assert_eq!(
            b.load_checkpoint("new").await.unwrap(),
            vec![Some(100), Some(7), None]
        );
        a.store_checkpoint("new", &[(0, 150)], false).await.unwrap();
        b.init_checkpoint("new", &[(0, 170)]).await.unwrap();
        assert_eq!(b.load_checkpoint("new").await.unwrap()[0], Some(150));
        // Two brokers whose names map to one topic are refused.
        let t2 = unique_template("collide");
        let log = KafkaLog::connect(options(bootstrap, &t2, 1)).await.unwrap();
        log.open(&BrokerId::new("a-b", "c")).await.unwrap();
        assert!(log.open(&BrokerId::new("a", "b-c")).await.is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka() {
    let Some(bootstrap) = common::kafka_bootstrap() else {
        return;
    };
    let mut b = kafka_backend::Kafka::new(bootstrap.clone(), 4);
    // Offsets are dense Kafka offsets: the whole shared suite applies.
    suite(&mut b).await;
    oversized_events_are_too_large(&mut b).await;
    dead_letter_log_keeps_every_entry(&mut b).await;
    kafka_backend::foreign_records_are_read(&mut b).await;
    kafka_backend::a_second_process_shares_the_broker(&bootstrap).await;
}
