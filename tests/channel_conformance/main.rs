//! The channel conformance suite: behaviour every `EventLog` backend must show,
//! written once and run for each backend: the embedded log (three configurations),
//! NATS JetStream (against a real nats-server; four partitions and one) and Kafka
//! (against a real Kafka-protocol broker, tansu), both started by
//! `scripts/dev-services`. [`conformance!`] generates one `#[test]` per case per
//! backend (`embedded::oversized_events_are_too_large`,
//! `jetstream::…`), so a failure names both; backend-only cases are added to a
//! backend's list, and cases that need two processes or special settings are plain
//! tests beside it.

#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;
#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "nats")]
mod nats;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::channel::embedded::{EmbeddedLog, EmbeddedOptions};
use broker::channel::lease::{HandOver, Leased, PartitionLeases};
use broker::channel::{
    BrokerLog, ChannelError, CheckpointUpdate, EventLog, Offsets, StartAt, NO_EPOCH,
};
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

/// Checkpoint writes outside any lease.
fn cps(v: &[(u32, u64)]) -> Vec<CheckpointUpdate> {
    v.iter()
        .map(|&(p, o)| CheckpointUpdate::unleased(p, o))
        .collect()
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
    let log = b
        .fresh()
        .open(&broker(), broker::channel::LogKind::Events)
        .await
        .unwrap();
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
    let log = b
        .fresh()
        .open(&broker(), broker::channel::LogKind::Events)
        .await
        .unwrap();
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

/// Offsets are as the log states ([`BrokerLog::offsets`]): dense logs number a
/// partition's records consecutively, sparse ones increasingly; either way the
/// reader starts and end offsets agree with what is stored.
async fn start_positions_and_end_offsets(b: &mut dyn Backend) {
    let probe = b
        .fresh()
        .open(&broker(), broker::channel::LogKind::Events)
        .await
        .unwrap();
    match probe.offsets() {
        Offsets::Dense => dense_start_positions_and_end_offsets(b).await,
        Offsets::Sparse => sparse_start_positions_and_end_offsets(b).await,
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
async fn sparse_start_positions_and_end_offsets(b: &mut dyn Backend) {
    let (log, events) = forty_keyed_events(b).await;
    let n = log.partitions();
    assert!(n > 1, "run with several partitions");
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

/// A fresh log holding 40 events with 40 partition keys.
async fn forty_keyed_events(b: &mut dyn Backend) -> (Arc<dyn BrokerLog>, Vec<Event>) {
    let log = b
        .fresh()
        .open(&broker(), broker::channel::LogKind::Events)
        .await
        .unwrap();
    let events: Vec<Event> = (0..40)
        .map(|i| event(&format!("s{i}"), Some(&format!("key{i}"))))
        .collect();
    log.append(&events).await.unwrap();
    (log, events)
}

async fn dense_start_positions_and_end_offsets(b: &mut dyn Backend) {
    let (log, _) = forty_keyed_events(b).await;
    let n = log.partitions();
    assert!(n >= 1);
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
        for (i, rec) in got.iter().enumerate() {
            assert_eq!(rec.offset, i as u64, "partition {p}: dense offsets");
        }
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
    let log = b
        .fresh()
        .open(&broker(), broker::channel::LogKind::Events)
        .await
        .unwrap();
    let events: Vec<Event> = (0..25).map(|i| event(&format!("r{i}"), None)).collect();
    // One at a time, so that unkeyed events spread over the partitions and each
    // holds more than the checkpoints below (a checkpoint past a partition's end is
    // moved back to it when read, the embedded log's recovery after a power loss).
    for e in &events {
        log.append(std::slice::from_ref(e)).await.unwrap();
    }
    let n = log.partitions();
    assert_eq!(
        log.load_checkpoint("t1").await.unwrap(),
        vec![None; n as usize]
    );
    // Partitions are stored separately: a store leaves the others as they are.
    let cp: Vec<CheckpointUpdate> = (0..n)
        .map(|p| CheckpointUpdate::unleased(p, u64::from(p) + 3))
        .collect();
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
    let log = b
        .reopen()
        .open(&broker(), broker::channel::LogKind::Events)
        .await
        .unwrap();
    let want: Vec<Option<u64>> = cp.iter().map(|u| Some(u.offset)).collect();
    assert_eq!(log.load_checkpoint("t1").await.unwrap(), want);
    let mut t2 = vec![None; n as usize];
    t2[0] = Some(7);
    assert_eq!(log.load_checkpoint("t2").await.unwrap(), t2);
    assert!(
        log.store_checkpoint("t1", &cps(&[(n, 1)]), false)
            .await
            .is_err(),
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
    let a = log
        .open(&BrokerId::new("ns1", "b"), broker::channel::LogKind::Events)
        .await
        .unwrap();
    let c = log
        .open(&BrokerId::new("ns2", "b"), broker::channel::LogKind::Events)
        .await
        .unwrap();
    a.append(&[event("only-in-a", None)]).await.unwrap();
    assert_eq!(read_all(a.as_ref(), StartAt::Earliest).await.len(), 1);
    assert!(read_all(c.as_ref(), StartAt::Earliest).await.is_empty());
}

/// An event over the max message size is refused as too large, and a batch with
/// one stores nothing.
async fn oversized_events_are_too_large(b: &mut dyn Backend) {
    let log = b
        .fresh()
        .open(&broker(), broker::channel::LogKind::Events)
        .await
        .unwrap();
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
    let events = log
        .open(&broker(), broker::channel::LogKind::Events)
        .await
        .unwrap();
    let dl = log
        .open(&broker(), broker::channel::LogKind::DeadLetters)
        .await
        .unwrap();
    assert_eq!(dl.partitions(), 1);
    assert_eq!(
        dl.offsets(),
        Offsets::Dense,
        "redrive counts on dense offsets"
    );
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
    dl.store_checkpoint("_redrive", &cps(&[(0, start + 1)]), true)
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

/// Another process (a second dispatcher, a restarted one) sees the same broker: same
/// partition count, events and checkpoints, even with other settings (`second` asked
/// for 8 partitions, `first` for 3). Processes storing different partitions do not
/// overwrite each other, and a new trigger's start point is created once among them:
/// the first wins, and it never replaces progress.
#[cfg(any(feature = "nats", feature = "kafka"))]
async fn a_second_process_shares_the_broker(first: &dyn EventLog, second: &dyn EventLog) {
    let a = first
        .open(&broker(), broker::channel::LogKind::Events)
        .await
        .unwrap();
    a.append(&[event("shared", None)]).await.unwrap();
    a.store_checkpoint("t", &cps(&[(0, 1), (1, 2), (2, 3)]), false)
        .await
        .unwrap();
    let b = second
        .open(&broker(), broker::channel::LogKind::Events)
        .await
        .unwrap();
    assert_eq!(
        b.partitions(),
        3,
        "an existing broker keeps its partition count"
    );
    assert_eq!(
        b.load_checkpoint("t").await.unwrap(),
        vec![Some(1), Some(2), Some(3)]
    );
    b.store_checkpoint("t", &cps(&[(2, 30)]), false)
        .await
        .unwrap();
    a.store_checkpoint("t", &cps(&[(0, 10)]), false)
        .await
        .unwrap();
    assert_eq!(
        a.load_checkpoint("t").await.unwrap(),
        vec![Some(10), Some(2), Some(30)]
    );
    let got = read_all(b.as_ref(), StartAt::Earliest).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].2.id(), "shared");
    a.init_checkpoint("new", &[(0, 100)]).await.unwrap();
    b.init_checkpoint("new", &[(0, 160), (1, 7)]).await.unwrap();
    assert_eq!(
        b.load_checkpoint("new").await.unwrap(),
        vec![Some(100), Some(7), None]
    );
    a.store_checkpoint("new", &cps(&[(0, 150)]), false)
        .await
        .unwrap();
    b.init_checkpoint("new", &[(0, 170)]).await.unwrap();
    assert_eq!(b.load_checkpoint("new").await.unwrap()[0], Some(150));
}

/// Triggerfish's own appends (replies, redrives) are never de-duplicated against a
/// producer's: a transformer's reply that keeps its event's `source` and `id`, sent a
/// moment after it, is stored as a second record (NATS JetStream swallowed it within
/// its two-minute duplicate window: acknowledged, never stored).
async fn own_appends_are_never_deduplicated(b: &mut dyn Backend) {
    let log = b
        .fresh()
        .open(&broker(), broker::channel::LogKind::Events)
        .await
        .unwrap();
    let original = event("same", None);
    log.append(std::slice::from_ref(&original)).await.unwrap();
    let mut reply = original.clone();
    reply.set_str("type", "reply");
    log.append_own(std::slice::from_ref(&reply)).await.unwrap();
    log.append_own(std::slice::from_ref(&reply)).await.unwrap();
    let got = read_all(log.as_ref(), StartAt::Earliest).await;
    let mut types: Vec<&str> = got.iter().map(|(_, _, e)| e.ty()).collect();
    types.sort_unstable();
    assert_eq!(types, ["reply", "reply", "t"], "every own append is stored");
}

/// One `#[tokio::test]` per case for a backend: `conformance!(name => backend
/// expression (an `Option`: `None` skips, for servers the run was told to skip); extra
/// cases)`. Every backend runs the shared cases listed in its first arm.
macro_rules! conformance {
    ($name:ident => $backend:expr $(; $($extra:ident),+)?) => {
        conformance!(@cases $name => $backend;
            own_appends_are_never_deduplicated,
            appended_events_read_back_intact_in_order,
            readers_wait_for_appends_and_survive_being_dropped,
            start_positions_and_end_offsets,
            data_survives_reopen_and_checkpoints_persist,
            brokers_are_isolated,
            oversized_events_are_too_large,
            dead_letter_log_keeps_every_entry
            $($(, $extra)+)?);
    };
    (@cases $name:ident => $backend:expr; $($case:ident),+) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(mut b) = $backend else { return };
                    super::$case(&mut b).await;
                }
            )+
        }
    };
}

#[cfg(feature = "kafka")]
use kafka::foreign_records_are_read;
#[cfg(feature = "nats")]
use nats::{dead_letters_never_expire, producer_retries_are_deduplicated};

/// The embedded log's defaults, except events over 1 MiB are refused (as NATS and
/// Kafka do by default), so that the oversized-event case applies.
fn embedded_opts() -> EmbeddedOptions {
    EmbeddedOptions {
        max_event_bytes: 1 << 20,
        ..EmbeddedOptions::default()
    }
}

conformance!(embedded => Some(Embedded::new(embedded_opts())));
conformance!(embedded_four_partitions => Some(Embedded::new(EmbeddedOptions {
    partitions: 4,
    ..embedded_opts()
})));
// Tiny segments exercise rolling and reads across segment boundaries.
conformance!(embedded_small_segments_no_fsync => Some(Embedded::new(EmbeddedOptions {
    partitions: 1,
    segment_bytes: 1024,
    fsync: broker::channel::embedded::FsyncPolicy::Never,
    ..embedded_opts()
})));
#[cfg(feature = "nats")]
conformance!(jetstream => common::nats_url().map(|u| nats::Nats::new(u, 4));
    producer_retries_are_deduplicated, dead_letters_never_expire);
#[cfg(feature = "nats")]
conformance!(jetstream_one_partition => common::nats_url().map(|u| nats::Nats::new(u, 1)));
#[cfg(feature = "kafka")]
conformance!(kafka_log => common::kafka_bootstrap().map(|b| kafka::Kafka::new(b, 4));
    foreign_records_are_read);

/// A reader from offset 0 of a log whose retention removed its start: it begins at
/// the earliest event and reports the offsets it passed over, never moving up
/// silently. `dense`: offsets are consecutive (so the report is exact).
pub async fn a_reader_behind_the_log_start_reports_what_it_skipped(
    log: &dyn BrokerLog,
    dense: bool,
) {
    let mut r = log.reader(0, StartAt::Offset(0)).await.unwrap();
    let mut offsets = Vec::new();
    let mut skipped = None;
    loop {
        let batch = r.try_batch(1000).await.unwrap();
        if let Some(s) = r.take_skipped() {
            skipped = Some(broker::channel::Skipped::add(skipped, s));
        }
        if batch.is_empty() {
            break;
        }
        offsets.extend(batch.iter().map(|rec| rec.offset));
    }
    let first = offsets[0];
    assert!(first > 0, "offset 0 was removed by retention");
    let s = skipped.expect("the reader reports what it skipped");
    assert_eq!(s.from, 0);
    assert!(
        s.to <= first && s.count == s.to - s.from,
        "{s:?}, first read {first}"
    );
    if dense {
        assert_eq!(s.to, first, "exactly the offsets not read");
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1));
    }
    // Read in full from here on: nothing more is reported.
    let mut again = log.reader(0, StartAt::Offset(first)).await.unwrap();
    let _ = again.try_batch(1000).await.unwrap();
    assert_eq!(again.take_skipped(), None);
}

/// An embedded log of 2 KiB segments kept to 8 KiB per partition.
async fn small_segments(dir: &std::path::Path) -> (EmbeddedLog, Arc<dyn BrokerLog>) {
    let opts = EmbeddedOptions {
        partitions: 1,
        segment_bytes: 2048,
        retention_bytes: Some(8192),
        ..EmbeddedOptions::default()
    };
    let log = EmbeddedLog::open(dir, opts).unwrap();
    let b = log
        .open(&broker(), broker::channel::LogKind::Events)
        .await
        .unwrap();
    (log, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_retention_by_size_moves_readers_to_the_earliest_event() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, b) = small_segments(dir.path()).await;
    // No triggers: nothing holds retention back.
    b.retain_for(&[]).await.unwrap();
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
    a_reader_behind_the_log_start_reports_what_it_skipped(b.as_ref(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_retention_keeps_what_a_trigger_has_not_passed() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, b) = small_segments(dir.path()).await;
    b.init_checkpoint("t", &[(0, 0)]).await.unwrap();
    b.retain_for(&["t".to_owned()]).await.unwrap();
    let mut stored = 0u64;
    let refusal = loop {
        match b.append(&[event(&format!("big{stored}"), None)]).await {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 1000, "never held");
    };
    assert!(
        matches!(&refusal, ChannelError::RetentionFull { trigger, checkpoint: 0, limit: 8192, .. } if trigger == "t"),
        "{refusal}"
    );
    // Everything stored is still there for the trigger.
    let all = read_all(b.as_ref(), StartAt::Offset(0)).await;
    assert_eq!(all.len() as u64, stored);
    assert_eq!(all[0].1, 0);
    // Own appends (replies) are let through.
    b.append_own(&[event("reply", None)]).await.unwrap();
    // The trigger passes everything: the oldest segments go and producers are taken.
    let end = b.end_offset(0).await.unwrap();
    b.store_checkpoint("t", &cps(&[(0, end)]), false)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Err(e) = b.append(&[event("after", None)]).await {
        assert!(std::time::Instant::now() < deadline, "still refused: {e}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = b.reader(0, StartAt::Earliest).await.unwrap();
    assert!(r.position() > 0, "delivered segments deleted");
}

/// Refreshes `l` until `done` holds for what it returns, failing after `within`.
async fn refresh_until(
    l: &dyn PartitionLeases,
    within: Duration,
    what: &str,
    mut done: impl FnMut(&Leased) -> bool,
) -> Leased {
    let deadline = Instant::now() + within;
    loop {
        let leased = l.refresh().await.unwrap();
        if done(&leased) {
            return leased;
        }
        assert!(Instant::now() < deadline, "{what}: still {leased:?}");
        // The coordinator's own refresh period (capped, to keep the case short).
        tokio::time::sleep(l.renew_every().min(Duration::from_millis(500))).await;
    }
}

/// The partition lease contract (`broker::channel::lease`), for logs shared by
/// processes: `first` and `second` are one broker opened by two processes. A
/// partition changes owner only once the old owner released it; the new owner's
/// epoch is greater; the old owner's checkpoint writes are fenced from then on.
pub async fn leases_hand_over_explicitly(first: &dyn BrokerLog, second: &dyn BrokerLog) {
    let hand_over = HandOver {
        deadline: Duration::from_secs(120),
    };
    let partitions = first.partitions();
    assert!(partitions >= 2, "needs partitions to split");
    let a = first.leases("dispatcher-a", hand_over);
    let alone = refresh_until(a.as_ref(), Duration::from_secs(30), "a alone", |l| {
        l.owned.len() == partitions as usize
    })
    .await;
    assert!(alone.revoking.is_empty());
    for l in &alone.owned {
        assert!(l.epoch > NO_EPOCH, "{l:?}");
        first
            .store_checkpoint(
                "t",
                &[CheckpointUpdate::new(l.partition, 10, l.epoch)],
                true,
            )
            .await
            .unwrap();
    }

    // b joins: a is asked to hand some partitions over, and keeps them until it
    // releases them, however long its drain takes.
    let b = second.leases("dispatcher-b", hand_over);
    let joined = tokio::spawn({
        let b = b.clone();
        async move { b.refresh().await.unwrap() }
    });
    let asked = refresh_until(
        a.as_ref(),
        Duration::from_secs(60),
        "a asked to hand over",
        |l| !l.revoking.is_empty(),
    )
    .await;
    let moving = asked.revoking.clone();
    assert_eq!(
        asked.owned.len() + moving.len(),
        partitions as usize,
        "{asked:?}"
    );
    let first_b = joined.await.unwrap();
    let held_for = Instant::now() + Duration::from_secs(3);
    let mut b_owned = first_b.partitions();
    loop {
        assert!(
            moving.iter().all(|p| !b_owned.contains(p)),
            "b owns {b_owned:?} while a still hands over {moving:?}"
        );
        let still = a.refresh().await.unwrap();
        assert_eq!(
            still.revoking, moving,
            "a keeps handing over until it releases"
        );
        if Instant::now() >= held_for {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        b_owned = b.refresh().await.unwrap().partitions();
    }

    // a's final checkpoints, then the release: b gets them, under greater epochs.
    for &p in &moving {
        let epoch = alone.epoch(p).unwrap();
        first
            .store_checkpoint("t", &[CheckpointUpdate::new(p, 20, epoch)], true)
            .await
            .unwrap();
    }
    a.release(&moving).await;
    let taken = refresh_until(b.as_ref(), Duration::from_secs(60), "b takes over", |l| {
        moving.iter().all(|p| l.epoch(*p).is_some())
    })
    .await;
    let stored = second.load_checkpoint("t").await.unwrap();
    for &p in &moving {
        let (old, new) = (alone.epoch(p).unwrap(), taken.epoch(p).unwrap());
        assert!(new > old, "partition {p}: epoch {new} after {old}");
        assert_eq!(
            stored[p as usize],
            Some(20),
            "b starts at a's final checkpoint"
        );
        second
            .store_checkpoint("t", &[CheckpointUpdate::new(p, 30, new)], true)
            .await
            .unwrap();
    }
    let a_now = a.refresh().await.unwrap();
    assert!(a_now.revoking.is_empty(), "{a_now:?}");
    assert!(moving.iter().all(|p| a_now.epoch(*p).is_none()));

    // a, were it to write late under its old epoch, is fenced and changes nothing.
    let _ = first.load_checkpoint("t").await.unwrap(); // a has seen b's writes
    let p = moving[0];
    let stale = first
        .store_checkpoint(
            "t",
            &[CheckpointUpdate::new(p, 25, alone.epoch(p).unwrap())],
            true,
        )
        .await;
    assert!(
        matches!(stale, Err(ChannelError::Fenced { partition, .. }) if partition == p),
        "{stale:?}"
    );
    assert_eq!(
        second.load_checkpoint("t").await.unwrap()[p as usize],
        Some(30)
    );
    assert_eq!(
        first.load_checkpoint("t").await.unwrap()[p as usize],
        Some(30)
    );
    // Partitions a kept are still a's to write.
    for l in &a_now.owned {
        first
            .store_checkpoint(
                "t",
                &[CheckpointUpdate::new(l.partition, 40, l.epoch)],
                true,
            )
            .await
            .unwrap();
    }
    a.close().await;
    b.close().await;
}
