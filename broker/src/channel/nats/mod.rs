//! The NATS JetStream channel: brokers stored in JetStream streams, so that ingress and
//! dispatcher replicas on any number of machines share them.
//!
//! Layout, for a broker `<ns>/<name>` and the installation prefix `<p>` (default
//! `triggerfish`):
//!
//! | what | name |
//! |---|---|
//! | events stream | `<p>_events_<ns>__<name>`, subjects `<p>.events.<ns>.<name>.<partition>` |
//! | dead-letter stream | `<p>_deadletters_<ns>__<name>`, subject `<p>.deadletters.<ns>.<name>` |
//! | checkpoints | KV bucket `<p>_checkpoints`, key `<ns>.<name>.<events\|deadletters>.<trigger>.<partition>` |
//! | partition leases | KV bucket `<p>_leases` (entries expire): `<ns>.<name>.members.<owner>`, `<ns>.<name>.partitions.<partition>` |
//!
//! Names are mapped by [`token`]: `[a-z0-9-]` stay, every other byte becomes `_XX`
//! (upper-case hex). Kubernetes names never contain `_`, `.` is common in them and
//! invalid in stream names and subject tokens; the mapping is injective for any input
//! (an escape is `_` plus a hex digit, the separator `__` is `_` plus `_`), so two
//! brokers can never share a stream or a subject.
//!
//! - **Partitions** are subjects, listed one by one in the stream's config, so the
//!   count of an existing stream is read back from it (an existing broker keeps its
//!   count, as in the embedded log). `partition_for` picks one, as for every backend.
//! - **Offsets are stream sequence numbers minus one**, so that a one-partition log
//!   counts from 0 like the embedded log. Within a partition they increase but are
//!   sparse (the partitions share one sequence). `end_offset` is the offset the stream's
//!   next message gets (its last sequence): no record of any partition lies between a
//!   partition's last record and it, and every later append gets a larger one, which is
//!   all `StartAt::End` needs. The dead-letter stream has one subject, so its offsets are
//!   dense, from 0.
//! - **Appends** publish every event (CloudEvents NATS binding, binary mode: see
//!   [`binding`]) with `Nats-Msg-Id` = hash of `source` + `id`, then await every PubAck,
//!   all within the request timeout, else `ChannelError::Unavailable` (HTTP 503). A
//!   producer's retry within the stream's duplicate window is stored once. Events over
//!   the max message size (or the server's `max_payload`) are refused before anything
//!   is published (`TooLarge`, HTTP 413). While the client is disconnected appends fail
//!   at once instead of queueing. Dead-letter appends carry no `Nats-Msg-Id`: the same
//!   event may be dead-lettered by two triggers, or again after a redrive.
//! - **Readers** are ephemeral pull consumers ([`reader`]); **checkpoints** live in a
//!   KV bucket, one key per trigger and partition ([`checkpoint`]).
//! - **Dispatcher replicas** split each broker's partitions with leases in a KV bucket
//!   whose entries expire ([`lease`]): each holds at most `ceil(P / M)` of the `P`
//!   partitions among `M` live dispatchers; a dead one's leases expire and are taken.
//! - **Recovery**: async-nats reconnects forever; streams are file-backed and survive a
//!   server restart; readers recreate their consumer from their own position.

mod binding;
mod checkpoint;
mod config;
pub mod lease;
mod reader;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self, kv};
use async_trait::async_trait;

/// The client crate, for tools and tests that talk to the same server.
pub use async_nats;
pub use binding::{decode, encode, msg_id, BindingError};
pub use config::{ConfigError, NatsAuth, NatsOptions, NatsTls, StreamLimits};
pub use reader::NatsReader;

use crate::channel::checkpoint::CheckpointStore;
use crate::channel::lease::{HandOver, PartitionLeases};
use crate::channel::{
    partition_for, BrokerLog, ChannelError, CheckpointUpdate, EventLog, LogKind, LogReader, Offset,
    Offsets, StartAt,
};
use crate::config::BrokerId;
use crate::event::Event;

/// Longest stream name accepted (the server's limit).
const MAX_STREAM_NAME: usize = 255;

/// Maps a name to a subject token / name part: `[a-z0-9-]` kept, any other byte as
/// `_XX`. Empty names are refused.
pub fn token(s: &str, broker: &BrokerId) -> Result<String, ChannelError> {
    if s.is_empty() {
        return Err(ChannelError::Invalid {
            reason: format!("broker {broker}: an empty name cannot be stored in NATS"),
        });
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push('_');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    Ok(out)
}

/// Stream name and subject base of a broker's events or dead letters.
pub fn stream_names(
    prefix: &str,
    broker: &BrokerId,
    kind: LogKind,
) -> Result<(String, String), ChannelError> {
    let kind = kind.as_str();
    let ns = token(&broker.namespace, broker)?;
    let name = token(&broker.name, broker)?;
    let stream = format!("{prefix}_{kind}_{ns}__{name}");
    if stream.len() > MAX_STREAM_NAME {
        return Err(ChannelError::Invalid {
            reason: format!(
                "broker {broker}: namespace and name are too long for a JetStream stream name ({} > {MAX_STREAM_NAME} bytes)",
                stream.len()
            ),
        });
    }
    Ok((stream, format!("{prefix}.{kind}.{ns}.{name}")))
}

/// The NATS JetStream channel: one connection, any number of brokers.
pub struct NatsLog {
    client: async_nats::Client,
    js: jetstream::Context,
    opts: NatsOptions,
    checkpoints: kv::Store,
    leases: kv::Store,
    /// Open logs by broker; `true` marks a dead-letter log.
    brokers: Mutex<HashMap<(BrokerId, LogKind), Arc<NatsBroker>>>,
}

impl NatsLog {
    /// Connects (within the connect timeout) and opens the checkpoint bucket.
    pub async fn connect(opts: NatsOptions) -> Result<NatsLog, ChannelError> {
        opts.validate().map_err(|e| ChannelError::Invalid {
            reason: e.to_string(),
        })?;
        let connect_err = |e: &dyn std::fmt::Display| ChannelError::Unreachable {
            reason: format!("cannot connect to NATS at {}: {e}", opts.servers.join(",")),
        };
        let mut co = async_nats::ConnectOptions::new()
            .name("triggerfish")
            .connection_timeout(opts.connect_timeout)
            .request_timeout(Some(opts.request_timeout))
            .max_reconnects(None)
            .require_tls(opts.tls.require);
        co = match &opts.auth {
            NatsAuth::None => co,
            NatsAuth::Token(t) => co.token(t.clone()),
            NatsAuth::UserPassword { user, password } => {
                co.user_and_password(user.clone(), password.clone())
            }
            NatsAuth::CredentialsFile(path) => {
                co.credentials_file(path)
                    .await
                    .map_err(|e| ChannelError::Invalid {
                        reason: format!(
                            "cannot read NATS credentials file {}: {e}",
                            path.display()
                        ),
                    })?
            }
        };
        if let Some(ca) = &opts.tls.ca_file {
            co = co.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &opts.tls.client_cert {
            co = co.add_client_certificate(cert.clone(), key.clone());
        }
        let servers: Vec<async_nats::ServerAddr> = opts
            .servers
            .iter()
            .map(|s| s.parse::<async_nats::ServerAddr>())
            .collect::<Result<_, _>>()
            .map_err(|e| connect_err(&e))?;
        let client = tokio::time::timeout(
            opts.connect_timeout.saturating_mul(2),
            co.connect(servers.as_slice()),
        )
        .await
        .map_err(|_| connect_err(&"timed out"))?
        .map_err(|e| connect_err(&e))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(opts.request_timeout)
            .max_ack_inflight(16_384)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let checkpoints = checkpoint::open_bucket(
            &js,
            &format!("{}_checkpoints", opts.prefix),
            opts.limits.replicas,
            opts.request_timeout,
        )
        .await?;
        let leases = lease::open_bucket(
            &js,
            &format!("{}_leases", opts.prefix),
            opts.limits.replicas,
            opts.lease_ttl,
            opts.request_timeout,
        )
        .await?;
        Ok(NatsLog {
            client,
            js,
            opts,
            checkpoints,
            leases,
            brokers: Mutex::new(HashMap::new()),
        })
    }

    /// The underlying client (for tests and tools).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    async fn open_log(
        &self,
        broker: &BrokerId,
        kind: LogKind,
    ) -> Result<Arc<NatsBroker>, ChannelError> {
        let key = (broker.clone(), kind);
        if let Some(b) = self.lock().get(&key) {
            return Ok(b.clone());
        }
        let (stream, subject_base) = stream_names(&self.opts.prefix, broker, kind)?;
        let wanted = kind.partitions(self.opts.partitions);
        let partitions = self
            .ensure_stream(broker, &stream, &subject_base, wanted, kind)
            .await?;
        let subjects = subjects(&subject_base, kind, partitions);
        let limits = &self.opts.limits;
        let b = Arc::new(NatsBroker {
            id: broker.clone(),
            client: self.client.clone(),
            js: self.js.clone(),
            stream: stream.clone(),
            subjects,
            // Redriven entries and entries that failed again rightly repeat an id.
            dedup: kind == LogKind::Events,
            kind,
            max_message_bytes: limits.max_message_bytes as usize,
            next_partition: AtomicU32::new(0),
            deduplicated: AtomicU64::new(0),
            timeout: self.opts.request_timeout,
            leases: self.leases.clone(),
            lease_ttl: self.opts.lease_ttl,
            checkpoints: checkpoint::Checkpoints::new(
                self.checkpoints.clone(),
                broker,
                kind,
                self.opts.request_timeout,
            )?,
            readers: Arc::new(reader::ReaderCtx {
                js: self.js.clone(),
                broker: broker.clone(),
                stream,
                timeout: self.opts.request_timeout,
                batch_bytes: (limits.max_message_bytes as usize)
                    .saturating_mul(2)
                    .max(8 << 20),
            }),
        });
        Ok(self.lock().entry(key).or_insert(b).clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(BrokerId, LogKind), Arc<NatsBroker>>> {
        self.brokers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the stream, or brings an existing one's limits to the configured values.
    /// Returns its partition count.
    async fn ensure_stream(
        &self,
        broker: &BrokerId,
        name: &str,
        subject_base: &str,
        partitions: u32,
        kind: LogKind,
    ) -> Result<u32, ChannelError> {
        let t = self.opts.request_timeout;
        let fail = |what: &str, e: &dyn std::fmt::Display| ChannelError::Unavailable {
            broker: broker.clone(),
            reason: format!("stream {name}: {what}: {e}"),
        };
        let limits = &self.opts.limits;
        let mut desired = stream::Config {
            name: name.to_owned(),
            description: Some(format!(
                "Triggerfish broker {broker}{}",
                if kind == LogKind::DeadLetters {
                    " (dead letters)"
                } else {
                    ""
                }
            )),
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            storage: StorageType::File,
            num_replicas: limits.replicas,
            // Dead letters wait for an operator: kept until redriven, never expired
            // by age or size (ARCHITECTURE.md, contract 6).
            max_age: match limits.max_age {
                Some(age) if !kind.never_expires() => age,
                _ => Duration::ZERO,
            },
            max_bytes: match limits.max_bytes {
                Some(b) if !kind.never_expires() => i64::try_from(b).unwrap_or(i64::MAX),
                _ => -1,
            },
            max_messages: -1,
            max_messages_per_subject: -1,
            max_consumers: -1,
            max_message_size: i32::try_from(limits.max_message_bytes).unwrap_or(i32::MAX),
            duplicate_window: limits.duplicate_window,
            ..Default::default()
        };
        for attempt in 0..2 {
            let existing = tokio::time::timeout(t, self.js.get_stream(name))
                .await
                .map_err(|_| fail("looking it up", &"timed out"))?;
            match existing {
                Ok(s) => {
                    let current = &s.cached_info().config;
                    let n = existing_partitions(current, subject_base, kind).ok_or_else(|| {
                        fail(
                            "exists with subjects Triggerfish did not create",
                            &current.subjects.join(","),
                        )
                    })?;
                    desired.subjects = current.subjects.clone();
                    desired.storage = current.storage;
                    if limits_differ(current, &desired) {
                        tokio::time::timeout(t, self.js.update_stream(desired.clone()))
                            .await
                            .map_err(|_| fail("updating its limits", &"timed out"))?
                            .map_err(|e| fail("updating its limits", &e))?;
                        tracing::info!(broker = %broker, stream = name, "NATS stream limits updated");
                    }
                    if kind == LogKind::Events && n != self.opts.partitions {
                        tracing::info!(broker = %broker, partitions = n, "broker keeps the partition count it was created with");
                    }
                    return Ok(n);
                }
                Err(e) if is_not_found(&e) => {
                    desired.subjects = subjects(subject_base, kind, partitions);
                    let created = tokio::time::timeout(t, self.js.create_stream(desired.clone()))
                        .await
                        .map_err(|_| fail("creating it", &"timed out"))?;
                    match created {
                        Ok(_) => {
                            tracing::info!(broker = %broker, stream = name, partitions, "NATS stream created");
                            return Ok(partitions);
                        }
                        // Created by another process meanwhile: look again.
                        Err(e) if attempt == 0 => {
                            tracing::debug!(stream = name, error = %e, "stream creation raced");
                        }
                        Err(e) => return Err(fail("creating it", &e)),
                    }
                }
                Err(e) => return Err(fail("looking it up", &e)),
            }
        }
        Err(fail("creating it", &"it keeps changing"))
    }
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// A log's subjects, one per partition: `<base>.<p>`, or `<base>` alone for the
/// dead-letter log.
fn subjects(base: &str, kind: LogKind, partitions: u32) -> Vec<String> {
    match kind {
        LogKind::DeadLetters => vec![base.to_owned()],
        LogKind::Events => (0..partitions).map(|p| format!("{base}.{p}")).collect(),
    }
}

/// The partition count of an existing stream, when its subjects are exactly ours.
fn existing_partitions(config: &stream::Config, base: &str, kind: LogKind) -> Option<u32> {
    if kind == LogKind::DeadLetters {
        return (config.subjects == [base]).then_some(1);
    }
    let n = u32::try_from(config.subjects.len()).ok()?;
    let ours = (0..n).all(|p| config.subjects.contains(&format!("{base}.{p}")));
    (n > 0 && ours).then_some(n)
}

fn limits_differ(current: &stream::Config, desired: &stream::Config) -> bool {
    current.num_replicas != desired.num_replicas
        || current.max_age != desired.max_age
        || current.max_bytes != desired.max_bytes
        || current.max_message_size != desired.max_message_size
        || current.duplicate_window != desired.duplicate_window
        || current.discard != desired.discard
}

#[async_trait]
impl EventLog for NatsLog {
    async fn open(
        &self,
        broker: &BrokerId,
        kind: LogKind,
    ) -> Result<Arc<dyn BrokerLog>, ChannelError> {
        let b = self.open_log(broker, kind).await?;
        Ok(b)
    }

    fn describe(&self) -> String {
        format!(
            "NATS JetStream at {} (streams {}_events_*)",
            self.opts.servers.join(","),
            self.opts.prefix
        )
    }
}

/// One broker's stream (or dead-letter stream) and checkpoints.
pub struct NatsBroker {
    id: BrokerId,
    client: async_nats::Client,
    js: jetstream::Context,
    stream: String,
    /// One subject per partition.
    subjects: Vec<String>,
    /// Whether appends carry `Nats-Msg-Id`.
    dedup: bool,
    kind: LogKind,
    max_message_bytes: usize,
    next_partition: AtomicU32,
    /// Producer appends JetStream acknowledged as duplicates, not yet taken.
    deduplicated: AtomicU64,
    timeout: Duration,
    leases: kv::Store,
    lease_ttl: Duration,
    checkpoints: checkpoint::Checkpoints,
    readers: Arc<reader::ReaderCtx>,
}

impl NatsBroker {
    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    /// The subject of a partition.
    pub fn subject(&self, partition: u32) -> Option<&str> {
        self.subjects.get(partition as usize).map(String::as_str)
    }

    fn unavailable(&self, reason: impl Into<String>) -> ChannelError {
        ChannelError::Unavailable {
            broker: self.id.clone(),
            reason: reason.into(),
        }
    }

    fn check_partition(&self, p: u32) -> Result<&str, ChannelError> {
        self.subject(p).ok_or_else(|| ChannelError::NoPartition {
            broker: self.id.clone(),
            partition: p,
        })
    }

    async fn stream_state(&self) -> Result<stream::State, ChannelError> {
        let s = tokio::time::timeout(self.timeout, self.js.get_stream(&self.stream))
            .await
            .map_err(|_| self.unavailable("timed out reading the stream state"))?
            .map_err(|e| self.unavailable(format!("stream {}: {e}", self.stream)))?;
        Ok(s.cached_info().state.clone())
    }

    fn publish_error(&self, e: jetstream::context::PublishError, size: usize) -> ChannelError {
        let too_large = match e.kind() {
            PublishErrorKind::MaxPayloadExceeded => true,
            PublishErrorKind::Other => std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<jetstream::Error>())
                .is_some_and(|j| j.error_code() == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM),
            _ => false,
        };
        if too_large {
            return ChannelError::TooLarge {
                size,
                limit: self.limit(),
            };
        }
        self.unavailable(format!("publish to stream {} failed: {e}", self.stream))
    }

    /// The largest message accepted: the stream's limit, capped by the server's.
    fn limit(&self) -> usize {
        let server = self.client.server_info().max_payload;
        if server > 0 {
            self.max_message_bytes.min(server)
        } else {
            self.max_message_bytes
        }
    }
    /// Publishes `events`, with `Nats-Msg-Id` (JetStream de-duplication of producer
    /// retries) when `dedup`.
    async fn publish(&self, events: &[Event], dedup: bool) -> Result<(), ChannelError> {
        if events.is_empty() {
            return Ok(());
        }
        if self.client.connection_state() != State::Connected {
            return Err(self.unavailable("not connected to NATS"));
        }
        let n = self.partitions();
        let fallback = self.next_partition.fetch_add(1, Ordering::Relaxed);
        let limit = self.limit();
        // Encode everything first: a batch with one oversized event stores nothing.
        let mut messages = Vec::with_capacity(events.len());
        for e in events {
            let (mut headers, payload) =
                binding::encode(e).map_err(|err| ChannelError::Encode {
                    id: e.id().to_owned(),
                    reason: err.to_string(),
                })?;
            if dedup {
                headers.insert(binding::MSG_ID_HEADER, binding::msg_id(e).as_str());
            }
            let size = binding::wire_size(&headers, &payload);
            if size > limit {
                return Err(ChannelError::TooLarge { size, limit });
            }
            let p = partition_for(e, n, fallback) as usize;
            messages.push((p, headers, payload, size));
        }
        let publish = async {
            let mut acks = Vec::with_capacity(messages.len());
            for (p, headers, payload, size) in messages {
                let subject = self.subjects[p].clone();
                let ack = self
                    .js
                    .send_publish(
                        subject,
                        PublishMessage::build().headers(headers).payload(payload),
                    )
                    .await
                    .map_err(|e| self.publish_error(e, size))?;
                acks.push((ack, size));
            }
            for (ack, size) in acks {
                let ack = ack.await.map_err(|e| self.publish_error(e, size))?;
                if ack.duplicate {
                    // A producer's retry of an event stored moments ago (same source
                    // and id within the duplicate window): stored once, as meant.
                    tracing::debug!(stream = %self.stream, sequence = ack.sequence,
                        "append de-duplicated by JetStream (a producer retry)");
                    self.deduplicated.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        };
        tokio::time::timeout(self.timeout, publish)
            .await
            .map_err(|_| {
                self.unavailable(format!(
                    "no PubAck from stream {} within {:?}",
                    self.stream, self.timeout
                ))
            })?
    }
}

#[async_trait]
impl BrokerLog for NatsBroker {
    fn broker(&self) -> &BrokerId {
        &self.id
    }

    fn partitions(&self) -> u32 {
        self.subjects.len() as u32
    }

    async fn append(&self, events: &[Event]) -> Result<(), ChannelError> {
        self.publish(events, self.dedup).await
    }

    async fn append_own(&self, events: &[Event]) -> Result<(), ChannelError> {
        self.publish(events, false).await
    }

    fn offsets(&self) -> Offsets {
        // One stream per log: with one subject its sequence is the partition's own.
        if self.subjects.len() == 1 {
            Offsets::Dense
        } else {
            Offsets::Sparse
        }
    }

    fn take_deduplicated(&self) -> u64 {
        self.deduplicated.swap(0, Ordering::Relaxed)
    }

    async fn end_offset(&self, partition: u32) -> Result<Offset, ChannelError> {
        self.check_partition(partition)?;
        // The next append gets sequence last + 1, i.e. offset last.
        Ok(self.stream_state().await?.last_sequence)
    }

    async fn partition_end(&self, partition: u32) -> Result<Offset, ChannelError> {
        let subject = self.check_partition(partition)?.to_owned();
        if self.subjects.len() == 1 {
            return self.end_offset(partition).await;
        }
        let stream = tokio::time::timeout(self.timeout, self.js.get_stream(&self.stream))
            .await
            .map_err(|_| self.unavailable("timed out reading the stream"))?
            .map_err(|e| self.unavailable(format!("stream {}: {e}", self.stream)))?;
        let last = tokio::time::timeout(
            self.timeout,
            stream.get_last_raw_message_by_subject(&subject),
        )
        .await
        .map_err(|_| self.unavailable("timed out reading a partition's last message"))?;
        match last {
            // A record of sequence s has offset s - 1: the partition ends at s.
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(self.unavailable(format!("partition {partition}: {e}"))),
        }
    }

    async fn reader(
        &self,
        partition: u32,
        start: StartAt,
    ) -> Result<Box<dyn LogReader>, ChannelError> {
        let subject = self.check_partition(partition)?.to_owned();
        let start = match start {
            StartAt::Offset(o) => o,
            StartAt::Earliest => {
                let s = self.stream_state().await?;
                if s.messages == 0 {
                    s.last_sequence
                } else {
                    s.first_sequence.saturating_sub(1)
                }
            }
            StartAt::End => self.stream_state().await?.last_sequence,
        };
        Ok(Box::new(NatsReader::new(
            self.readers.clone(),
            partition,
            subject,
            start,
        )))
    }

    async fn load_checkpoint(&self, trigger: &str) -> Result<Vec<Option<Offset>>, ChannelError> {
        self.checkpoints.load(trigger, self.partitions()).await
    }

    async fn store_checkpoint(
        &self,
        trigger: &str,
        updates: &[CheckpointUpdate],
        _durable: bool,
    ) -> Result<(), ChannelError> {
        for u in updates {
            self.check_partition(u.partition)?;
        }
        self.checkpoints.store(trigger, updates).await
    }

    async fn init_checkpoint(
        &self,
        trigger: &str,
        initial: &[(u32, Offset)],
    ) -> Result<(), ChannelError> {
        for &(p, _) in initial {
            self.check_partition(p)?;
        }
        self.checkpoints.init(trigger, initial).await
    }

    async fn delete_checkpoint(&self, trigger: &str) -> Result<(), ChannelError> {
        self.checkpoints.delete(trigger, self.partitions()).await
    }

    fn leases(&self, owner: &str, hand_over: HandOver) -> Arc<dyn PartitionLeases> {
        let scope = lease::Scope {
            broker: &self.id,
            kind: self.kind,
            partitions: self.partitions(),
        };
        match lease::NatsLeases::new(
            self.leases.clone(),
            scope,
            owner,
            self.lease_ttl,
            self.timeout,
            hand_over,
        ) {
            Ok(l) => Arc::new(l),
            // Only an empty owner name gets here (`token` refuses it).
            Err(e) => Arc::new(crate::channel::lease::Unusable {
                reason: format!("invalid dispatcher name {owner:?}: {e}"),
            }),
        }
    }
}
