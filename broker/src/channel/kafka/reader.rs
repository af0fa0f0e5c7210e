//! Reading one partition of a broker topic.
//!
//! A reader owns a consumer `assign`ed to (topic, partition, offset), never subscribed
//! and never committing: its position is the only state, so after any error it simply
//! goes on (librdkafka reconnects and refetches from the same offset). An offset that no
//! longer exists (retention) restarts at the earliest retained record.
//!
//! The consumer is created on the first read that needs one: a reader that finds
//! itself at the end (every trigger's catch-up reader when a dispatcher starts with its
//! triggers up to date) costs one end-offset request, not a librdkafka client.
//!
//! Cancel safety: `StreamConsumer::recv` is cancellation-safe, and a received message
//! is decoded and buffered in synchronous code, so a dropped `next_batch` loses nothing.
//!
//! `try_batch` must not return "nothing" while records exist: the dispatcher's
//! back-fill takes an empty batch as the end of the log. When nothing is buffered it
//! compares its position with the high watermark and, when behind, waits for the
//! fetch (bounded: offsets may end in transaction markers, which are never returned).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset as KOffset, TopicPartitionList};

use super::{binding, consumer_config, KafkaOptions};
use crate::channel::{ChannelError, Gaps, LogReader, Malformed, Offset, Record, Skipped};
use crate::config::BrokerId;

/// Longest a `try_batch` waits for records it knows exist.
const TRY_WAIT: Duration = Duration::from_secs(2);
/// Jumps in offsets are checked against the low watermark at most this often (a
/// jump is a transaction marker, or records retention deleted before we read them).
const GAP_CHECK_EVERY: Duration = Duration::from_millis(100);

/// A reader of one partition.
pub struct KafkaReader {
    /// Created on first use, assigned at `next`.
    consumer: Option<StreamConsumer>,
    config: ClientConfig,
    meta: Arc<BaseConsumer>,
    broker: BrokerId,
    topic: String,
    partition: u32,
    timeout: Duration,
    /// Offset of the next record to return.
    next: Offset,
    buffered: VecDeque<Record>,
    /// Jumps in the offsets read, to tell retention's deletions from markers.
    gaps: Gaps,
}

impl KafkaReader {
    pub(super) fn new(
        opts: &KafkaOptions,
        broker: &BrokerId,
        topic: &str,
        partition: u32,
        start: Offset,
        meta: Arc<BaseConsumer>,
    ) -> Result<KafkaReader, ChannelError> {
        let mut config = consumer_config(opts);
        config.set(
            "client.id",
            format!("triggerfish-reader-{topic}-{partition}"),
        );
        Ok(KafkaReader {
            consumer: None,
            config,
            meta,
            broker: broker.clone(),
            topic: topic.to_owned(),
            partition,
            timeout: opts.request_timeout,
            next: start,
            buffered: VecDeque::new(),
            gaps: Gaps::new(GAP_CHECK_EVERY),
        })
    }

    /// Creates the consumer, assigned at the reader's position, unless it exists.
    fn open(&mut self) -> Result<(), ChannelError> {
        if self.consumer.is_some() {
            return Ok(());
        }
        let consumer: StreamConsumer = self.config.create().map_err(|e| self.error(&e))?;
        let mut tpl = TopicPartitionList::new();
        let offset = i64::try_from(self.next).map_err(|_| self.error(&"offset out of range"))?;
        tpl.add_partition_offset(&self.topic, self.partition as i32, KOffset::Offset(offset))
            .map_err(|e| self.error(&e))?;
        consumer.assign(&tpl).map_err(|e| self.error(&e))?;
        self.consumer = Some(consumer);
        Ok(())
    }

    fn error(&self, e: &dyn std::fmt::Display) -> ChannelError {
        ChannelError::Unavailable {
            broker: self.broker.clone(),
            reason: format!("reading {}/{}: {e}", self.topic, self.partition),
        }
    }

    /// Buffers a decoded record.
    fn push(&mut self, record: Record) {
        if record.offset < self.next {
            tracing::warn!(broker = %self.broker, topic = self.topic, partition = self.partition, offset = record.offset, expected = self.next,
                "Kafka returned an earlier offset than expected (topic recreated?); reading on from it");
        }
        // The consumer resets an offset retention removed to the earliest one: that
        // shows as a jump (so does a transaction marker; `check_gaps` tells them apart).
        self.gaps.saw(self.next, record.offset);
        self.next = record.offset + 1;
        self.buffered.push_back(record);
    }

    /// Moves what the client already holds into `buffered`, without waiting.
    fn drain_ready(&mut self, max: usize) -> Result<(), ChannelError> {
        while self.buffered.len() < max {
            let Some(consumer) = &self.consumer else {
                return Ok(());
            };
            let record = match consumer.recv().now_or_never() {
                None => return Ok(()),
                Some(Ok(msg)) => decode(&self.topic, self.partition, &msg),
                Some(Err(e)) if self.buffered.is_empty() => return Err(self.error(&e)),
                Some(Err(_)) => return Ok(()),
            };
            if let Some(r) = record {
                self.push(r);
            }
        }
        Ok(())
    }

    /// Where the consumer has read up to (past transaction markers), 0 if unknown.
    fn consumer_position(&self) -> Offset {
        let Some(c) = &self.consumer else { return 0 };
        let Ok(tpl) = c.position() else { return 0 };
        tpl.elements_for_topic(&self.topic)
            .iter()
            .find(|e| e.partition() == self.partition as i32)
            .and_then(|e| match e.offset() {
                KOffset::Offset(o) => Offset::try_from(o).ok(),
                _ => None,
            })
            .unwrap_or(0)
    }

    fn pop(&mut self, max: usize) -> Vec<Record> {
        let n = self.buffered.len().min(max.max(1));
        self.buffered.drain(..n).collect()
    }

    async fn watermarks(&self) -> Result<(Offset, Offset), ChannelError> {
        let meta = self.meta.clone();
        let topic = self.topic.clone();
        let (p, t) = (self.partition as i32, self.timeout);
        let (low, high) = super::blocking(move || meta.fetch_watermarks(&topic, p, t))
            .await
            .map_err(|e| self.error(&e))?;
        Ok((low.max(0) as Offset, high.max(0) as Offset))
    }

    async fn high_watermark(&self) -> Result<Offset, ChannelError> {
        Ok(self.watermarks().await?.1)
    }

    /// Tells the jumps seen so far that retention caused (they start below the low
    /// watermark) from transaction markers. A failed check is tried again later.
    async fn check_gaps(&mut self) {
        if !self.gaps.due() {
            return;
        }
        match self.watermarks().await {
            Ok((low, _)) => self.gaps.resolve(low),
            Err(e) => {
                tracing::debug!(broker = %self.broker, topic = self.topic, partition = self.partition, error = %e,
                    "cannot read the low watermark to check a jump in offsets; later");
            }
        }
    }
}

#[async_trait]
impl LogReader for KafkaReader {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, ChannelError> {
        if self.buffered.is_empty() {
            self.open()?;
            let Some(consumer) = &self.consumer else {
                return Ok(Vec::new());
            };
            let record = match consumer.recv().await {
                Ok(msg) => decode(&self.topic, self.partition, &msg),
                Err(e) => return Err(self.error(&e)),
            };
            if let Some(r) = record {
                self.push(r);
            }
        }
        self.drain_ready(max)?;
        self.check_gaps().await;
        Ok(self.pop(max))
    }

    async fn try_batch(&mut self, max: usize) -> Result<Vec<Record>, ChannelError> {
        self.drain_ready(max)?;
        if self.buffered.is_empty() && self.next < self.high_watermark().await? {
            self.open()?;
            let Some(consumer) = &self.consumer else {
                return Ok(Vec::new());
            };
            match tokio::time::timeout(TRY_WAIT, consumer.recv()).await {
                Ok(Ok(msg)) => {
                    if let Some(r) = decode(&self.topic, self.partition, &msg) {
                        self.push(r);
                    }
                    self.drain_ready(max)?;
                }
                Ok(Err(e)) => return Err(self.error(&e)),
                Err(_) => {
                    // Nothing came. Either every offset left below the end is a
                    // transaction marker (never returned; the consumer's position has
                    // moved past them), or the fetch is slow: then this is an error,
                    // never an empty batch, which callers take for the end of the log.
                    let fetched = self.consumer_position();
                    if fetched > self.next {
                        self.gaps.saw(self.next, fetched);
                        self.next = fetched;
                    }
                    if self.buffered.is_empty() && self.next < self.high_watermark().await? {
                        return Err(self.error(&format!(
                            "records from offset {} not fetched within {TRY_WAIT:?}",
                            self.next
                        )));
                    }
                }
            }
        }
        self.check_gaps().await;
        Ok(self.pop(max))
    }

    fn position(&self) -> Offset {
        self.next
    }

    fn take_skipped(&mut self) -> Option<Skipped> {
        self.gaps.take()
    }
}

/// Decodes a consumed message; `None` for an offset that cannot be one (negative).
fn decode(topic: &str, partition: u32, msg: &BorrowedMessage<'_>) -> Option<Record> {
    let offset = Offset::try_from(msg.offset()).ok()?;
    // rdkafka's header iterator panics on a header name that is not UTF-8 (any
    // producer can write one): that record is malformed, not a reason to stop the
    // partition.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match msg.headers() {
        Some(h) => binding::decode(h.iter().map(|h| (h.key, h.value)), msg.payload()),
        None => binding::decode(std::iter::empty(), msg.payload()),
    }))
    .unwrap_or_else(|_| {
        Err(binding::BindingError::Header {
            header: "?".to_owned(),
            reason: "a header name is not UTF-8".to_owned(),
        })
    });
    let event = decoded.map_err(|e| Malformed {
        reason: format!("topic {topic} partition {partition} offset {offset}: {e}"),
        data: msg.payload().map(bytes::Bytes::copy_from_slice),
    });
    Some(Record { offset, event })
}

impl Drop for KafkaReader {
    /// Closing a librdkafka client blocks (it waits for its threads): not on an async
    /// worker thread.
    fn drop(&mut self) {
        if let Some(c) = self.consumer.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn_blocking(move || drop(c));
                }
                Err(_) => drop(c),
            }
        }
    }
}
