//! The writer against a segment file that fails or stalls on demand: nothing that was
//! not synced is acknowledged, the file is cut back after a failure, offsets stay
//! dense, and syncs overlap.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::checkpoints::{Checkpoints, NO_DISPATCHER};
use super::file::{Opener, SegmentFile};
use super::segment::{self, Segment};
use super::writer::{self, AppendRequest, PartitionShared, WriterSettings};
use super::FsyncPolicy;

/// What the test file does; write and sync calls are numbered from 1.
#[derive(Default)]
struct Faults {
    writes: AtomicUsize,
    syncs: AtomicUsize,
    /// Syncs running now, and the most at once.
    syncing: AtomicUsize,
    most_syncing: AtomicUsize,
    /// This write writes half its bytes, then fails.
    torn_write: AtomicUsize,
    /// These syncs fail.
    failing_syncs: Mutex<Vec<usize>>,
    /// These syncs wait until the sender is dropped or sends.
    held_syncs: Mutex<HashMap<usize, std::sync::mpsc::Receiver<()>>>,
    /// `set_len` fails.
    failing_set_len: AtomicBool,
    /// Writes of zeros only (space allocated ahead) fail.
    failing_zero_writes: AtomicBool,
}

struct FaultyFile {
    file: File,
    faults: Arc<Faults>,
}

impl SegmentFile for FaultyFile {
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        if self.faults.failing_zero_writes.load(Ordering::SeqCst) && buf.iter().all(|&b| b == 0) {
            return Err(io::Error::other("injected zero-fill failure"));
        }
        let n = self.faults.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.faults.torn_write.load(Ordering::SeqCst) == n {
            SegmentFile::write_all_at(&self.file, &buf[..buf.len() / 2], pos)?;
            return Err(io::Error::other("injected write failure"));
        }
        SegmentFile::write_all_at(&self.file, buf, pos)
    }

    fn sync_data(&self) -> io::Result<()> {
        let n = self.faults.syncs.fetch_add(1, Ordering::SeqCst) + 1;
        let now = self.faults.syncing.fetch_add(1, Ordering::SeqCst) + 1;
        self.faults.most_syncing.fetch_max(now, Ordering::SeqCst);
        let held = lock(&self.faults.held_syncs).remove(&n);
        if let Some(rx) = held {
            let _ = rx.recv();
        }
        let failing = lock(&self.faults.failing_syncs).contains(&n);
        let result = if failing {
            Err(io::Error::other("injected sync failure"))
        } else {
            self.file.sync_data()
        };
        self.faults.syncing.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.faults.failing_set_len.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected set_len failure"));
        }
        self.file.set_len(len)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Harness {
    tx: Option<SyncSender<AppendRequest>>,
    shared: Arc<PartitionShared>,
    faults: Arc<Faults>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

type Answer = oneshot::Receiver<Result<u64, writer::AppendError>>;

impl Harness {
    fn start(segment_bytes: u64) -> Harness {
        Harness::start_with(segment_bytes, FsyncPolicy::Always)
    }

    fn start_with(segment_bytes: u64, fsync: FsyncPolicy) -> Harness {
        Harness::start_full(segment_bytes, fsync, None, Default::default())
    }

    /// A writer deleting past `retention_bytes` what `holds` allows.
    fn retaining(
        segment_bytes: u64,
        retention_bytes: u64,
        delete_undelivered: bool,
        holds: Arc<Checkpoints>,
    ) -> Harness {
        Harness::start_full(
            segment_bytes,
            FsyncPolicy::Always,
            Some((retention_bytes, delete_undelivered)),
            holds,
        )
    }

    fn start_full(
        segment_bytes: u64,
        fsync: FsyncPolicy,
        retention: Option<(u64, bool)>,
        holds: Arc<Checkpoints>,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let faults = Arc::new(Faults::default());
        let f = faults.clone();
        let open: Opener = Arc::new(move |seg: &Segment| {
            let file = segment::open_for_write(seg)?;
            let file: Arc<dyn SegmentFile> = Arc::new(FaultyFile {
                file,
                faults: f.clone(),
            });
            Ok(file)
        });
        let seg = Segment::new(dir.path(), 0);
        let file = open(&seg).expect("open segment");
        let (committed, _) = watch::channel(0);
        let shared = Arc::new(PartitionShared {
            dir: dir.path().to_path_buf(),
            segments: RwLock::new(vec![seg]),
            committed,
        });
        let settings = WriterSettings {
            partition: 0,
            holds,
            delete_undelivered: retention.is_some_and(|(_, d)| d),
            fsync,
            segment_bytes,
            retention_age: None,
            retention_bytes: retention.map(|(b, _)| b),
        };
        let (tx, rx) = sync_channel(1024);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("test-writer".into())
            .spawn(move || writer::run(s, settings, open, file, rx))
            .expect("spawn writer");
        Harness {
            tx: Some(tx),
            shared,
            faults,
            thread: Some(thread),
            dir,
        }
    }

    fn send(&self, payloads: &[&str]) -> Answer {
        self.send_as(payloads, false)
    }

    /// Triggerfish's own append (a reply, a redrive).
    fn append_own(&self, payloads: &[&str]) -> Result<u64, String> {
        answer(self.send_as(payloads, true))
    }

    fn send_as(&self, payloads: &[&str], own: bool) -> Answer {
        let (reply, rx) = oneshot::channel();
        let payloads = payloads
            .iter()
            .map(|p| Bytes::copy_from_slice(p.as_bytes()))
            .collect();
        self.tx
            .as_ref()
            .expect("writer running")
            .send(AppendRequest {
                payloads,
                own,
                reply,
            })
            .expect("writer alive");
        rx
    }

    fn append(&self, payloads: &[&str]) -> Result<u64, String> {
        answer(self.send(payloads))
    }

    /// Holds sync number `n` until the returned sender sends or is dropped.
    fn hold_sync(&self, n: usize) -> SyncSender<()> {
        let (tx, rx) = sync_channel(1);
        lock(&self.faults.held_syncs).insert(n, rx);
        tx
    }

    fn wait_for_syncs(&self, n: usize) {
        poll(|| self.faults.syncs.load(Ordering::SeqCst) >= n, "syncs");
    }

    fn committed(&self) -> u64 {
        *self.shared.committed.borrow()
    }

    /// Stops the writer; returns the records on disk (offset, payload), segment by
    /// segment, as recovery finds them.
    fn stop(self) -> Vec<(u64, String)> {
        let dir = self.shutdown();
        on_disk(dir.path())
    }

    /// The records recovery would find if the machine crashed now (the active
    /// segment copied as it is, zeros allocated ahead included).
    fn crash_copy(&self) -> Vec<(u64, String)> {
        let copy = tempfile::tempdir().expect("tempdir");
        for base in segment::list(self.dir.path()).expect("list") {
            match std::fs::copy(
                segment::segment_path(self.dir.path(), base),
                segment::segment_path(copy.path(), base),
            ) {
                Ok(_) => {}
                // Retention deleted it between the listing and the copy (seen in a
                // full run): a crash now would not find it either.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("copy segment: {e}"),
            }
        }
        on_disk(copy.path())
    }

    /// Stops the writer and waits for its thread.
    fn shutdown(mut self) -> tempfile::TempDir {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            t.join().expect("writer thread");
        }
        self.dir
    }
}

fn answer(rx: Answer) -> Result<u64, String> {
    rx.blocking_recv()
        .expect("writer answers")
        .map_err(|e| e.to_string())
}

fn poll(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn on_disk(dir: &Path) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let bases = segment::list(dir).expect("list");
    for (i, base) in bases.iter().enumerate() {
        let (seg, cut) = segment::recover(dir, *base, i + 1 == bases.len()).expect("recover");
        assert_eq!(cut, 0, "no garbage after the last acknowledged record");
        let bytes = std::fs::read(&seg.path).expect("read segment");
        let mut pos = 0usize;
        while pos < bytes.len() {
            let h = segment::read_header(&mut &bytes[pos..])
                .expect("header")
                .expect("whole header");
            let body = &bytes[pos + segment::HEADER..pos + segment::HEADER + h.len];
            out.push((h.offset, String::from_utf8_lossy(body).into_owned()));
            pos += segment::HEADER + h.len;
        }
    }
    out
}

fn records(list: &[(u64, &str)]) -> Vec<(u64, String)> {
    list.iter().map(|&(o, p)| (o, p.to_owned())).collect()
}

#[test]
fn an_append_is_acknowledged_only_after_its_sync_returns() {
    let h = Harness::start(1 << 30);
    let release = h.hold_sync(1);
    let mut a = h.send(&["a"]);
    h.wait_for_syncs(1);
    let mut b = h.send(&["b"]);
    std::thread::sleep(Duration::from_millis(20));
    assert!(a.try_recv().is_err(), "no answer while the sync runs");
    assert!(
        b.try_recv().is_err(),
        "the next group waits for the running sync"
    );
    assert_eq!(h.committed(), 0, "readers see nothing unsynced");
    drop(release);
    assert_eq!(answer(a), Ok(0));
    assert_eq!(answer(b), Ok(1));
    assert_eq!(h.committed(), 2);
    assert_eq!(h.faults.most_syncing.load(Ordering::SeqCst), 1);
    assert_eq!(h.stop(), records(&[(0, "a"), (1, "b")]));
}

#[test]
fn a_failed_sync_fails_its_group_and_the_file_is_cut_back() {
    let h = Harness::start(1 << 30);
    assert_eq!(h.append(&["a"]), Ok(0));
    lock(&h.faults.failing_syncs).push(2);
    assert!(h
        .append(&["b1", "b2"])
        .is_err_and(|e| e.contains("injected sync failure")));
    assert_eq!(h.committed(), 1);
    // What a crash now would leave: the acknowledged record only.
    assert_eq!(h.crash_copy(), records(&[(0, "a")]));
    assert_eq!(h.append(&["c"]), Ok(1), "offsets stay dense after the cut");
    assert_eq!(h.committed(), 2);
    assert_eq!(h.stop(), records(&[(0, "a"), (1, "c")]));
}

#[test]
fn a_torn_write_fails_its_group_only() {
    let h = Harness::start(1 << 30);
    assert_eq!(h.append(&["a"]), Ok(0));
    let next_write = h.faults.writes.load(Ordering::SeqCst) + 1;
    h.faults.torn_write.store(next_write, Ordering::SeqCst);
    assert!(h
        .append(&["bbbbbbbbbbbbbbbbbbbbbbbb", "b2"])
        .is_err_and(|e| e.contains("injected write failure")));
    assert_eq!(h.crash_copy(), records(&[(0, "a")]));
    assert_eq!(h.append(&["c"]), Ok(1));
    assert_eq!(h.committed(), 2);
    assert_eq!(h.stop(), records(&[(0, "a"), (1, "c")]));
}

#[test]
fn a_failed_zero_fill_does_not_fail_the_append() {
    let h = Harness::start(1 << 30);
    h.faults.failing_zero_writes.store(true, Ordering::SeqCst);
    assert_eq!(h.append(&["a"]), Ok(0));
    assert_eq!(h.append(&["b"]), Ok(1));
    let size = std::fs::metadata(segment::segment_path(h.dir.path(), 0))
        .expect("stat")
        .len();
    assert_eq!(
        size,
        2 * (segment::HEADER as u64 + 1),
        "records only, no zeros"
    );
    assert_eq!(h.stop(), records(&[(0, "a"), (1, "b")]));
}

#[test]
fn an_append_that_cannot_be_undone_stops_the_partition_until_restart() {
    let h = Harness::start(1 << 30);
    assert_eq!(h.append(&["a"]), Ok(0));
    lock(&h.faults.failing_syncs).push(2);
    h.faults.failing_set_len.store(true, Ordering::SeqCst);
    assert!(h.append(&["b"]).is_err());
    let refused = h.append(&["c"]);
    assert!(refused.is_err_and(|e| e.contains("restart needed")));
    assert_eq!(h.committed(), 1);
    h.shutdown();
}

/// With `--fsync interval`, events are acknowledged before they are synced; when the
/// periodic sync fails they may be lost, and a later sync would report success over
/// them. The partition stops taking appends instead of acknowledging more on top.
#[test]
fn a_failed_periodic_sync_stops_the_partition_until_restart() {
    let h = Harness::start_with(1 << 30, FsyncPolicy::Interval(Duration::from_millis(5)));
    lock(&h.faults.failing_syncs).push(1);
    assert_eq!(
        h.append(&["a"]),
        Ok(0),
        "acknowledged before the periodic sync"
    );
    h.wait_for_syncs(1);
    let refused = h.append(&["b"]);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("periodic fsync") && e.contains("until restart")),
        "{refused:?}"
    );
    assert_eq!(h.committed(), 1);
    h.shutdown();
}

#[test]
fn concurrent_producers_across_segment_rolls_get_dense_offsets() {
    let h = Arc::new(Harness::start(1024));
    let producers: Vec<_> = (0..4)
        .map(|t| {
            let h = h.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for i in 0..100 {
                    let p = format!("producer {t} event {i}");
                    got.push((h.append(&[&p]).expect("append"), p));
                }
                got
            })
        })
        .collect();
    let mut acked: Vec<(u64, String)> = producers
        .into_iter()
        .flat_map(|p| p.join().expect("producer"))
        .collect();
    acked.sort();
    let offsets: Vec<u64> = acked.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..400).collect::<Vec<_>>());
    assert_eq!(h.committed(), 400);
    let h = Arc::into_inner(h).expect("producers done");
    assert!(segment::list(h.dir.path()).expect("list").len() > 5);
    assert_eq!(h.stop(), acked);
}

#[test]
fn the_active_segment_is_allocated_ahead_and_recovers_without_loss() {
    let h = Harness::start(1 << 30);
    for i in 0..10 {
        assert_eq!(h.append(&[&format!("event {i}")]), Ok(i));
    }
    let path = segment::segment_path(h.dir.path(), 0);
    let size = std::fs::metadata(&path).expect("stat").len();
    assert!(size >= 512 << 10, "allocated ahead: {size} bytes");
    // What a crash now would leave: the records, then zeros.
    let crashed = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&path, segment::segment_path(crashed.path(), 0)).expect("copy");
    let (seg, cut) = segment::recover(crashed.path(), 0, true).expect("recover");
    assert_eq!((seg.end, cut), (10, 0));
    let expected: Vec<(u64, String)> = (0..10).map(|i| (i, format!("event {i}"))).collect();
    assert_eq!(on_disk(crashed.path()), expected);
    // A clean stop leaves only the records.
    assert_eq!(h.stop(), expected);
}

/// A 100-byte payload: with 200-byte segments, two records per sealed segment.
const PAYLOAD: &str = "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789";

/// Appends until the writer refuses; returns how many it took and the refusal.
fn fill(h: &Harness) -> (u64, String) {
    for n in 0..1000 {
        if let Err(e) = h.append(&[PAYLOAD]) {
            return (n, e);
        }
    }
    panic!("the writer never refused an append");
}

fn first_on_disk(h: &Harness) -> u64 {
    h.crash_copy().first().map_or(u64::MAX, |r| r.0)
}

#[test]
fn retention_keeps_what_a_live_trigger_has_not_passed_and_holds_producers_at_the_limit() {
    let holds = Arc::new(Checkpoints::default());
    holds.set("slow", vec![Some(0)]);
    holds.set("fast", vec![Some(0)]);
    holds.set_live(vec!["slow".into(), "fast".into()]);
    let h = Harness::retaining(200, 600, false, holds.clone());
    let (accepted, refusal) = fill(&h);
    assert!(
        refusal.contains("retention limit") && refusal.contains("has not passed offset 0"),
        "the refusal names the holder: {refusal}"
    );
    assert!(accepted >= 6, "the limit is reached first: {accepted}");
    let disk = h.crash_copy();
    assert_eq!(disk.len() as u64, accepted, "nothing accepted was deleted");
    assert_eq!(disk[0].0, 0);
    // Triggerfish's own appends (replies) are not held: a trigger storing a reply
    // must not wait on its own checkpoint.
    assert!(h.append_own(&["reply"]).is_ok());
    // One trigger passes everything: the other still holds it (past a re-check of
    // the floor, which a refusal cannot be waited for otherwise).
    holds.set("fast", vec![Some(h.committed())]);
    std::thread::sleep(writer::HELD_RECHECK * 2);
    let still = h
        .append(&[PAYLOAD])
        .expect_err("slow still holds the partition");
    assert!(still.contains("slow has not passed offset 0"), "{still}");
    assert_eq!(first_on_disk(&h), 0);
    // Both passed half of it: the segments before are deleted, appends go on.
    let half = accepted / 2;
    holds.set("slow", vec![Some(half)]);
    holds.set("fast", vec![Some(half)]);
    poll(
        || h.append(&[PAYLOAD]).is_ok(),
        "an append accepted once the oldest segments are delivered",
    );
    let first = first_on_disk(&h);
    assert!(
        first > 0 && first <= half,
        "deleted only below the checkpoints: first {first}, checkpoints {half}"
    );
    h.stop();
}

#[test]
fn without_a_dispatcher_nothing_undelivered_is_deleted() {
    let h = Harness::retaining(200, 600, false, Default::default());
    let (accepted, refusal) = fill(&h);
    assert!(refusal.contains(NO_DISPATCHER), "{refusal}");
    assert_eq!(h.crash_copy().len() as u64, accepted);
    h.stop();
}

#[test]
fn with_no_live_triggers_retention_deletes_by_size() {
    let holds = Arc::new(Checkpoints::default());
    holds.set_live(Vec::new());
    let h = Harness::retaining(200, 600, false, holds);
    for _ in 0..40 {
        h.append(&[PAYLOAD]).expect("never held");
    }
    assert!(first_on_disk(&h) > 20, "old segments deleted");
    h.stop();
}

#[test]
fn delete_undelivered_deletes_by_size_regardless_of_checkpoints() {
    let holds = Arc::new(Checkpoints::default());
    holds.set("t", vec![Some(0)]);
    holds.set_live(vec!["t".into()]);
    let h = Harness::retaining(200, 600, true, holds);
    for _ in 0..40 {
        h.append(&[PAYLOAD]).expect("producers never wait");
    }
    let disk = h.crash_copy();
    assert!(disk[0].0 > 20, "deleted though the trigger is at 0");
    assert!(
        disk.iter().map(|r| r.1.len()).sum::<usize>() <= 600 + 300,
        "about the limit kept"
    );
    h.stop();
}
