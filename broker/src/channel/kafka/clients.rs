//! Settings of the librdkafka clients, and small helpers every client module uses.
//!
//! Every client gets the bootstrap servers and the user's `--kafka-option`s, routed by
//! [`option_role`]: producer-only settings go only to producers and consumer-only ones
//! only to consumers (librdkafka warns about the others, once per client). The
//! settings the delivery contract depends on are applied after the user's.

use std::sync::Mutex;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

use super::KafkaOptions;

/// Runs a blocking librdkafka call off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, KafkaError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Settings every client gets: the servers, then our defaults (the caller applies the
/// user's options after its own defaults, so they win).
pub(super) fn client_config(opts: &KafkaOptions) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", opts.bootstrap_servers());
    c.set(
        "socket.timeout.ms",
        opts.request_timeout.as_millis().max(10).to_string(),
    );
    c
}

/// A consumer that never joins a group or commits: readers and the checkpoint tail.
/// The user's options come first; the settings reading correctly depends on win.
pub(super) fn consumer_config(opts: &KafkaOptions) -> ClientConfig {
    let mut c = client_config(opts);
    c.set("fetch.wait.max.ms", "100")
        // Each reader buffers at most this much ahead (librdkafka's default is 64 MiB).
        .set("queued.max.messages.kbytes", "4096");
    c.apply_for(&opts.client_options, Role::Consumer);
    c.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed")
        // An offset no longer retained: the earliest one (never skip to the end).
        .set("auto.offset.reset", "earliest")
        // librdkafka manages assignments through a group handle, so even an assigned
        // consumer needs an id; readers never subscribe or commit with it.
        .set("group.id", "triggerfish.readers");
    c
}

/// Which kind of client an option is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Producer,
    Consumer,
}

/// Settings only one kind of client understands (librdkafka warns about the others):
/// each `--kafka-option` goes to the clients it is for, everything else to all.
pub(super) fn option_role(key: &str) -> Option<Role> {
    const PRODUCER: &[&str] = &[
        "acks",
        "request.required.acks",
        "enable.idempotence",
        "batch.num.messages",
        "batch.size",
        "linger.ms",
        "queue.buffering.max.ms",
        "queue.buffering.max.messages",
        "queue.buffering.max.kbytes",
        "compression.codec",
        "compression.type",
        "compression.level",
        "message.timeout.ms",
        "delivery.timeout.ms",
        "partitioner",
        "retries",
        "message.send.max.retries",
        "sticky.partitioning.linger.ms",
        "transactional.id",
        "transaction.timeout.ms",
        "enable.gapless.guarantee",
        "request.timeout.ms",
    ];
    const CONSUMER: &[&str] = &[
        "group.id",
        "group.instance.id",
        "group.protocol",
        "group.protocol.type",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "partition.assignment.strategy",
        "isolation.level",
        "auto.offset.reset",
        "enable.auto.commit",
        "auto.commit.interval.ms",
        "enable.auto.offset.store",
        "enable.partition.eof",
        "check.crcs",
        "queued.min.messages",
        "queued.max.messages.kbytes",
        "fetch.wait.max.ms",
        "fetch.queue.backoff.ms",
        "fetch.message.max.bytes",
        "max.partition.fetch.bytes",
        "fetch.max.bytes",
        "fetch.min.bytes",
        "fetch.error.backoff.ms",
    ];
    if PRODUCER.contains(&key) {
        Some(Role::Producer)
    } else if CONSUMER.contains(&key) {
        Some(Role::Consumer)
    } else {
        None
    }
}

pub(super) trait Apply {
    fn apply_for(&mut self, options: &[(String, String)], role: Role) -> &mut Self;
    fn apply_common(&mut self, options: &[(String, String)]) -> &mut Self;
    fn apply_str(&mut self, options: &[(&str, &str)]) -> &mut Self;
}

impl Apply for ClientConfig {
    /// The options for all clients and those for `role`.
    fn apply_for(&mut self, options: &[(String, String)], role: Role) -> &mut Self {
        for (k, v) in options {
            if option_role(k).is_none_or(|r| r == role) {
                self.set(k, v);
            }
        }
        self
    }
    /// The options for all clients only (admin and metadata clients).
    fn apply_common(&mut self, options: &[(String, String)]) -> &mut Self {
        for (k, v) in options {
            if option_role(k).is_none() {
                self.set(k, v);
            }
        }
        self
    }
    fn apply_str(&mut self, options: &[(&str, &str)]) -> &mut Self {
        for (k, v) in options {
            self.set(*k, *v);
        }
        self
    }
}

/// The producer's `message.max.bytes` (librdkafka's default 1,000,000).
pub(super) fn max_message_bytes(opts: &KafkaOptions) -> usize {
    opts.client_options
        .iter()
        .rev()
        .find(|(k, _)| k == "message.max.bytes")
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(1_000_000)
}
