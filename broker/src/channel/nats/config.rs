//! Settings of the NATS JetStream channel, validated once.
//!
//! The server list comes from a storage URL, `nats://HOST:PORT[,HOST:PORT...]`
//! (`tls://` instead of `nats://` requires TLS; a later entry may omit the scheme, and
//! the port defaults to 4222). Credentials never go in the URL, which ends up in logs
//! and `describe()`: they are separate options ([`NatsAuth`]). Everything else has a
//! default that works against a single local `nats-server -js`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Why NATS settings are invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The storage URL is malformed.
    #[error("invalid NATS URL '{url}': {reason}")]
    Url {
        /// The offending entry.
        url: String,
        /// Why.
        reason: String,
    },
    /// An option is out of range.
    #[error("invalid NATS option {option}: {reason}")]
    Option {
        /// The option.
        option: &'static str,
        /// Why.
        reason: String,
    },
}

/// How Triggerfish authenticates to NATS.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// A `.creds` file (JWT + NKey seed), as `nsc` writes them.
    CredentialsFile(PathBuf),
    /// A token.
    Token(String),
    /// User and password.
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
}

impl fmt::Debug for NatsAuth {
    // Secrets never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::CredentialsFile(p) => write!(f, "CredentialsFile({})", p.display()),
            NatsAuth::Token(_) => f.write_str("Token(<redacted>)"),
            NatsAuth::UserPassword { user, .. } => write!(f, "UserPassword({user}, <redacted>)"),
        }
    }
}

/// TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// Refuse to connect without TLS (also set by a `tls://` URL).
    pub require: bool,
    /// PEM file of extra root certificates (a private CA).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for servers that verify clients.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// Limits of every broker stream, applied when a stream is created and updated to
/// these values each time a broker is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamLimits {
    /// Copies of each stream in a cluster (1 to 5; 1 on a single server).
    pub replicas: usize,
    /// Events older than this are removed (`None`: kept by age forever).
    pub max_age: Option<Duration>,
    /// The oldest events are removed while a stream is larger (`None`: no limit).
    /// Dead-letter streams ignore it: dead letters wait for an operator.
    pub max_bytes: Option<u64>,
    /// Largest stored message (headers + data); a larger event is refused with
    /// `ChannelError::TooLarge` (HTTP 413). Also capped by the server's `max_payload`.
    pub max_message_bytes: u32,
    /// JetStream de-duplicates appends with the same `source` + `id` within this window.
    pub duplicate_window: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            replicas: 1,
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_bytes: Some(4 << 30),
            max_message_bytes: 1 << 20,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// Everything the NATS channel needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsOptions {
    /// Servers, normalised to `nats://host:port` (or `tls://`).
    pub servers: Vec<String>,
    /// Credentials.
    pub auth: NatsAuth,
    /// TLS.
    pub tls: NatsTls,
    /// Stream limits.
    pub limits: StreamLimits,
    /// Partitions of a new broker stream (an existing stream keeps its count).
    pub partitions: u32,
    /// First token of every subject and first part of every stream and bucket name,
    /// so that several installations (or test runs) can share one NATS account.
    /// `[a-z0-9-]`, 1 to 32 characters.
    pub prefix: String,
    /// Bound on one append (publish until every PubAck) and on each JetStream API
    /// request; past it the append fails with `Unavailable` (HTTP 503).
    pub request_timeout: Duration,
    /// Bound on establishing the first connection.
    pub connect_timeout: Duration,
    /// How long a dispatcher's partition lease lasts without renewal (renewed every
    /// third of it): after a dispatcher dies, its partitions wait this long for
    /// another. Every process of an installation should use the same value.
    pub lease_ttl: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            servers: vec!["nats://127.0.0.1:4222".into()],
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            limits: StreamLimits::default(),
            partitions: 4,
            prefix: "triggerfish".into(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(9),
        }
    }
}

impl NatsOptions {
    /// Options with the servers of a storage URL and defaults otherwise.
    pub fn from_url(url: &str) -> Result<NatsOptions, ConfigError> {
        let (servers, tls) = parse_servers(url)?;
        let mut opts = NatsOptions {
            servers,
            ..NatsOptions::default()
        };
        opts.tls.require |= tls;
        Ok(opts)
    }

    /// Checks the invariants the channel relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |option, reason: &str| {
            Err(ConfigError::Option {
                option,
                reason: reason.to_owned(),
            })
        };
        if self.servers.is_empty() {
            return bad("servers", "at least one server is needed");
        }
        if self.partitions == 0 || self.partitions > 1024 {
            return bad("partitions", "must be 1 to 1024");
        }
        if !(1..=5).contains(&self.limits.replicas) {
            return bad("replicas", "must be 1 to 5");
        }
        if self.limits.max_message_bytes < 1024 || self.limits.max_message_bytes > i32::MAX as u32 {
            return bad("max message size", "must be 1 KiB to 2 GiB");
        }
        if self.limits.max_bytes == Some(0) {
            return bad("max bytes", "must be positive (or no limit)");
        }
        if self.limits.max_age == Some(Duration::ZERO) {
            return bad("max age", "must be positive (or no limit)");
        }
        if self.limits.duplicate_window.is_zero() {
            return bad("duplicate window", "must be positive");
        }
        if let Some(age) = self.limits.max_age {
            if self.limits.duplicate_window > age {
                return bad("duplicate window", "must not exceed the max age");
            }
        }
        if self.prefix.is_empty()
            || self.prefix.len() > 32
            || !self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("prefix", "must be 1 to 32 of [a-z0-9-]");
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad("timeout", "must be positive");
        }
        if self.lease_ttl < Duration::from_secs(1) || self.lease_ttl > Duration::from_secs(600) {
            return bad("lease TTL", "must be 1 s to 10 min");
        }
        if let NatsAuth::UserPassword { user, .. } = &self.auth {
            if user.is_empty() {
                return bad("user", "must not be empty");
            }
        }
        if let NatsAuth::Token(t) = &self.auth {
            if t.is_empty() {
                return bad("token", "must not be empty");
            }
        }
        Ok(())
    }
}

/// Parses `nats://HOST:PORT[,HOST:PORT...]` into normalised server URLs; the flag is
/// true when the scheme is `tls://`.
pub fn parse_servers(url: &str) -> Result<(Vec<String>, bool), ConfigError> {
    let err = |entry: &str, reason: &str| ConfigError::Url {
        url: entry.to_owned(),
        reason: reason.to_owned(),
    };
    let mut servers = Vec::new();
    let mut scheme: Option<&str> = None;
    for entry in url.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(err(url, "empty server entry"));
        }
        let (this_scheme, rest) = match entry.split_once("://") {
            Some((s, rest)) => (s, rest),
            None => match scheme {
                Some(s) => (s, entry),
                None => return Err(err(entry, "expected nats://HOST:PORT or tls://HOST:PORT")),
            },
        };
        if this_scheme != "nats" && this_scheme != "tls" {
            return Err(err(entry, "the scheme must be nats:// or tls://"));
        }
        if scheme.is_some_and(|s| s != this_scheme) {
            return Err(err(entry, "all servers must use the same scheme"));
        }
        scheme = Some(this_scheme);
        if rest.contains('@') {
            return Err(err(
                entry,
                "credentials do not belong in the URL (it is logged): use the user/password, token or credentials-file options",
            ));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(err(entry, "only HOST:PORT may follow the scheme"));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| err(entry, "expected HOST:PORT"))?;
        if host.is_empty() {
            return Err(err(entry, "the host is empty"));
        }
        let port: u16 = match port {
            None => 4222,
            Some(p) => p
                .parse()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| err(entry, "the port must be 1 to 65535"))?,
        };
        servers.push(format!("{this_scheme}://{host}:{port}"));
    }
    Ok((servers, scheme == Some("tls")))
}

/// Splits `host[:port]`, with `[v6]:port` for IPv6.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((s.get(..host.len() + 2)?, None)),
            _ => Some((s.get(..host.len() + 2)?, Some(after.strip_prefix(':')?))),
        };
    }
    match s.split_once(':') {
        Some((h, p)) if !p.contains(':') => Some((h, Some(p))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists_parse() {
        assert_eq!(
            parse_servers("nats://a:4222,b:4223, nats://c"),
            Ok((
                vec![
                    "nats://a:4222".to_owned(),
                    "nats://b:4223".to_owned(),
                    "nats://c:4222".to_owned()
                ],
                false
            ))
        );
        assert_eq!(
            parse_servers("tls://[::1]:4443"),
            Ok((vec!["tls://[::1]:4443".to_owned()], true))
        );
        for bad in [
            "",
            "a:4222",
            "http://a:4222",
            "nats://user:pw@a:4222",
            "nats://a:0",
            "nats://a:99999",
            "nats://a:4222,,b:1",
            "nats://a:4222,tls://b:1",
            "nats://:4222",
            "nats://a:4222/path",
            "nats://a:b:c",
        ] {
            assert!(parse_servers(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn options_validate() {
        let ok = NatsOptions::from_url("tls://n1:4222").expect("valid");
        assert!(ok.tls.require);
        assert_eq!(ok.validate(), Ok(()));
        let mut o = ok.clone();
        o.partitions = 0;
        assert!(o.validate().is_err());
        let mut o = ok.clone();
        o.prefix = "Bad_Prefix".into();
        assert!(o.validate().is_err());
        let mut o = ok.clone();
        o.limits.replicas = 7;
        assert!(o.validate().is_err());
        let mut o = ok;
        o.limits.max_age = Some(Duration::from_secs(10));
        assert!(
            o.validate().is_err(),
            "duplicate window longer than max age"
        );
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let a = NatsAuth::UserPassword {
            user: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{a:?}").contains("hunter2"));
        assert!(!format!("{:?}", NatsAuth::Token("s3cret".into())).contains("s3cret"));
    }
}
