//! Reading one partition of a broker stream.
//!
//! A reader owns an *ephemeral pull consumer*: `AckPolicy::None`, filtered to the
//! partition's subject, starting `ByStartSequence` at the reader's next offset, in
//! memory with one replica, removed by the server 60 s after the reader goes away (and
//! deleted at once when it is dropped). Offsets are stream sequences - 1, so the reader
//! itself is the only state: after any failure (missed heartbeats, a consumer lost
//! in a NATS restart, a message lost in transit, detected by a gap in the consumer
//! sequence) it drops the consumer and creates a new one at the offset after the last
//! record it received. Nothing is acknowledged, so nothing is skipped.
//!
//! Cancel safety: messages are moved from the client's subscription into `buffered`
//! only in synchronous code after an await point completes, and `next_batch` returns
//! from `buffered` first. A dropped `next_batch` future leaves every received record in
//! `buffered` (and the rest in the subscription).
//!
//! `try_batch` must not return "nothing" while records exist: the dispatcher's
//! back-fill takes an empty batch as the end of the log. When nothing is buffered it
//! asks the server: records are pending for the consumer, or delivered but not yet
//! received, and it waits for them (bounded by the request timeout, then an error).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, Consumer, DeliverPolicy};
use async_nats::jetstream::{self, Message};
use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::binding;
use crate::channel::{ChannelError, Gaps, LogReader, Malformed, Offset, Record, Skipped};
use crate::config::BrokerId;

/// Messages requested per pull.
const PULL_BATCH: usize = 256;
/// Idle heartbeat asked of the server; two missed ones end the pull stream.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Pull request lifetime.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// An idle `next_batch` checks this often that nothing was lost in transit.
const IDLE_CHECK: Duration = Duration::from_secs(15);
/// The server removes a consumer whose reader vanished after this long.
const INACTIVE: Duration = Duration::from_secs(60);
/// Jumps in stream sequences are checked against the stream's first sequence at most
/// this often: with several partitions in one stream nearly every message is a jump
/// (the others' sequences), so the check (a stream info request) is rate-limited.
const GAP_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Backoff between attempts to recreate a consumer.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What every reader of one broker stream shares.
pub(super) struct ReaderCtx {
    pub js: jetstream::Context,
    pub broker: BrokerId,
    pub stream: String,
    pub timeout: Duration,
    /// Byte bound of one pull (at least twice the largest message).
    pub batch_bytes: usize,
}

struct Active {
    consumer: Consumer<pull::Config>,
    messages: pull::Stream,
    /// Messages received from this consumer (its delivery sequence of the last one).
    received: u64,
    js: jetstream::Context,
    stream: String,
}

impl Drop for Active {
    fn drop(&mut self) {
        // Best effort: the server also removes it after `INACTIVE`.
        let name = self.consumer.cached_info().name.clone();
        let (js, stream) = (self.js.clone(), self.stream.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    js.delete_consumer_from_stream(name, stream),
                )
                .await;
            });
        }
    }
}

/// A reader of one partition of a broker stream.
pub struct NatsReader {
    ctx: Arc<ReaderCtx>,
    partition: u32,
    subject: String,
    /// The next stream sequence to ask the server for (after everything received).
    next_seq: u64,
    /// The offset of the next record to return.
    position: Offset,
    buffered: VecDeque<Record>,
    active: Option<Active>,
    /// A consumer being created, in a task so that a dropped read does not abort it.
    activating: Option<JoinHandle<Result<Active, ChannelError>>>,
    /// No new consumer before this (backoff after failures; kept across dropped reads).
    retry_at: Option<Instant>,
    /// Consecutive failures, for backoff and log levels.
    failures: u32,
    /// Jumps in the sequences received, to find what retention deleted unread.
    gaps: Gaps,
}

impl NatsReader {
    /// A reader from offset `start` (stream sequence `start + 1`).
    pub(super) fn new(ctx: Arc<ReaderCtx>, partition: u32, subject: String, start: Offset) -> Self {
        NatsReader {
            ctx,
            partition,
            subject,
            next_seq: start.saturating_add(1),
            position: start,
            buffered: VecDeque::new(),
            active: None,
            activating: None,
            retry_at: None,
            failures: 0,
            gaps: Gaps::new(GAP_CHECK_EVERY),
        }
    }

    /// Tells the jumps seen so far that the stream's limits caused (they start below
    /// its first sequence) from other partitions' sequences. Failures wait for later.
    async fn check_gaps(&mut self) {
        if !self.gaps.due() {
            return;
        }
        let info =
            tokio::time::timeout(self.ctx.timeout, self.ctx.js.get_stream(&self.ctx.stream)).await;
        match info {
            // Offsets are sequences - 1.
            Ok(Ok(s)) => self
                .gaps
                .resolve(s.cached_info().state.first_sequence.saturating_sub(1)),
            _ => tracing::debug!(broker = %self.ctx.broker, partition = self.partition,
                "cannot read the stream's first sequence to check a jump; later"),
        }
    }

    fn unavailable(&self, reason: impl Into<String>) -> ChannelError {
        ChannelError::Unavailable {
            broker: self.ctx.broker.clone(),
            reason: format!("partition {}: {}", self.partition, reason.into()),
        }
    }

    fn take(&mut self, max: usize) -> Vec<Record> {
        let n = self.buffered.len().min(max.max(1));
        let out: Vec<Record> = self.buffered.drain(..n).collect();
        if let Some(last) = out.last() {
            self.position = last.offset + 1;
        }
        out
    }

    /// Creates the consumer and its pull stream at `next_seq` (after the backoff, if
    /// the last attempt failed). Cancel-safe: the creation runs in a task that a
    /// later call picks up.
    async fn activate(&mut self) -> Result<(), ChannelError> {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at).await;
            self.retry_at = None;
        }
        let task = match self.activating.as_mut() {
            Some(task) => task,
            None => {
                let ctx = self.ctx.clone();
                let (partition, subject, from) =
                    (self.partition, self.subject.clone(), self.next_seq);
                self.activating
                    .insert(tokio::spawn(create(ctx, partition, subject, from)))
            }
        };
        let joined = task.await;
        self.activating = None;
        let active = joined
            .map_err(|e| self.unavailable(format!("consumer task failed: {e}")))
            .and_then(|r| r)
            .inspect_err(|e| self.failed(e))?;
        self.active = Some(active);
        if self.failures > 0 {
            tracing::info!(broker = %self.ctx.broker, partition = self.partition, from = self.next_seq,
                "NATS reader resumed");
        }
        self.failures = 0;
        Ok(())
    }

    /// Drops the consumer; the next read recreates it at `next_seq`.
    fn reset(&mut self, why: &str) {
        if self.active.take().is_some() {
            tracing::debug!(broker = %self.ctx.broker, partition = self.partition, from = self.next_seq, why,
                "NATS reader recreates its consumer");
        }
    }

    /// Takes one message into `buffered`. False when the consumer had to be reset.
    fn accept(&mut self, msg: Message) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let (sseq, cseq) = match msg.info() {
            Ok(info) => (info.stream_sequence, info.consumer_sequence),
            Err(e) => {
                let why = format!("message without JetStream metadata: {e}");
                self.reset(&why);
                return false;
            }
        };
        if cseq != active.received + 1 {
            // Lost in transit (a reconnect, a slow-consumer drop): read again from our
            // own position.
            self.reset("gap in the consumer sequence");
            return false;
        }
        active.received = cseq;
        if sseq < self.next_seq || sseq == 0 {
            return true; // already have it (cannot happen with a fresh consumer)
        }
        // A consumer starting below the stream's first sequence, or one whose
        // messages the stream's limits removed before delivery, jumps past them.
        self.gaps.saw(self.next_seq - 1, sseq - 1);
        self.next_seq = sseq + 1;
        let msg = msg.message;
        let payload = msg.payload.clone();
        let event = binding::decode(msg.headers.as_ref(), msg.payload).map_err(|e| Malformed {
            reason: format!(
                "stream {} sequence {sseq} (subject {}): {e}",
                self.ctx.stream, msg.subject
            ),
            data: Some(payload),
        });
        self.buffered.push_back(Record {
            offset: sseq - 1,
            event,
        });
        true
    }

    /// Moves what the client already holds into `buffered`, without waiting.
    fn drain_ready(&mut self, max: usize) {
        while self.buffered.len() < max {
            let Some(active) = self.active.as_mut() else {
                return;
            };
            match active.messages.next().now_or_never() {
                None => return,
                Some(Some(Ok(msg))) => {
                    if !self.accept(msg) {
                        return;
                    }
                }
                Some(Some(Err(e))) => {
                    let why = format!("pull failed: {e}");
                    self.reset(&why);
                    return;
                }
                Some(None) => {
                    self.reset("pull stream ended");
                    return;
                }
            }
        }
    }

    /// How many records the server holds for this reader that it has not received:
    /// pending for the consumer, or delivered and still on the way.
    async fn records_waiting(&mut self) -> Result<u64, ChannelError> {
        let t = self.ctx.timeout;
        let Some(active) = self.active.as_ref() else {
            // The consumer was reset (a failed pull or a sequence gap): we cannot
            // tell whether records wait, and "none" would read as the end of the
            // log (a caller would skip what is there). Report it as a failure.
            return Err(self.unavailable("the consumer was reset; read again".to_owned()));
        };
        let received = active.received;
        let info = tokio::time::timeout(t, active.consumer.get_info()).await;
        match info {
            Ok(Ok(info)) => {
                Ok(info.num_pending + info.delivered.consumer_sequence.saturating_sub(received))
            }
            Ok(Err(e)) => {
                let err = self.unavailable(format!("cannot read consumer state: {e}"));
                self.reset("consumer state unreadable");
                Err(err)
            }
            Err(_) => {
                self.reset("consumer state timed out");
                Err(self.unavailable("timed out reading consumer state"))
            }
        }
    }

    /// Records a failure: logs it and schedules the next attempt with backoff.
    fn failed(&mut self, err: &ChannelError) {
        self.failures = self.failures.saturating_add(1);
        if self.failures == 1 {
            tracing::warn!(broker = %self.ctx.broker, partition = self.partition, error = %err,
                "NATS reader failed; retrying from its position");
        } else {
            tracing::debug!(broker = %self.ctx.broker, partition = self.partition, error = %err,
                attempt = self.failures, "NATS reader still failing");
        }
        let exp = self.failures.min(16) - 1;
        let delay = BACKOFF_MIN.saturating_mul(1 << exp).min(BACKOFF_MAX);
        self.retry_at = Some(Instant::now() + delay);
    }
}

/// Creates a consumer at `from` and starts pulling.
async fn create(
    ctx: Arc<ReaderCtx>,
    partition: u32,
    subject: String,
    from: u64,
) -> Result<Active, ChannelError> {
    let unavailable = |reason: String| ChannelError::Unavailable {
        broker: ctx.broker.clone(),
        reason: format!("partition {partition}: {reason}"),
    };
    let config = pull::Config {
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: from,
        },
        ack_policy: AckPolicy::None,
        filter_subject: subject,
        inactive_threshold: INACTIVE,
        memory_storage: true,
        num_replicas: 1,
        description: Some(format!(
            "triggerfish reader of {} partition {partition}",
            ctx.broker
        )),
        ..Default::default()
    };
    let t = ctx.timeout;
    let consumer = tokio::time::timeout(
        t,
        ctx.js
            .create_consumer_on_stream(config, ctx.stream.as_str()),
    )
    .await
    .map_err(|_| unavailable("timed out creating a consumer".into()))?
    .map_err(|e| unavailable(format!("cannot create a consumer: {e}")))?;
    let messages = tokio::time::timeout(
        t,
        consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .max_bytes_per_batch(ctx.batch_bytes)
            .heartbeat(HEARTBEAT)
            .expires(PULL_EXPIRES)
            .messages(),
    )
    .await
    .map_err(|_| unavailable("timed out starting a pull".into()))?
    .map_err(|e| unavailable(format!("cannot start a pull: {e}")))?;
    Ok(Active {
        consumer,
        messages,
        received: 0,
        js: ctx.js.clone(),
        stream: ctx.stream.clone(),
    })
}

#[async_trait]
impl LogReader for NatsReader {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, ChannelError> {
        loop {
            if !self.buffered.is_empty() {
                self.check_gaps().await;
                return Ok(self.take(max));
            }
            if self.active.is_none() && self.activate().await.is_err() {
                continue; // backoff scheduled by `activate`
            }
            let Some(active) = self.active.as_mut() else {
                continue;
            };
            match tokio::time::timeout(IDLE_CHECK, active.messages.next()).await {
                Ok(Some(Ok(msg))) => {
                    if self.accept(msg) {
                        self.drain_ready(max);
                    }
                }
                Ok(Some(Err(e))) => {
                    let err = self.unavailable(format!("pull failed: {e}"));
                    self.reset("pull failed");
                    self.failed(&err);
                }
                Ok(None) => self.reset("pull stream ended"),
                Err(_idle) => {
                    // Nothing for a while: make sure nothing was lost on the way.
                    if let Ok(1..) = self.records_waiting().await {
                        self.drain_ready(max);
                        if self.buffered.is_empty() {
                            self.reset("records delivered but not received");
                        }
                    }
                }
            }
        }
    }

    async fn try_batch(&mut self, max: usize) -> Result<Vec<Record>, ChannelError> {
        self.check_gaps().await;
        if !self.buffered.is_empty() {
            return Ok(self.take(max));
        }
        if self.active.is_none() {
            self.activate().await?;
        }
        self.drain_ready(max);
        if !self.buffered.is_empty() {
            return Ok(self.take(max));
        }
        let waiting = self.records_waiting().await?;
        if waiting == 0 {
            return Ok(Vec::new());
        }
        // Records exist: wait (bounded) until all of them, up to `max`, are here.
        let want = usize::try_from(waiting)
            .unwrap_or(usize::MAX)
            .min(max.max(1));
        let deadline = Instant::now() + self.ctx.timeout;
        while self.buffered.len() < want {
            let Some(active) = self.active.as_mut() else {
                break; // reset: return what we have
            };
            match tokio::time::timeout_at(deadline, active.messages.next()).await {
                Ok(Some(Ok(msg))) => {
                    if self.accept(msg) {
                        self.drain_ready(want);
                    }
                }
                Ok(Some(Err(e))) => {
                    self.reset("pull failed");
                    if self.buffered.is_empty() {
                        return Err(self.unavailable(format!("pull failed: {e}")));
                    }
                }
                Ok(None) => self.reset("pull stream ended"),
                Err(_) => {
                    self.reset("records pending but they did not arrive");
                    if self.buffered.is_empty() {
                        return Err(self.unavailable("timed out waiting for pending records"));
                    }
                }
            }
        }
        if self.buffered.is_empty() {
            return Err(self.unavailable("consumer reset while reading; retry"));
        }
        self.check_gaps().await;
        Ok(self.take(max))
    }

    fn position(&self) -> Offset {
        self.position
    }

    fn take_skipped(&mut self) -> Option<Skipped> {
        self.gaps.take()
    }
}
