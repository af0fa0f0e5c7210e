//! The embedded reader: records across read-ahead chunks, damaged payloads,
//! headers and sealed segments.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::reader::READ_CHUNK;
use crate::channel::embedded::{EmbeddedLog, EmbeddedOptions, FsyncPolicy};
use crate::channel::{BrokerLog, EventLog, Record, StartAt};
use crate::config::BrokerId;
use crate::event::{codec, AttrValue, DataKind, Event};

fn event(i: usize, data_len: usize) -> Event {
    let mut e = Event::new();
    e.set_str("specversion", "1.0");
    e.set_str("id", format!("e{i}"));
    e.set_str("source", "/reader");
    e.set_str("type", "t");
    e.set_str("myext", format!("x{i}"));
    e.set("n", AttrValue::Integer(i as i32));
    let data: Vec<u8> = (0..data_len).map(|j| (i + j) as u8).collect();
    e.set_data(DataKind::Binary, Some(Bytes::from(data)));
    e
}

/// One partition without fsync, holding `events`; the log handle keeps it open.
async fn log_with(
    dir: &Path,
    segment_bytes: u64,
    events: &[Event],
) -> (EmbeddedLog, Arc<dyn BrokerLog>) {
    let opts = EmbeddedOptions {
        partitions: 1,
        fsync: FsyncPolicy::Never,
        segment_bytes,
        ..EmbeddedOptions::default()
    };
    let log = EmbeddedLog::open(dir, opts).expect("open");
    let b = log
        .open(
            &BrokerId::new("default", "reader"),
            crate::channel::LogKind::Events,
        )
        .await
        .expect("broker");
    for part in events.chunks(9) {
        b.append(part).await.expect("append");
    }
    (log, b)
}

/// Every record from the start, read in batches of `max`.
async fn read_all(b: &dyn BrokerLog, max: usize) -> Vec<Record> {
    let mut r = b.reader(0, StartAt::Earliest).await.expect("reader");
    let mut got = Vec::new();
    loop {
        let batch = r.try_batch(max).await.expect("batch");
        if batch.is_empty() {
            return got;
        }
        got.extend(batch);
    }
}

/// Records are sliced from chunks read ahead: records that straddle two chunks,
/// and one larger than a chunk, read back intact and in order, in batches of any
/// size, also across segment files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_across_chunks_read_back_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events: Vec<Event> = (0..400)
        .map(|i| {
            event(
                i,
                if i == 123 {
                    3 * READ_CHUNK + 5
                } else {
                    700 + i % 97
                },
            )
        })
        .collect();
    let (_log, b) = log_with(dir.path(), 3 * READ_CHUNK as u64, &events).await;
    for max in [1, 7, 1000] {
        let got = read_all(b.as_ref(), max).await;
        assert_eq!(got.len(), events.len(), "batches of {max}");
        for (i, (g, e)) in got.into_iter().zip(&events).enumerate() {
            assert_eq!(g.offset, i as u64);
            assert_eq!(&g.event.expect("decodes"), e, "event {i}, batches of {max}");
        }
    }
}

/// The segment files of partition 0, oldest first.
fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let pdir = dir.join("brokers/default/reader/p0");
    let mut files: Vec<_> = std::fs::read_dir(&pdir)
        .expect("partition dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

/// Overwrites the length field of the `n`-th record of a segment file with a
/// value no record can have.
fn damage_header(file: &Path, n: usize) {
    let mut bytes = std::fs::read(file).expect("read segment");
    let mut pos = 0;
    for _ in 0..n {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes"));
        pos += super::segment::HEADER + len as usize;
    }
    bytes[pos..pos + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(file, &bytes).expect("write segment");
}

/// Checks a read over a damaged header at offset 10 of the first segment: the
/// records before it intact, one malformed record standing for the unreadable
/// range, then the rest to the end (reading never stops).
fn check_damaged_read(got: &[Record], events: &[Event]) {
    let bad: Vec<&Record> = got.iter().filter(|r| r.event.is_err()).collect();
    assert_eq!(bad.len(), 1, "one malformed record for the range");
    assert_eq!(bad[0].offset, 10);
    let reason = &bad[0].event.as_ref().expect_err("malformed").reason;
    assert!(
        reason.contains("records 10..") && reason.contains("unreadable"),
        "{reason}"
    );
    let good: Vec<&Record> = got.iter().filter(|r| r.event.is_ok()).collect();
    let first_after = good
        .iter()
        .position(|r| r.offset > 10)
        .expect("records after it");
    assert_eq!(first_after, 10, "0..9 before it");
    let resumed = good[first_after].offset;
    assert!(resumed > 10 && resumed < events.len() as u64, "{resumed}");
    for r in &good {
        let e = r.event.as_ref().expect("decodes");
        assert_eq!(e, &events[r.offset as usize]);
    }
    assert_eq!(good.last().map(|r| r.offset), Some(events.len() as u64 - 1));
    assert_eq!(good.len() as u64, 10 + (events.len() as u64 - resumed));
}

/// A record header damaged in a sealed segment while the log is open: the reader
/// reports the range it cannot read once and goes on at the next place a record is
/// known to start (it used to fail every read of the partition, forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_header_is_one_malformed_range_and_reading_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events: Vec<Event> = (0..200).map(|i| event(i, 2000)).collect();
    let (_log, b) = log_with(dir.path(), 64 << 10, &events).await;
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    damage_header(&files[0], 10);
    for max in [1, 256] {
        check_damaged_read(&read_all(b.as_ref(), max).await, &events);
    }
    // Appends go on and are read.
    b.append(&[event(200, 10)]).await.expect("append");
    let got = read_all(b.as_ref(), 256).await;
    assert_eq!(got.last().map(|r| r.offset), Some(200));
}

/// The same damage found by recovery at startup (sealed segments are walked by
/// their headers): the hole up to the next segment is one malformed record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_sealed_segment_found_at_startup_is_skipped_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events: Vec<Event> = (0..200).map(|i| event(i, 2000)).collect();
    {
        let (_log, _b) = log_with(dir.path(), 64 << 10, &events).await;
    }
    damage_header(&segment_files(dir.path())[0], 10);
    let opts = EmbeddedOptions {
        partitions: 1,
        fsync: FsyncPolicy::Never,
        segment_bytes: 64 << 10,
        ..EmbeddedOptions::default()
    };
    let log = EmbeddedLog::open(dir.path(), opts).expect("reopen");
    let b = log
        .open(
            &BrokerId::new("default", "reader"),
            crate::channel::LogKind::Events,
        )
        .await
        .expect("broker");
    check_damaged_read(&read_all(b.as_ref(), 64).await, &events);
}

/// A payload damaged on disk fails its CRC check and comes back as `Malformed`
/// with its bytes; the records around it read back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_payloads_fail_the_checksum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events: Vec<Event> = (0..50).map(|i| event(i, 2000)).collect();
    let (_log, b) = log_with(dir.path(), 64 << 20, &events).await;
    // Flip one payload byte of the record at offset 20 under the open log (on
    // reopen, recovery would cut the segment there). The files hold framed
    // records: a header of `segment::HEADER` bytes, the first 4 the length.
    let pdir = dir.path().join("brokers/default/reader/p0");
    let seg = std::fs::read_dir(&pdir)
        .expect("partition dir")
        .map(|e| e.expect("entry").path())
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .expect("a segment file");
    let mut bytes = std::fs::read(&seg).expect("read segment");
    let mut pos = 0;
    for _ in 0..20 {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes"));
        pos += super::segment::HEADER + len as usize;
    }
    bytes[pos + super::segment::HEADER + 100] ^= 0xff;
    std::fs::write(&seg, &bytes).expect("write segment");

    let got = read_all(b.as_ref(), 16).await;
    assert_eq!(got.len(), events.len());
    for (i, rec) in got.iter().enumerate() {
        match &rec.event {
            Ok(e) => assert_eq!(e, &events[i], "event {i}"),
            Err(m) => {
                assert_eq!(i, 20, "only the damaged record: {}", m.reason);
                assert!(m.reason.contains("checksum mismatch"), "{}", m.reason);
                let stored = codec::to_bytes(&events[20]).len();
                assert_eq!(m.data.as_ref().map(Bytes::len), Some(stored));
            }
        }
    }
    assert!(got[20].event.is_err(), "the damaged record is reported");
}
