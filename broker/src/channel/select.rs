//! Choosing a channel: the `--storage` value's URL scheme ([`Scheme::of`]), the
//! settings of each backend ([`ChannelOptions`]) and [`connect`], the one place a
//! backend is opened.

use std::sync::Arc;

#[cfg(feature = "kafka")]
use super::kafka;
#[cfg(feature = "nats")]
use super::nats;
use super::{embedded, ChannelError, EventLog};

/// The channel a `--storage` value names, by its URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `embedded`: the local log.
    Embedded,
    /// `nats://` or `tls://`: NATS JetStream (cargo feature `nats`).
    #[cfg(feature = "nats")]
    Nats,
    /// `kafka://`: Kafka (cargo feature `kafka`).
    #[cfg(feature = "kafka")]
    Kafka,
}

impl Scheme {
    /// Which channel `storage` names; the error says what is accepted, or which
    /// cargo feature this build was made without.
    pub fn of(storage: &str) -> Result<Scheme, ChannelError> {
        let missing = |feature: &str, what: &str| ChannelError::Invalid {
            reason: format!(
                "'{storage}': this triggerfish was built without {what} (cargo feature `{feature}`)"
            ),
        };
        if storage == "embedded" {
            return Ok(Scheme::Embedded);
        }
        if storage.starts_with("nats://") || storage.starts_with("tls://") {
            #[cfg(feature = "nats")]
            return Ok(Scheme::Nats);
            #[cfg(not(feature = "nats"))]
            return Err(missing("nats", "NATS JetStream"));
        }
        if storage.starts_with("kafka://") {
            #[cfg(feature = "kafka")]
            return Ok(Scheme::Kafka);
            #[cfg(not(feature = "kafka"))]
            return Err(missing("kafka", "Kafka"));
        }
        let _ = missing;
        Err(ChannelError::Invalid {
            reason: format!(
                "'{storage}': expected `embedded`, `nats://HOST:PORT[,HOST:PORT...]` (or `tls://`) or `kafka://HOST:PORT[,HOST:PORT...]`"
            ),
        })
    }
}

/// The default Kafka topic name template: Knative's Kafka broker's own naming (here,
/// outside the `kafka` feature, so that flags can name it in any build).
pub const KAFKA_TOPIC_TEMPLATE: &str = "knative-broker-{namespace}-{name}";

/// The default Kafka checkpoint topic.
pub const KAFKA_CHECKPOINT_TOPIC: &str = "triggerfish-checkpoints";

/// A channel and its settings, as [`connect`] opens it.
#[derive(Debug, Clone)]
pub enum ChannelOptions {
    /// The embedded log in a local directory (one process at a time).
    Embedded {
        /// Its directory.
        data_dir: std::path::PathBuf,
        /// Its settings.
        options: embedded::EmbeddedOptions,
    },
    /// NATS JetStream, shared by any number of processes.
    #[cfg(feature = "nats")]
    Nats(nats::NatsOptions),
    /// Kafka, shared by any number of processes and other Kafka clients.
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaOptions),
}

impl ChannelOptions {
    /// The embedded log in `data_dir` with default settings.
    pub fn embedded(data_dir: impl Into<std::path::PathBuf>) -> ChannelOptions {
        ChannelOptions::Embedded {
            data_dir: data_dir.into(),
            options: embedded::EmbeddedOptions::default(),
        }
    }

    /// Whether more than one process can use the channel at once.
    pub fn shared(&self) -> bool {
        !matches!(self, ChannelOptions::Embedded { .. })
    }
}

/// Connects a channel: the one place a backend is chosen.
pub async fn connect(opts: &ChannelOptions) -> Result<Arc<dyn EventLog>, ChannelError> {
    match opts {
        ChannelOptions::Embedded { data_dir, options } => Ok(Arc::new(
            embedded::EmbeddedLog::open(data_dir, options.clone())?,
        )),
        #[cfg(feature = "nats")]
        ChannelOptions::Nats(o) => Ok(Arc::new(nats::NatsLog::connect(o.clone()).await?)),
        #[cfg(feature = "kafka")]
        ChannelOptions::Kafka(o) => Ok(Arc::new(kafka::KafkaLog::connect(o.clone()).await?)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod scheme_tests {
    use super::{ChannelError, Scheme};

    #[test]
    fn storage_values_name_their_channel_or_say_what_is_accepted() {
        assert_eq!(Scheme::of("embedded").unwrap(), Scheme::Embedded);
        #[cfg(feature = "nats")]
        assert_eq!(Scheme::of("nats://h:4222").unwrap(), Scheme::Nats);
        #[cfg(feature = "nats")]
        assert_eq!(Scheme::of("tls://h:4222").unwrap(), Scheme::Nats);
        #[cfg(feature = "kafka")]
        assert_eq!(Scheme::of("kafka://h:9092").unwrap(), Scheme::Kafka);
        #[cfg(not(feature = "nats"))]
        assert!(matches!(Scheme::of("nats://h:4222"),
            Err(ChannelError::Invalid { reason }) if reason.contains("cargo feature `nats`")));
        #[cfg(not(feature = "kafka"))]
        assert!(matches!(Scheme::of("kafka://h:9092"),
            Err(ChannelError::Invalid { reason }) if reason.contains("cargo feature `kafka`")));
        match Scheme::of("redis://h") {
            Err(ChannelError::Invalid { reason }) => {
                assert!(reason.contains("expected `embedded`"))
            }
            other => panic!("{other:?}"),
        }
    }
}
