//! Redrive of a dead-letter log as a streaming job.
//!
//! A redrive is a background job ([`Redrives::start`]) that streams the entries
//! pending when it started, `[cursor, end)`, in batches of [`RedriveSpec::batch`]:
//! it reads a batch, sends its entries (to each one's trigger's subscriber, up to
//! [`RedriveSpec::concurrency`] at a time, with the trigger's retry policy and its
//! subscriber's `CACerts` trusted besides `--ca-bundle`, [`crate::trust`]; or to
//! the broker again, as one append), appends the entries it keeps (failed again,
//! another trigger's, a trigger no longer configured) to the end of the log, and then
//! stores the cursor past the batch, durably. So memory holds one batch whatever the
//! size of the log, and a redrive that stops (cancelled, a channel failing, the
//! process killed) and is started again resends at most the batch that was in
//! flight: entries sent before the stop and not yet passed by the cursor (a
//! cancellation stores the cursor past every entry whose outcome came back, so it
//! resends at most the deliveries still in flight).
//!
//! One redrive per log, across every replica that serves the admin API: a job holds
//! partition 0 of the dead-letter log's partition leases (the same NATS lease keys or
//! Kafka group mechanism the dispatcher uses for events, in the log's own key space)
//! and writes the cursor under the lease's epoch, so a replica that lost the lease
//! cannot move the cursor any more. Within a process a second start is refused while
//! one runs ([`StartError::Running`]).
//!
//! Entries that are not CloudEvents (damaged, or written by a foreign producer on a
//! shared backend) cannot be sent: a redrive passes them, logs each at ERROR, counts
//! them (`triggerfish_dead_letter_redriven_total{outcome="undecodable"}`) and lists
//! their offsets and reasons in its report. They stay in the log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker::channel::lease::{HandOver, PartitionLeases};
use broker::channel::{BrokerLog, ChannelError, CheckpointUpdate, Epoch, Offset, Record, StartAt};
use broker::config::{BrokerConfig, BrokerId};
use broker::event::{AttrValue, Event, ERROR_TRIGGER};
use broker::telemetry::{Metrics, RedriveOutcome};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{backlog, cursor, entry_for, original, read_until, shrunk, REDRIVE_CURSOR};
use crate::deliver::{deliver, HttpClient};
use crate::trust::Trust;

/// Entries per redrive batch, unless asked otherwise.
pub const DEFAULT_BATCH: usize = 500;
/// The largest redrive batch (memory holds one batch).
pub const MAX_BATCH: usize = 10_000;
/// Deliveries a redrive has in flight at once, unless asked otherwise.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// The most deliveries a redrive may have in flight at once.
pub const MAX_CONCURRENCY: usize = 256;
/// Undecodable entries a redrive's report lists one by one (it counts them all).
pub const MAX_REPORTED_UNDECODABLE: usize = 100;
/// Events per append when a redrive appends (kept entries, or `to=broker`).
const APPEND_CHUNK: usize = 100;
/// Attempts of one append or cursor store that fails transiently (the channel is
/// full, unavailable, or its I/O failed) before the redrive stops with the error.
const STORE_ATTEMPTS: u32 = 8;

/// Where a redrive sends entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedriveTo {
    /// Each entry's trigger's subscriber, with the trigger's retry policy.
    Subscriber,
    /// The broker again (every trigger sees the event).
    Broker,
}

impl RedriveTo {
    /// `subscriber` or `broker`.
    pub fn as_str(self) -> &'static str {
        match self {
            RedriveTo::Subscriber => "subscriber",
            RedriveTo::Broker => "broker",
        }
    }
}

/// What a redrive is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedriveSpec {
    /// Where entries go.
    pub to: RedriveTo,
    /// Only entries of this trigger (the others move to the end of the log unchanged).
    pub trigger: Option<String>,
    /// Entries per batch (the cursor is stored after each), 1 to [`MAX_BATCH`].
    pub batch: usize,
    /// Deliveries in flight at once, 1 to [`MAX_CONCURRENCY`].
    pub concurrency: usize,
}

impl Default for RedriveSpec {
    fn default() -> Self {
        RedriveSpec {
            to: RedriveTo::Subscriber,
            trigger: None,
            batch: DEFAULT_BATCH,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

impl RedriveSpec {
    /// Checks the limits; the error names the one exceeded.
    pub fn check(&self) -> Result<(), String> {
        if self.batch == 0 || self.batch > MAX_BATCH {
            return Err(format!(
                "batch={}: a redrive batch holds 1 to {MAX_BATCH} entries",
                self.batch
            ));
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(format!(
                "concurrency={}: a redrive has 1 to {MAX_CONCURRENCY} deliveries in flight",
                self.concurrency
            ));
        }
        Ok(())
    }
}

/// Where a redrive job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedriveState {
    /// Sending.
    Running,
    /// Every entry pending at the start was passed.
    Done,
    /// Cancelled (or the process is shutting down): the cursor is past every entry
    /// whose outcome came back.
    Cancelled,
    /// Stopped by an error ([`RedriveStatus::error`]): the cursor is past the last
    /// batch completed.
    Failed,
}

impl RedriveState {
    /// `running`, `done`, `cancelled` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RedriveState::Running => "running",
            RedriveState::Done => "done",
            RedriveState::Cancelled => "cancelled",
            RedriveState::Failed => "failed",
        }
    }
}

/// A redrive job's progress and, once it ended, its report.
#[derive(Debug, Clone)]
pub struct RedriveStatus {
    /// Unique within the process.
    pub id: u64,
    /// The broker whose dead-letter log it redrives.
    pub broker: BrokerId,
    /// What it was asked.
    pub spec: RedriveSpec,
    /// The process running it.
    pub owner: String,
    /// Where it is.
    pub state: RedriveState,
    /// Why it failed.
    pub error: Option<String>,
    /// The cursor when it started.
    pub from: Offset,
    /// The end of the log when it started: entries appended later (those it keeps
    /// among them) wait for the next redrive.
    pub end: Offset,
    /// The stored cursor: entries before it are done.
    pub position: Offset,
    /// Sent to their subscriber (2xx) or appended to the broker.
    pub sent: u64,
    /// Their subscriber failed again: back at the end with the new error.
    pub failed_again: u64,
    /// Skipped: another trigger's entry (a redrive of one trigger), moved to the end.
    pub other_trigger: u64,
    /// Skipped: their trigger is no longer configured, moved to the end.
    pub trigger_gone: u64,
    /// Skipped: not a CloudEvent, left in place.
    pub undecodable: u64,
    /// The first [`MAX_REPORTED_UNDECODABLE`] undecodable entries: offset and reason.
    pub undecodable_entries: Vec<(Offset, String)>,
    /// Batches completed.
    pub batches: u64,
    /// The entries still pending once it ended.
    pub pending: Option<u64>,
    /// When it started.
    pub started: jiff::Timestamp,
    /// When it ended.
    pub finished: Option<jiff::Timestamp>,
}

impl RedriveStatus {
    /// Entries it redrives: those pending when it started.
    pub fn total(&self) -> u64 {
        self.end.saturating_sub(self.from)
    }

    /// Entries passed so far.
    pub fn passed(&self) -> u64 {
        self.position.saturating_sub(self.from)
    }
}

/// Why a redrive did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The request is outside a limit.
    #[error("{0}")]
    Invalid(String),
    /// A redrive of this log runs in this process.
    #[error("a redrive of the dead-letter log of broker {} is running (job {}, {}/{} entries passed)", .0.broker, .0.id, .0.passed(), .0.total())]
    Running(Box<RedriveStatus>),
    /// Another replica holds the log's redrive lease.
    #[error("a redrive of the dead-letter log of broker {0} runs in another replica (it holds the log's lease); ask that replica, or wait until it ends")]
    Elsewhere(BrokerId),
    /// The log failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

/// Test-only fault: called before each batch's cursor is stored with the number of
/// batches completed so far; an error stops the redrive as a failing channel would.
#[derive(Clone)]
pub struct RedriveFault(pub Arc<dyn Fn(u64) -> Result<(), ChannelError> + Send + Sync>);

impl std::fmt::Debug for RedriveFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedriveFault")
    }
}

struct Job {
    status: Mutex<RedriveStatus>,
    cancel: CancellationToken,
    ended: CancellationToken,
}

impl Job {
    fn status(&self) -> RedriveStatus {
        lock(&self.status).clone()
    }

    fn update(&self, f: impl FnOnce(&mut RedriveStatus)) {
        f(&mut lock(&self.status));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The redrive jobs of one process, at most one per broker: started, watched and
/// cancelled through the admin API.
pub struct Redrives {
    owner: String,
    trust: Arc<Trust>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    jobs: Mutex<HashMap<BrokerId, Arc<Job>>>,
    next_id: AtomicU64,
    fault: Option<RedriveFault>,
}

/// A broker as a redrive needs it.
pub struct Target {
    /// Its config (the triggers' subscribers and retry policies).
    pub config: BrokerConfig,
    /// Its event log (`to=broker`).
    pub events: Arc<dyn BrokerLog>,
    /// Its dead-letter log.
    pub dead_letters: Arc<dyn BrokerLog>,
}

impl Redrives {
    /// No jobs yet. `owner` names this process in the log's leases (the dispatcher's
    /// `--dispatcher-name`); `shutdown` cancels running jobs.
    pub fn new(owner: &str, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Redrives {
        Redrives {
            owner: owner.to_owned(),
            trust: Trust::new(None, None),
            metrics,
            shutdown,
            jobs: Mutex::default(),
            next_id: AtomicU64::new(1),
            fault: None,
        }
    }

    /// Redrives sending through the clients of `trust` (with the process's
    /// `--ca-bundle` and outgoing identity).
    pub fn with_trust(mut self, trust: Arc<Trust>) -> Redrives {
        self.trust = trust;
        self
    }

    /// With a test-only fault ([`RedriveFault`]).
    #[doc(hidden)]
    pub fn with_fault(mut self, fault: RedriveFault) -> Redrives {
        self.fault = Some(fault);
        self
    }

    /// Starts a redrive of `target`'s dead-letter log in the background, once its
    /// lease is held; returns its first status.
    pub async fn start(
        &self,
        target: Target,
        spec: RedriveSpec,
    ) -> Result<RedriveStatus, StartError> {
        spec.check().map_err(StartError::Invalid)?;
        let broker = target.config.id.clone();
        let dl = target.dead_letters.clone();
        let job = Arc::new(Job {
            status: Mutex::new(RedriveStatus {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                broker: broker.clone(),
                spec: spec.clone(),
                owner: self.owner.clone(),
                state: RedriveState::Running,
                error: None,
                from: 0,
                end: 0,
                position: 0,
                sent: 0,
                failed_again: 0,
                other_trigger: 0,
                trigger_gone: 0,
                undecodable: 0,
                undecodable_entries: Vec::new(),
                batches: 0,
                pending: None,
                started: jiff::Timestamp::now(),
                finished: None,
            }),
            cancel: self.shutdown.child_token(),
            ended: CancellationToken::new(),
        });
        let previous = {
            let mut jobs = lock(&self.jobs);
            if let Some(running) = jobs.get(&broker).filter(|j| !j.ended.is_cancelled()) {
                return Err(StartError::Running(Box::new(running.status())));
            }
            jobs.insert(broker.clone(), job.clone())
        };
        let restore = |jobs: &Mutex<HashMap<BrokerId, Arc<Job>>>| {
            let mut jobs = lock(jobs);
            match &previous {
                Some(p) => jobs.insert(broker.clone(), p.clone()),
                None => jobs.remove(&broker),
            };
        };
        let acquired = async {
            let leases = dl.leases(&self.owner, HandOver::for_drain(Duration::from_secs(5)));
            let leased = match leases.refresh().await {
                Ok(l) => l,
                Err(e) => {
                    leases.close().await;
                    return Err(StartError::Channel(e));
                }
            };
            match leased.owned.iter().find(|l| l.partition == 0) {
                Some(l) => Ok((leases.clone(), l.epoch)),
                None => {
                    leases.close().await;
                    Err(StartError::Elsewhere(broker.clone()))
                }
            }
        }
        .await;
        let (leases, epoch) = match acquired {
            Ok(l) => l,
            Err(e) => {
                restore(&self.jobs);
                return Err(e);
            }
        };
        let positions = async {
            let from = cursor(dl.as_ref()).await?;
            let end = dl.end_offset(0).await?;
            Ok::<_, ChannelError>((from, end.max(from)))
        }
        .await;
        let (from, end) = match positions {
            Ok(p) => p,
            Err(e) => {
                leases.release(&[0]).await;
                leases.close().await;
                restore(&self.jobs);
                return Err(StartError::Channel(e));
            }
        };
        job.update(|s| {
            s.from = from;
            s.end = end;
            s.position = from;
        });
        tracing::info!(broker = %broker, job = job.status().id, from, end, to = spec.to.as_str(),
            trigger = spec.trigger.as_deref().unwrap_or("*"), "dead-letter redrive started");
        // Each trigger's client, held for the job (one per distinct CACerts).
        let clients = target
            .config
            .triggers
            .iter()
            .map(|t| self.trust.client(t.subscriber_ca_certs.as_ref()))
            .collect();
        let run = Run {
            job: job.clone(),
            target,
            spec,
            clients,
            metrics: self.metrics.clone(),
            epoch,
            fault: self.fault.clone(),
        };
        let first = job.status();
        tokio::spawn(run.run(leases));
        Ok(first)
    }

    /// The running or last redrive of a broker's log in this process.
    pub fn status(&self, broker: &BrokerId) -> Option<RedriveStatus> {
        lock(&self.jobs).get(broker).map(|j| j.status())
    }

    /// Cancels the running redrive of a broker's log; returns its status, or `None`
    /// when none runs in this process.
    pub fn cancel(&self, broker: &BrokerId) -> Option<RedriveStatus> {
        let job = lock(&self.jobs).get(broker).cloned()?;
        if job.ended.is_cancelled() {
            return None;
        }
        job.cancel.cancel();
        Some(job.status())
    }

    /// Waits until the redrive of a broker's log in this process ends; its report.
    pub async fn wait(&self, broker: &BrokerId) -> Option<RedriveStatus> {
        let job = lock(&self.jobs).get(broker).cloned()?;
        job.ended.cancelled().await;
        Some(job.status())
    }
}

/// How a redrive stopped before its end.
enum Stop {
    Cancelled,
    Failed(String),
}

/// What became of one entry of a batch.
enum Outcome {
    Sent,
    /// Kept: to be appended to the end of the log.
    Keep(Event, RedriveOutcome),
    Undecodable(String),
}

struct Run {
    job: Arc<Job>,
    target: Target,
    spec: RedriveSpec,
    /// The client of each of `target.config.triggers`, in order.
    clients: Vec<HttpClient>,
    metrics: Arc<Metrics>,
    epoch: Epoch,
    fault: Option<RedriveFault>,
}

impl Run {
    async fn run(self, leases: Arc<dyn PartitionLeases>) {
        let lost = CancellationToken::new();
        let renewer = tokio::spawn(renew(leases.clone(), lost.clone(), self.job.cancel.clone()));
        let result = self.batches(&lost).await;
        renewer.abort();
        leases.release(&[0]).await;
        leases.close().await;
        let dl = self.target.dead_letters.as_ref();
        let pending = backlog(dl).await.ok();
        if let Some(p) = pending {
            self.gauge().set(i64::try_from(p).unwrap_or(i64::MAX));
        }
        self.job.update(|s| {
            s.pending = pending;
            s.finished = Some(jiff::Timestamp::now());
            match result {
                Ok(()) => s.state = RedriveState::Done,
                Err(Stop::Cancelled) => s.state = RedriveState::Cancelled,
                Err(Stop::Failed(e)) => {
                    s.state = RedriveState::Failed;
                    s.error = Some(e);
                }
            }
        });
        let s = self.job.status();
        match s.state {
            RedriveState::Failed => tracing::error!(broker = %s.broker, job = s.id, sent = s.sent,
                failed_again = s.failed_again, position = s.position, error = s.error.as_deref().unwrap_or(""),
                "dead-letter redrive failed; a new redrive resumes after the last batch completed"),
            _ => {
                tracing::info!(broker = %s.broker, job = s.id, state = s.state.as_str(), sent = s.sent,
                failed_again = s.failed_again, other_trigger = s.other_trigger, trigger_gone = s.trigger_gone,
                undecodable = s.undecodable, "dead-letter redrive ended")
            }
        }
        self.job.ended.cancel();
    }

    fn gauge(&self) -> prometheus_client::metrics::gauge::Gauge {
        self.metrics
            .dead_letter_gauge(&self.target.config.id.to_string())
    }

    async fn batches(&self, lost: &CancellationToken) -> Result<(), Stop> {
        let dl = self.target.dead_letters.as_ref();
        let (from, end) = {
            let s = self.job.status();
            (s.from, s.end)
        };
        if from >= end {
            return Ok(());
        }
        let cancel = &self.job.cancel;
        let failed = |what: &str, e: ChannelError| Stop::Failed(format!("{what}: {e}"));
        let mut reader = dl
            .reader(0, StartAt::Offset(from))
            .await
            .map_err(|e| failed("cannot read the dead-letter log", e))?;
        let mut position = from;
        while position < end {
            if lost.is_cancelled() {
                return Err(Stop::Failed(
                    "the redrive lease was lost (another replica holds it now)".into(),
                ));
            }
            if cancel.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            let records = read_until(reader.as_mut(), end, self.spec.batch)
                .await
                .map_err(|e| failed("cannot read the dead-letter log", e))?;
            if records.is_empty() {
                // The log no longer holds what its end promised (retention on a
                // shared backend): nothing more can be redriven.
                return Err(Stop::Failed(format!(
                    "no entries could be read from offset {position} although the log ends at {end}"
                )));
            }
            let last = records.last().map_or(position, |r| r.offset);
            let batch_end = if reader.position() >= end {
                end
            } else {
                last.saturating_add(1)
            };
            let n = records.len();
            let (outcomes, complete) = self.send(records, lost).await?;
            let done_to = if complete {
                batch_end
            } else {
                outcomes
                    .last()
                    .map_or(position, |(o, _)| o.saturating_add(1))
            };
            self.settle(outcomes, done_to).await?;
            position = done_to;
            self.job.update(|s| {
                s.position = done_to;
                if complete {
                    s.batches += 1;
                }
            });
            if let Ok(p) = backlog(dl).await {
                self.gauge().set(i64::try_from(p).unwrap_or(i64::MAX));
            }
            tracing::debug!(broker = %self.target.config.id, entries = n, position, end, "redrive batch done");
            if !complete {
                return Err(if lost.is_cancelled() {
                    Stop::Failed("the redrive lease was lost (another replica holds it now)".into())
                } else {
                    Stop::Cancelled
                });
            }
        }
        Ok(())
    }

    /// Sends a batch; the outcomes in offset order, and whether every entry has one
    /// (false when cancelled or the lease was lost meanwhile: the outcomes are then
    /// the prefix that came back).
    async fn send(
        &self,
        records: Vec<Record>,
        lost: &CancellationToken,
    ) -> Result<(Vec<(Offset, Outcome)>, bool), Stop> {
        let mut out: Vec<(Offset, Option<Outcome>)> = Vec::with_capacity(records.len());
        let mut to_broker = Vec::new();
        let mut deliveries = Vec::new();
        for r in records {
            let entry = match r.event {
                Ok(e) => e,
                Err(m) => {
                    out.push((r.offset, Some(Outcome::Undecodable(m.reason))));
                    continue;
                }
            };
            let trigger = entry.get_str(ERROR_TRIGGER).unwrap_or("").to_owned();
            if self.spec.trigger.as_ref().is_some_and(|t| *t != trigger) {
                let keep = Outcome::Keep(entry, RedriveOutcome::other_trigger);
                out.push((r.offset, Some(keep)));
                continue;
            }
            match self.spec.to {
                RedriveTo::Broker => {
                    to_broker.push(original(&entry));
                    out.push((r.offset, Some(Outcome::Sent)));
                }
                RedriveTo::Subscriber => {
                    deliveries.push((out.len(), entry, trigger));
                    out.push((r.offset, None));
                }
            }
        }
        self.append_events(&to_broker).await?;
        // Deliveries in offset order, `concurrency` at a time: outcomes come back in
        // that order, so what came back when stopped is a prefix.
        let mut stream = futures_util::stream::iter(deliveries.into_iter().map(
            |(slot, entry, trigger)| async move { (slot, self.deliver(entry, &trigger).await) },
        ))
        .buffered(self.spec.concurrency);
        let mut complete = true;
        loop {
            tokio::select! {
                biased;
                () = self.job.cancel.cancelled() => { complete = false; break; }
                () = lost.cancelled() => { complete = false; break; }
                next = stream.next() => match next {
                    Some((slot, outcome)) => out[slot].1 = Some(outcome),
                    None => break,
                },
            }
        }
        let known: Vec<(Offset, Outcome)> = out
            .into_iter()
            .map_while(|(offset, o)| o.map(|o| (offset, o)))
            .collect();
        Ok((known, complete))
    }

    async fn deliver(&self, entry: Event, trigger: &str) -> Outcome {
        let triggers = &self.target.config.triggers;
        let Some(i) = triggers.iter().position(|t| t.name == trigger) else {
            return Outcome::Keep(entry, RedriveOutcome::trigger_gone);
        };
        let (cfg, client) = (&triggers[i], &self.clients[i]);
        let event = original(&entry);
        let d = deliver(client, &cfg.subscriber, &cfg.delivery, &event).await;
        if d.delivered {
            return Outcome::Sent;
        }
        let mut again = entry_for(&event, cfg.subscriber.as_str(), &d.last);
        again.set(ERROR_TRIGGER, AttrValue::String(trigger.into()));
        Outcome::Keep(again, RedriveOutcome::failed_again)
    }

    /// Appends kept entries, counts the outcomes (entries sent are counted even when
    /// the cursor then cannot be stored: they were sent), and stores the cursor at
    /// `done_to`.
    async fn settle(&self, outcomes: Vec<(Offset, Outcome)>, done_to: Offset) -> Result<(), Stop> {
        let dl = self.target.dead_letters.as_ref();
        let broker = &self.target.config.id;
        let mut keep = Vec::new();
        let (mut sent, mut again, mut other, mut gone) = (0u64, 0u64, 0u64, 0u64);
        let mut undecodable = Vec::new();
        for (offset, o) in outcomes {
            match o {
                Outcome::Sent => sent += 1,
                Outcome::Keep(e, why) => {
                    match why {
                        RedriveOutcome::failed_again => again += 1,
                        RedriveOutcome::other_trigger => other += 1,
                        _ => gone += 1,
                    }
                    keep.push(e);
                }
                Outcome::Undecodable(reason) => {
                    tracing::error!(broker = %broker, offset, reason = %reason,
                        "undecodable dead-letter entry: not redriven, left in the log");
                    undecodable.push((offset, reason));
                }
            }
        }
        for chunk in keep.chunks(APPEND_CHUNK) {
            self.retrying(
                "cannot append kept entries to the dead-letter log",
                || async {
                    match dl.append_own(chunk).await {
                        Err(ChannelError::TooLarge { .. }) => {
                            // One of them grew past the limit with its new error: store
                            // each on its own, shrunk where needed.
                            for e in chunk {
                                match dl.append_own(std::slice::from_ref(e)).await {
                                    Err(err @ ChannelError::TooLarge { .. }) => {
                                        let trigger = e.get_str(ERROR_TRIGGER).unwrap_or("");
                                        dl.append_own(&[shrunk(e, trigger, &err)]).await?;
                                    }
                                    r => r?,
                                }
                            }
                            Ok(())
                        }
                        r => r,
                    }
                },
            )
            .await?;
        }
        for (outcome, n) in [
            (RedriveOutcome::sent, sent),
            (RedriveOutcome::failed_again, again),
            (RedriveOutcome::other_trigger, other),
            (RedriveOutcome::trigger_gone, gone),
            (RedriveOutcome::undecodable, undecodable.len() as u64),
        ] {
            if n > 0 {
                self.metrics
                    .redrive_counter(&broker.to_string(), outcome)
                    .inc_by(n);
            }
        }
        self.job.update(|s| {
            s.sent += sent;
            s.failed_again += again;
            s.other_trigger += other;
            s.trigger_gone += gone;
            s.undecodable += undecodable.len() as u64;
            let room = MAX_REPORTED_UNDECODABLE.saturating_sub(s.undecodable_entries.len());
            s.undecodable_entries
                .extend(undecodable.into_iter().take(room));
        });
        let completed = self.job.status().batches;
        if let Some(f) = &self.fault {
            (f.0)(completed).map_err(|e| Stop::Failed(format!("cannot store the cursor: {e}")))?;
        }
        let update = [CheckpointUpdate {
            partition: 0,
            offset: done_to,
            epoch: self.epoch,
        }];
        self.retrying("cannot store the redrive cursor", || {
            dl.store_checkpoint(REDRIVE_CURSOR, &update, true)
        })
        .await?;
        Ok(())
    }

    async fn append_events(&self, events: &[Event]) -> Result<(), Stop> {
        let log = self.target.events.as_ref();
        for chunk in events.chunks(APPEND_CHUNK) {
            self.retrying("cannot append to the broker", || log.append_own(chunk))
                .await?;
        }
        Ok(())
    }

    /// Runs `f` until it succeeds, retrying transient channel failures up to
    /// [`STORE_ATTEMPTS`] times with a backoff from 100 ms doubling to 5 s.
    async fn retrying<F, Fut>(&self, what: &str, mut f: F) -> Result<(), Stop>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), ChannelError>>,
    {
        let mut wait = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && attempt < STORE_ATTEMPTS => {
                    tracing::warn!(broker = %self.target.config.id, attempt, error = %e, "redrive: {what}; retrying");
                }
                Err(e) => return Err(Stop::Failed(format!("{what}: {e}"))),
            }
            tokio::select! {
                () = self.job.cancel.cancelled() => return Err(Stop::Cancelled),
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
            attempt += 1;
        }
    }
}

/// Renews the redrive lease every `renew_every`; cancels `lost` when partition 0 is
/// no longer owned, or went unrenewed for the TTL.
async fn renew(leases: Arc<dyn PartitionLeases>, lost: CancellationToken, stop: CancellationToken) {
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(leases.renew_every()) => {}
        }
        match leases.refresh().await {
            Ok(l) if l.owned.iter().any(|l| l.partition == 0) && !l.revoking.contains(&0) => {
                renewed = tokio::time::Instant::now();
            }
            Ok(_) => {
                lost.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "redrive lease renewal failed");
                if renewed.elapsed() >= leases.ttl() {
                    lost.cancel();
                    return;
                }
            }
        }
    }
}
