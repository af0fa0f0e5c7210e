//! Settings of the Kafka channel, validated once.
//!
//! The bootstrap servers come from a storage URL, `kafka://HOST:PORT[,HOST:PORT...]`
//! (the port defaults to 9092). Everything librdkafka understands can be passed through
//! as `key=value` client options (SASL, TLS, tuning), applied to every client Triggerfish
//! creates; the few settings the delivery contract depends on cannot be overridden
//! ([`ENFORCED_PRODUCER`]).

use std::time::Duration;

/// Why Kafka settings are invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The storage URL is malformed.
    #[error("invalid Kafka URL '{url}': {reason}")]
    Url {
        /// The offending URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// An option is out of range or malformed.
    #[error("invalid Kafka option {option}: {reason}")]
    Option {
        /// The option.
        option: String,
        /// Why.
        reason: String,
    },
}

/// Producer settings that make "202 means stored" true; client options cannot change
/// them.
pub const ENFORCED_PRODUCER: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];

pub use crate::channel::{
    KAFKA_CHECKPOINT_TOPIC as DEFAULT_CHECKPOINT_TOPIC,
    KAFKA_TOPIC_TEMPLATE as DEFAULT_TOPIC_TEMPLATE,
};

/// Longest topic name Kafka accepts.
pub const MAX_TOPIC_NAME: usize = 249;

/// Kafka channel settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaOptions {
    /// `host:port` of the bootstrap servers.
    pub bootstrap: Vec<String>,
    /// librdkafka settings passed to every client, in order (a later one wins).
    pub client_options: Vec<(String, String)>,
    /// Events topic name, with `{namespace}` and `{name}` replaced.
    pub topic_template: String,
    /// The compacted topic holding every trigger's checkpoints.
    pub checkpoint_topic: String,
    /// Partitions of topics created by Triggerfish (existing topics keep theirs).
    pub partitions: u32,
    /// Replication factor of created topics; -1 for the cluster default.
    pub replication_factor: i32,
    /// How long an append may wait for its delivery reports (then HTTP 503), and the
    /// bound of every other request.
    pub request_timeout: Duration,
    /// Session timeout of the dispatchers' partition group: how long a dead
    /// dispatcher's partitions wait before another takes them.
    pub lease_ttl: Duration,
}

impl KafkaOptions {
    /// Options for `kafka://HOST:PORT[,HOST:PORT...]`, with defaults for the rest.
    pub fn from_url(url: &str) -> Result<KafkaOptions, ConfigError> {
        let err = |reason: &str| ConfigError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| err("expected kafka://HOST:PORT[,HOST:PORT...]"))?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() {
            return Err(err("no server given"));
        }
        let mut bootstrap = Vec::new();
        for entry in rest.split(',') {
            let entry = entry.trim();
            let entry = entry.strip_prefix("kafka://").unwrap_or(entry);
            if entry.is_empty() {
                return Err(err("empty server entry"));
            }
            if entry.contains('@') || entry.contains('/') || entry.contains('?') {
                return Err(err(
                    "only HOST:PORT entries are accepted; credentials and settings go in --kafka-option",
                ));
            }
            let (host, port) = match entry.rsplit_once(':') {
                // `[::1]:9092` or `host:9092`; a bare IPv6 address needs brackets.
                Some((h, p)) if !h.is_empty() && !p.contains(']') => {
                    let port: u16 = p
                        .parse()
                        .map_err(|_| err(&format!("'{p}' is not a port number")))?;
                    (h, port)
                }
                _ => (entry, 9092),
            };
            if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
                return Err(err("IPv6 addresses need brackets: [::1]:9092"));
            }
            bootstrap.push(format!("{host}:{port}"));
        }
        Ok(KafkaOptions {
            bootstrap,
            client_options: Vec::new(),
            topic_template: DEFAULT_TOPIC_TEMPLATE.to_owned(),
            checkpoint_topic: DEFAULT_CHECKPOINT_TOPIC.to_owned(),
            partitions: 10,
            replication_factor: -1,
            request_timeout: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(10),
        })
    }

    /// Adds a `key=value` client option.
    pub fn add_option(&mut self, kv: &str) -> Result<(), ConfigError> {
        let (k, v) = kv.split_once('=').ok_or_else(|| ConfigError::Option {
            option: kv.to_owned(),
            reason: "expected key=value".to_owned(),
        })?;
        let k = k.trim();
        if k.is_empty() {
            return Err(ConfigError::Option {
                option: kv.to_owned(),
                reason: "empty key".to_owned(),
            });
        }
        if let Some((_, wanted)) = ENFORCED_PRODUCER.iter().find(|(e, _)| *e == k) {
            if !v.trim().eq_ignore_ascii_case(wanted) {
                return Err(ConfigError::Option {
                    option: k.to_owned(),
                    reason: format!(
                        "Triggerfish requires {k}={wanted} (202 means the event is stored once)"
                    ),
                });
            }
        }
        if k == "bootstrap.servers" || k == "metadata.broker.list" {
            return Err(ConfigError::Option {
                option: k.to_owned(),
                reason: "the servers come from --storage kafka://HOST:PORT[,...]".to_owned(),
            });
        }
        self.client_options.push((k.to_owned(), v.to_owned()));
        Ok(())
    }

    /// Checks ranges and the topic template.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let opt = |option: &str, reason: &str| ConfigError::Option {
            option: option.to_owned(),
            reason: reason.to_owned(),
        };
        if self.bootstrap.is_empty() {
            return Err(opt("bootstrap servers", "none given"));
        }
        if self.partitions == 0 || self.partitions > 10_000 {
            return Err(opt("partitions", "must be 1 to 10000"));
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            return Err(opt(
                "replication factor",
                "must be -1 (cluster default) or ≥ 1",
            ));
        }
        if self.request_timeout < Duration::from_millis(100) {
            return Err(opt("request timeout", "must be at least 100ms"));
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(opt("lease TTL", "must be at least 1s"));
        }
        if !self.topic_template.contains("{namespace}") || !self.topic_template.contains("{name}") {
            return Err(opt(
                "topic template",
                "must contain {namespace} and {name}, so that every broker has its own topic",
            ));
        }
        let sample = self
            .topic_template
            .replace("{namespace}", "ns")
            .replace("{name}", "broker");
        check_topic_name(&sample).map_err(|r| opt("topic template", &r))?;
        check_topic_name(&self.checkpoint_topic).map_err(|r| opt("checkpoint topic", &r))?;
        Ok(())
    }

    /// The bootstrap list as librdkafka takes it.
    pub fn bootstrap_servers(&self) -> String {
        self.bootstrap.join(",")
    }
}

/// Checks a topic name against Kafka's rules: 1 to 249 characters of `[a-zA-Z0-9._-]`,
/// not `.` or `..`.
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("'{name}' is not a valid Kafka topic name"));
    }
    if name.len() > MAX_TOPIC_NAME {
        return Err(format!(
            "topic name '{name}' is longer than {MAX_TOPIC_NAME} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name '{name}' contains '{c}' (Kafka allows letters, digits, '.', '_' and '-')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let o = KafkaOptions::from_url("kafka://a:9093,b,[::1]:19092").expect("valid");
        assert_eq!(o.bootstrap, ["a:9093", "b:9092", "[::1]:19092"]);
        assert!(o.validate().is_ok());
        for bad in [
            "kafka://",
            "nats://a:1",
            "kafka://user:pw@a:1",
            "kafka://a:x",
            "kafka://a,,b",
            "kafka://::1",
            "kafka://a:1?acks=1",
        ] {
            assert!(KafkaOptions::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options() {
        let mut o = KafkaOptions::from_url("kafka://a:1").expect("valid");
        o.add_option("security.protocol=SASL_SSL").expect("ok");
        o.add_option("sasl.password=a=b").expect("ok");
        o.add_option("acks=all").expect("same as enforced");
        assert_eq!(o.client_options[1], ("sasl.password".into(), "a=b".into()));
        assert!(o.add_option("acks=1").is_err());
        assert!(o.add_option("enable.idempotence=false").is_err());
        assert!(o.add_option("bootstrap.servers=x:1").is_err());
        assert!(o.add_option("novalue").is_err());
        assert!(o.add_option("=v").is_err());
    }

    #[test]
    fn templates_and_ranges() {
        let mut o = KafkaOptions::from_url("kafka://a:1").expect("valid");
        o.topic_template = "events-{name}".into();
        assert!(o.validate().is_err(), "namespace missing");
        o.topic_template = "ev/{namespace}-{name}".into();
        assert!(o.validate().is_err(), "invalid character");
        o.topic_template = "t.{namespace}.{name}".into();
        assert!(o.validate().is_ok());
        o.partitions = 0;
        assert!(o.validate().is_err());
        o.partitions = 3;
        o.replication_factor = 0;
        assert!(o.validate().is_err());
        assert!(check_topic_name(&"a".repeat(250)).is_err());
        assert!(check_topic_name("..").is_err());
        assert!(check_topic_name("knative-broker-ns-b.c_d").is_ok());
    }
}
