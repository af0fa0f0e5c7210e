//! Pipelined group commit for one partition.
//!
//! The writer thread writes a group (everything queued when it looked) and hands its
//! `fdatasync` to a small pool of sync threads, then goes on writing the next group
//! while that sync runs. Up to `syncs_in_flight` (the writer's setting, at most
//! [`MAX_SYNCS`]) syncs of the same file run at once.
//!
//! The rule that makes this safe: a sync that returns success covers every byte
//! written before it was called. Groups are numbered in write order and a sync is
//! started only after its group's write returned, so when the sync of group `n`
//! succeeds, every group up to `n` is durable, whatever the state of the syncs started
//! earlier. Acknowledgements therefore go out in order, to the highest group any
//! successful sync covers: the segment index and the committed offset move, and the
//! producers get their offsets.
//!
//! A failed sync fails every group not yet acknowledged (the kernel may have dropped
//! their dirty pages) and stops the pipeline. Syncs still running are waited for and
//! their results ignored; then the writer cuts the file back to the end of the last
//! acknowledged group (see `writer.rs`) and resumes. No group is acknowledged after a
//! failure that it might have been written behind.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::oneshot;

use super::file::SegmentFile;
use super::writer::PartitionShared;

/// Sync threads of one partition, at most.
pub const MAX_SYNCS: usize = 4;

/// Written groups kept for reuse of their buffers.
const SPARE_GROUPS: usize = MAX_SYNCS + 2;

/// A producer's reply channel and the offset of its first event.
pub type Reply = (oneshot::Sender<Result<u64, String>>, u64);

/// One written group of appends.
#[derive(Default)]
pub struct Group {
    /// Write order.
    seq: u64,
    /// The offset after its last record.
    pub end: u64,
    /// The byte position after its last record.
    pub end_pos: u64,
    /// Append time of its records.
    pub ts_ms: i64,
    /// (offset, position, framed length) of each record, for the segment index.
    pub notes: Vec<(u64, u64, u64)>,
    /// Who to answer.
    pub replies: Vec<Reply>,
}

impl Group {
    fn fail(&mut self, msg: &str) {
        for (tx, _) in self.replies.drain(..) {
            let _ = tx.send(Err(msg.to_owned()));
        }
    }
}

/// What the writer may do next.
pub enum Admit {
    /// Write the next group.
    Go,
    /// A sync failed and every sync has returned: cut the file back to this
    /// (offset, position), the end of the last acknowledged group, then call
    /// [`Pipeline::recovered`].
    RollBack(u64, u64),
}

struct State {
    /// Written, not yet acknowledged, in write order.
    pending: VecDeque<Group>,
    /// Syncs to run: the group sequence each covers, and the file.
    jobs: VecDeque<(u64, Arc<dyn SegmentFile>)>,
    /// Syncs queued or running.
    in_flight: usize,
    /// Sync threads started, and how many of them wait for a job.
    threads: usize,
    idle: usize,
    /// Set by a failed sync until the writer has cut the file back.
    failure: Option<String>,
    /// (offset, position) after the last acknowledged group of the active segment.
    durable: (u64, u64),
    next_seq: u64,
    spare: Vec<Group>,
    closing: bool,
}

/// The group-commit pipeline of one partition.
pub struct Pipeline {
    shared: Arc<PartitionShared>,
    state: Mutex<State>,
    /// Signalled when a sync returns (the writer waits for room or for quiet).
    synced: Condvar,
    /// Signalled when a job is queued or the pipeline closes (sync threads wait).
    work: Condvar,
    thread_name: String,
}

impl Pipeline {
    /// A pipeline whose active segment is durable up to (`offset`, `pos`).
    pub fn new(shared: Arc<PartitionShared>, offset: u64, pos: u64, name: String) -> Arc<Self> {
        Arc::new(Pipeline {
            shared,
            state: Mutex::new(State {
                pending: VecDeque::new(),
                jobs: VecDeque::new(),
                in_flight: 0,
                threads: 0,
                idle: 0,
                failure: None,
                durable: (offset, pos),
                next_seq: 0,
                spare: Vec::new(),
                closing: false,
            }),
            synced: Condvar::new(),
            work: Condvar::new(),
            thread_name: name,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.synced.wait(g).unwrap_or_else(|p| p.into_inner())
    }

    /// An empty group (with the buffers of an acknowledged one when there is one).
    pub fn group(&self) -> Group {
        self.lock().spare.pop().unwrap_or_default()
    }

    /// Waits until another group may be written: fewer than `max_syncs` syncs in
    /// flight and no failure, or a failure with nothing in flight (roll back).
    pub fn admit(&self, max_syncs: usize) -> Admit {
        let mut st = self.lock();
        loop {
            if st.failure.is_some() {
                if st.in_flight == 0 {
                    return Admit::RollBack(st.durable.0, st.durable.1);
                }
            } else if st.in_flight < max_syncs {
                return Admit::Go;
            }
            st = self.wait(st);
        }
    }

    /// Waits until no sync is in flight; `Some` with the durable end when a sync
    /// failed (the writer must roll back before anything else).
    pub fn quiesce(&self) -> Option<(u64, u64)> {
        let mut st = self.lock();
        while st.in_flight > 0 {
            st = self.wait(st);
        }
        st.failure.as_ref().map(|_| st.durable)
    }

    /// The file was cut back to the durable end (or could not be: then the writer
    /// refuses appends from now on); the pipeline runs again.
    pub fn recovered(&self) {
        self.lock().failure = None;
    }

    /// The active segment changed: nothing of it is written yet.
    pub fn new_segment(&self, offset: u64) {
        self.lock().durable = (offset, 0);
    }

    /// Hands a written group to a sync thread; it is acknowledged when a sync that
    /// started after its write succeeds.
    pub fn submit(self: &Arc<Self>, mut group: Group, file: &Arc<dyn SegmentFile>) {
        let mut st = self.lock();
        if let Some(msg) = &st.failure {
            // A sync failed after this group was written: it may sit behind lost bytes.
            let msg = msg.clone();
            group.fail(&msg);
            recycle(&mut st, group);
            return;
        }
        group.seq = st.next_seq;
        st.next_seq += 1;
        st.jobs.push_back((group.seq, file.clone()));
        st.pending.push_back(group);
        st.in_flight += 1;
        if st.idle == 0 && st.threads < MAX_SYNCS {
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name(self.thread_name.clone())
                .stack_size(64 << 10)
                .spawn(move || me.sync_loop());
            match spawned {
                Ok(_) => st.threads += 1,
                Err(e) if st.threads == 0 => {
                    // Nobody to run the sync: fail now rather than hang.
                    let msg = format!("cannot start a sync thread: {e}");
                    tracing::error!(thread = %self.thread_name, error = %e, "cannot start a sync thread");
                    st.jobs.clear();
                    st.in_flight = 0;
                    fail_pending(&mut st, msg);
                    drop(st);
                    self.synced.notify_all();
                    return;
                }
                Err(e) => {
                    tracing::warn!(thread = %self.thread_name, error = %e, "cannot start another sync thread");
                }
            }
        }
        drop(st);
        self.work.notify_one();
    }

    /// Acknowledges a group written without a sync (fsync policies other than
    /// `always`): nothing may be pending.
    pub fn acknowledge_now(&self, group: Group) {
        let mut st = self.lock();
        debug_assert!(st.pending.is_empty());
        group_seq(&mut st, group);
        let seq = st.next_seq - 1;
        self.acknowledge_through(&mut st, seq);
    }

    /// Stops the sync threads once the queue is empty.
    pub fn close(&self) {
        self.lock().closing = true;
        self.work.notify_all();
    }

    fn sync_loop(self: Arc<Self>) {
        let mut st = self.lock();
        loop {
            let Some((seq, file)) = st.jobs.pop_front() else {
                if st.closing {
                    st.threads -= 1;
                    return;
                }
                st.idle += 1;
                st = self.work.wait(st).unwrap_or_else(|p| p.into_inner());
                st.idle -= 1;
                continue;
            };
            drop(st);
            let result = file.sync_data();
            drop(file);
            st = self.lock();
            st.in_flight -= 1;
            match result {
                Ok(()) if st.failure.is_none() => self.acknowledge_through(&mut st, seq),
                Ok(()) => {}
                Err(e) => {
                    if st.failure.is_none() {
                        tracing::error!(dir = %self.shared.dir.display(), error = %e,
                            "fdatasync failed; failing every unacknowledged append");
                        fail_pending(&mut st, e.to_string());
                    }
                }
            }
            self.synced.notify_all();
        }
    }

    /// Acknowledges every pending group up to `seq`, in order.
    fn acknowledge_through(&self, st: &mut State, seq: u64) {
        let mut end = None;
        {
            let mut segs = self
                .shared
                .segments
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let Some(active) = segs.last_mut() else {
                return;
            };
            for g in st.pending.iter().take_while(|g| g.seq <= seq) {
                for &(o, pos, len) in &g.notes {
                    active.note(o, pos, len, g.ts_ms);
                }
                end = Some((g.end, g.end_pos));
            }
        }
        let Some((offset, pos)) = end else {
            return;
        };
        st.durable = (offset, pos);
        self.shared.committed.send_replace(offset);
        while st.pending.front().is_some_and(|g| g.seq <= seq) {
            let Some(mut g) = st.pending.pop_front() else {
                break;
            };
            for (tx, first) in g.replies.drain(..) {
                let _ = tx.send(Ok(first));
            }
            recycle(st, g);
        }
    }
}

fn group_seq(st: &mut State, mut group: Group) {
    group.seq = st.next_seq;
    st.next_seq += 1;
    st.pending.push_back(group);
}

fn fail_pending(st: &mut State, msg: String) {
    while let Some(mut g) = st.pending.pop_front() {
        g.fail(&msg);
        recycle(st, g);
    }
    st.failure = Some(msg);
}

fn recycle(st: &mut State, mut g: Group) {
    if st.spare.len() < SPARE_GROUPS {
        g.notes.clear();
        g.replies.clear();
        st.spare.push(g);
    }
}
