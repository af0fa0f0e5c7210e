//! Command-line flags. Topology (brokers, triggers) lives in config files; runtime knobs
//! are flags, each also settable by a `TRIGGERFISH_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use broker::channel::embedded::FsyncPolicy;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Triggerfish: a CloudEvents broker and trigger router (the Knative Broker/Trigger
/// data plane).
#[derive(Debug, Parser)]
#[command(name = "triggerfish", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// `serve`, `ingress` and `dispatcher`: the server roles.
    #[command(flatten)]
    Serve(ServeCommand),
    /// Send one CloudEvent to a broker (like `kn event send`).
    Send(SendArgs),
    /// Print every CloudEvent posted to this address (a subscriber for trying triggers).
    Display {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
    },
    /// Inspect and redrive a broker's dead-letter log (through the admin API).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Work with config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Debug trigger filters and CloudEvents SQL expressions against events.
    Filter {
        #[command(subcommand)]
        command: FilterCommand,
    },
    /// Show every broker and trigger of a running server: Ready, address, lag,
    /// deliveries, the last delivery error (through the admin API).
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The admin API of the running server.
    #[arg(
        long,
        env = "TRIGGERFISH_ADMIN",
        default_value = "http://127.0.0.1:8081"
    )]
    pub admin: String,
    /// A file holding the admin API's bearer token (`serve --admin-token-file`).
    #[arg(long, env = "TRIGGERFISH_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// How this client proves itself to an admin API under mTLS.
    #[command(flatten)]
    pub identity: AdminIdentity,
    /// Only this broker, as NAMESPACE/NAME.
    #[arg(long)]
    pub broker: Option<String>,
    /// Output: an aligned table, or the API's JSON.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: StatusOutput,
}

/// A client certificate for the admin API (`serve --admin-tls-client-ca`).
#[derive(Debug, Args)]
pub struct AdminIdentity {
    /// PEM client certificate presented to the admin API (with --admin-client-key).
    #[arg(
        long,
        env = "TRIGGERFISH_ADMIN_CLIENT_CERT",
        requires = "admin_client_key"
    )]
    pub admin_client_cert: Option<PathBuf>,
    /// PEM private key of --admin-client-cert.
    #[arg(
        long,
        env = "TRIGGERFISH_ADMIN_CLIENT_KEY",
        requires = "admin_client_cert"
    )]
    pub admin_client_key: Option<PathBuf>,
}

impl AdminIdentity {
    /// The certificate and key files, when given.
    pub fn files(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        Some((
            self.admin_client_cert.as_deref()?,
            self.admin_client_key.as_deref()?,
        ))
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusOutput {
    /// Aligned columns.
    Table,
    /// `{"brokers": ..., "triggers": ...}` as the admin API answers.
    Json,
}

/// The server roles; all take the same flags (same config, same storage).
#[derive(Debug, Subcommand)]
pub enum ServeCommand {
    /// Run the ingress and the dispatcher in one process.
    Serve(Box<ServeArgs>),
    /// Run only the ingress (HTTP in, durable append; plus /healthz, /readyz,
    /// /metrics). Needs a shared channel: --storage nats://HOST:PORT.
    Ingress(Box<ServeArgs>),
    /// Run only the dispatcher (delivery to subscribers), serving /healthz, /readyz
    /// and /metrics on --listen. Replicas split each broker's partitions. Needs a
    /// shared channel: --storage nats://HOST:PORT.
    Dispatcher(Box<ServeArgs>),
}

/// Where brokers are stored: `embedded` or a NATS server list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageArg {
    /// The embedded log under `--data-dir`.
    Embedded,
    /// NATS JetStream at these servers (`nats://HOST:PORT[,HOST:PORT...]`).
    #[cfg(feature = "nats")]
    Nats(String),
    /// Kafka at these bootstrap servers (`kafka://HOST:PORT[,HOST:PORT...]`).
    #[cfg(feature = "kafka")]
    Kafka(String),
}

impl std::str::FromStr for StorageArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use broker::channel::Scheme;
        match Scheme::of(s).map_err(|e| e.to_string())? {
            Scheme::Embedded => Ok(StorageArg::Embedded),
            #[cfg(feature = "nats")]
            Scheme::Nats => {
                broker::channel::nats::NatsOptions::from_url(s).map_err(|e| e.to_string())?;
                Ok(StorageArg::Nats(s.to_owned()))
            }
            #[cfg(feature = "kafka")]
            Scheme::Kafka => {
                broker::channel::kafka::KafkaOptions::from_url(s).map_err(|e| e.to_string())?;
                Ok(StorageArg::Kafka(s.to_owned()))
            }
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum FilterCommand {
    /// Evaluate a CloudEvents SQL expression against an event and print
    /// {"value": ..., "errors": [{"kind": ..., "message": ...}]} as JSON.
    Eval(FilterEvalArgs),
    /// Say whether each trigger's filters match an event and, if not, which sub-filter
    /// failed and why.
    Test(FilterTestArgs),
}

#[derive(Debug, Args)]
pub struct FilterEvalArgs {
    /// The event in CloudEvents JSON structured format, or - for stdin. Default: a
    /// minimal valid event (specversion 1.0, id "1", source "/triggerfish/filter-eval",
    /// type "dev.triggerfish.filter.eval").
    #[arg(long, value_name = "FILE")]
    pub event: Option<PathBuf>,
    /// The CloudEvents SQL v1 expression.
    #[arg(allow_hyphen_values = true)]
    pub expression: String,
}

#[derive(Debug, Args)]
pub struct FilterTestArgs {
    /// A YAML file (or directory) with one or more Trigger documents; their brokers
    /// need not be defined.
    #[arg(long, value_name = "FILE")]
    pub trigger: PathBuf,
    /// The event in CloudEvents JSON structured format, or - for stdin.
    #[arg(long, value_name = "FILE")]
    pub event: PathBuf,
    #[command(flatten)]
    pub common: CommonConfig,
}

#[derive(Debug, Args)]
pub struct DlqTarget {
    /// The admin API of the running server.
    #[arg(
        long,
        env = "TRIGGERFISH_ADMIN",
        default_value = "http://127.0.0.1:8081"
    )]
    pub admin: String,
    /// A file holding the admin API's bearer token (`serve --admin-token-file`).
    #[arg(long, env = "TRIGGERFISH_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// How this client proves itself to an admin API under mTLS.
    #[command(flatten)]
    pub identity: AdminIdentity,
    /// The broker as NAMESPACE/NAME.
    #[arg(long, default_value = "default/default")]
    pub broker: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RedriveTo {
    /// The trigger's subscriber (with the trigger's retry policy).
    Subscriber,
    /// The broker again (every trigger sees the event).
    Broker,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List entries, oldest pending first, one page at a time.
    List {
        #[command(flatten)]
        target: DlqTarget,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start at this offset instead of the first pending entry (the `next` of the
        /// previous page).
        #[arg(long)]
        from: Option<u64>,
    },
    /// Print one entry as a structured CloudEvent.
    Show {
        #[command(flatten)]
        target: DlqTarget,
        /// The entry's offset (from `list`).
        offset: u64,
    },
    /// Re-send every pending entry; entries that fail again go back to the log.
    /// Shows progress on stderr and prints the final report (sent, failed again,
    /// skipped with the reason); Ctrl-C cancels the redrive.
    Redrive {
        #[command(flatten)]
        target: DlqTarget,
        /// Where to send them.
        #[arg(long, value_enum, default_value = "subscriber")]
        to: RedriveTo,
        /// Only entries of this trigger.
        #[arg(long)]
        trigger: Option<String>,
        /// Entries per batch; the redrive's cursor is stored after each (1 to 10000).
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Deliveries in flight at once (1 to 256).
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Start it and return; `dlq status` shows how it goes.
        #[arg(long)]
        background: bool,
    },
    /// The running or last redrive's status and report.
    Status {
        #[command(flatten)]
        target: DlqTarget,
    },
    /// Cancel the running redrive (its cursor stays past every entry already sent).
    Cancel {
        #[command(flatten)]
        target: DlqTarget,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config and print what was understood.
    Check(CheckArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Args)]
pub struct CommonConfig {
    /// Kubernetes cluster domain used to resolve Service references.
    #[arg(
        long,
        env = "TRIGGERFISH_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A YAML file or a directory of YAML files with Broker and Trigger documents.
    pub path: PathBuf,
    /// The sender flags `serve` would run with (same names and variables): the
    /// check prints whom each broker admits under them.
    #[command(flatten)]
    pub senders: crate::sender_args::SenderArgs,
    #[command(flatten)]
    pub common: CommonConfig,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A YAML file or a directory of YAML files with Broker and Trigger documents.
    #[arg(long, env = "TRIGGERFISH_CONFIG")]
    pub config: PathBuf,
    /// Address the ingress listens on (also serves /healthz, /readyz, /metrics).
    #[arg(long, env = "TRIGGERFISH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the admin API (dead-letter log inspection and redrive).
    #[arg(
        long,
        env = "TRIGGERFISH_ADMIN_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub admin_listen: SocketAddr,
    /// Do not serve the admin API.
    #[arg(long)]
    pub no_admin: bool,
    /// PEM certificate chain of the ingress listener (with --tls-key): HTTPS only,
    /// HTTP/1.1 and HTTP/2 by ALPN; re-read when the file changes.
    #[arg(long, env = "TRIGGERFISH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "TRIGGERFISH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: the ingress requires a client certificate issued by one
    /// of them (mTLS). Needs --tls-cert.
    #[arg(long, env = "TRIGGERFISH_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// The SPIFFE trust domain whose client certificates' IDs
    /// `spiffe://DOMAIN/ns/NS/sa/NAME` are the service account
    /// `system:serviceaccount:NS:NAME` in EventPolicies.
    #[arg(
        long,
        env = "TRIGGERFISH_TLS_CLIENT_TRUST_DOMAIN",
        default_value = "cluster.local"
    )]
    pub tls_client_trust_domain: String,
    /// PEM certificate chain of the admin listener (default: --tls-cert's).
    #[arg(long, env = "TRIGGERFISH_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    pub admin_tls_cert: Option<PathBuf>,
    /// PEM private key of --admin-tls-cert.
    #[arg(long, env = "TRIGGERFISH_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    pub admin_tls_key: Option<PathBuf>,
    /// PEM CA certificates: the admin listener requires a client certificate issued
    /// by one of them (mTLS), which then stands in for --admin-token-file off
    /// loopback. Needs --admin-tls-cert or --tls-cert.
    #[arg(long, env = "TRIGGERFISH_ADMIN_TLS_CLIENT_CA")]
    pub admin_tls_client_ca: Option<PathBuf>,
    /// A file holding a bearer token (a projected service-account token, say) sent
    /// as `Authorization: Bearer` with every delivery, dead-letter sink call and
    /// redrive; re-read when it changes.
    #[arg(long, env = "TRIGGERFISH_DELIVERY_TOKEN_FILE")]
    pub delivery_token_file: Option<PathBuf>,
    /// A PEM file of CA certificates that HTTPS deliveries, dead-letter sink calls
    /// and redrives trust besides the system's roots (a destination's `CACerts` add
    /// to them for that destination). Read at start.
    #[arg(long, env = "TRIGGERFISH_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
    /// Who may send: OIDC, the default authorization mode, rate limits.
    #[command(flatten)]
    pub senders: crate::sender_args::SenderArgs,
    /// A file holding the admin API's bearer token (at least 16 characters; re-read
    /// when it changes). Required when --admin-listen is not a loopback address.
    #[arg(long, env = "TRIGGERFISH_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// A name the admin API is reached at (its `Host`), besides IP addresses and
    /// `localhost`; `.suffix` admits every name under it. Repeatable.
    #[arg(
        long = "admin-allowed-host",
        env = "TRIGGERFISH_ADMIN_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub admin_allowed_hosts: Vec<String>,
    /// A browser origin (`https://ops.example.com`) allowed to call the admin API;
    /// none by default. Repeatable.
    #[arg(
        long = "admin-allowed-origin",
        env = "TRIGGERFISH_ADMIN_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub admin_allowed_origins: Vec<String>,
    /// Reload the config when its file or directory changes (also on SIGHUP and
    /// `POST /admin/v1/reload`, always): `true` or `false`.
    #[arg(long, env = "TRIGGERFISH_CONFIG_WATCH", default_value_t = true, action = clap::ArgAction::Set)]
    pub config_watch: bool,
    /// How long a trigger removed from the config keeps its checkpoint (and its
    /// hold on the embedded log's retention): re-added within it, it resumes where
    /// it stopped instead of skipping the events in between (ISO 8601).
    #[arg(
        long,
        env = "TRIGGERFISH_REMOVED_TRIGGER_GRACE",
        default_value = "PT1H"
    )]
    pub removed_trigger_grace: String,
    /// The base URL producers reach the ingress at, shown as each broker's address
    /// in status (default: http:// and --listen).
    #[arg(long, env = "TRIGGERFISH_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// `knativebrokerttl` given to events without one; each reply hop decrements it
    /// and a reply reaching 0 is dropped.
    #[arg(long, env = "TRIGGERFISH_MAX_TTL", default_value_t = 255, value_parser = clap::value_parser!(i32).range(1..))]
    pub max_ttl: i32,
    /// Where brokers are stored: `embedded` (the local log under --data-dir),
    /// NATS JetStream, `nats://HOST:PORT[,HOST:PORT...]` (`tls://` requires TLS), or
    /// Kafka, `kafka://HOST:PORT[,HOST:PORT...]`.
    #[arg(long, env = "TRIGGERFISH_STORAGE", default_value = "embedded")]
    pub storage: StorageArg,
    /// Directory of the embedded log.
    #[arg(long, env = "TRIGGERFISH_DATA_DIR", default_value = "triggerfish-data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// How long the ingress waits for the channel to confirm an append before it
    /// answers 503 (ISO 8601, e.g. PT10S).
    #[arg(long, env = "TRIGGERFISH_APPEND_TIMEOUT", default_value = "PT10S")]
    pub append_timeout: String,
    /// This dispatcher's name among replicas (partition leases); default host-pid.
    #[arg(long, env = "TRIGGERFISH_DISPATCHER_NAME")]
    pub dispatcher_name: Option<String>,
    /// Partitions of each new broker: default 1 on the embedded log (one process, one
    /// writer; more partitions only cost memory per trigger), 4 on NATS and 10 on Kafka
    /// (the unit dispatcher replicas split; Knative's Kafka broker default).
    #[arg(long, env = "TRIGGERFISH_PARTITIONS", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub partitions: Option<u32>,
    /// When appends are synced: always (group commit), interval:<duration>, or never.
    #[arg(long, env = "TRIGGERFISH_FSYNC", default_value = "always")]
    pub fsync: FsyncPolicy,
    /// Delete log segments whose newest event is older than this (ISO 8601, e.g.
    /// P7D; 0 for no age limit), once every trigger has received them.
    #[arg(long, env = "TRIGGERFISH_RETENTION_AGE", default_value = "P7D")]
    pub retention_age: String,
    /// Delete the oldest log segments while a partition is larger than this many bytes
    /// (0 for no limit), once every trigger has received them. A partition at the
    /// limit whose oldest segment a trigger has not received refuses new events with
    /// 503 and Retry-After until it has (it may exceed the limit by one segment).
    #[arg(long, env = "TRIGGERFISH_RETENTION_BYTES", default_value_t = 4 << 30)]
    pub retention_bytes: u64,
    /// Delete by --retention-age and --retention-bytes even events a trigger has not
    /// received (Kafka-like: producers never wait, slow triggers lose events). Every
    /// event skipped is logged at ERROR and counted in
    /// triggerfish_dispatcher_events_skipped_total.
    #[arg(long, env = "TRIGGERFISH_RETENTION_DELETE_UNDELIVERED")]
    pub retention_delete_undelivered: bool,
    /// Largest request body the ingress accepts, in bytes.
    #[arg(long, env = "TRIGGERFISH_MAX_BODY_BYTES", default_value_t = ingress::DEFAULT_MAX_BODY)]
    pub max_body_bytes: usize,
    /// Most context attributes an event may carry, `knativearrivaltime` included
    /// (more: 431 in binary mode, 413 otherwise). The default keeps a binary-mode
    /// delivery, dead-letter extensions included, under the 100 header fields that
    /// hyper and Apache accept.
    #[arg(long, env = "TRIGGERFISH_MAX_ATTRIBUTES", default_value_t = broker::event::limits::DEFAULT_MAX_ATTRIBUTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(5..=200))]
    pub max_attributes: usize,
    /// Longest attribute name, in bytes (at most 255: the stored record's limit).
    #[arg(long, env = "TRIGGERFISH_MAX_ATTRIBUTE_NAME_BYTES", default_value_t = broker::event::limits::DEFAULT_MAX_NAME_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(20..=broker::event::codec::MAX_NAME_BYTES as u64))]
    pub max_attribute_name_bytes: usize,
    /// Most bytes of attributes per event: names plus values as binary-mode headers
    /// carry them (percent-encoded). The default fits nginx's 8 KiB header lines and
    /// Node.js's 16 KiB header block.
    #[arg(long, env = "TRIGGERFISH_MAX_ATTRIBUTE_BYTES", default_value_t = broker::event::limits::DEFAULT_MAX_ATTRIBUTE_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(256..=(1 << 20)))]
    pub max_attribute_bytes: usize,
    /// How long shutdown waits for deliveries in flight (seconds).
    #[arg(long, env = "TRIGGERFISH_DRAIN_SECONDS", default_value_t = 30)]
    pub drain_seconds: u64,
    /// Bytes of events the process may hold in memory: requests being read and
    /// stored, events queued or in flight to subscribers, replies being read. At the
    /// limit the ingress answers 503 with Retry-After and lanes wait; each trigger
    /// gets a fair share. Size it to the container's memory minus about 64 MiB.
    #[arg(long, env = "TRIGGERFISH_MEMORY_BUDGET", default_value_t = broker::budget::DEFAULT_MEMORY_BUDGET, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range((4 << 20)..))]
    pub memory_budget: usize,
    /// Most connections open on the ingress (and on the admin) listener; past it a
    /// connection is answered 503 and closed.
    #[arg(long, env = "TRIGGERFISH_MAX_CONNECTIONS", default_value_t = ingress::server::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// Longest time from the first byte of a request head to its end (ISO 8601).
    #[arg(long, env = "TRIGGERFISH_HEADER_READ_TIMEOUT", default_value = "PT10S")]
    pub header_read_timeout: String,
    /// How long a keep-alive connection may sit with no request (ISO 8601).
    #[arg(long, env = "TRIGGERFISH_IDLE_TIMEOUT", default_value = "PT60S")]
    pub idle_timeout: String,
    /// How long a request body may take on top of its size at --min-body-rate
    /// (ISO 8601); slower: 408 and the connection is closed.
    #[arg(long, env = "TRIGGERFISH_BODY_READ_TIMEOUT", default_value = "PT10S")]
    pub body_read_timeout: String,
    /// The slowest rate a request body may arrive at, in bytes per second.
    #[arg(long, env = "TRIGGERFISH_MIN_BODY_RATE", default_value_t = ingress::DEFAULT_MIN_BODY_RATE, value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..))]
    pub min_body_rate: u64,
    /// How much of a refused body (413, or 503 for the memory budget) is read and
    /// discarded so that the client reads the answer rather than a reset.
    #[arg(long, env = "TRIGGERFISH_MAX_DISCARD_BYTES", default_value_t = ingress::DEFAULT_MAX_DISCARD)]
    pub max_discard_bytes: u64,
    /// Most concurrent HTTP/2 streams per connection.
    #[arg(long, env = "TRIGGERFISH_HTTP2_MAX_STREAMS", default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<u32>::new().range(1..))]
    pub http2_max_streams: u32,
    /// Most HTTP/2 streams a client may reset before they were accepted (rapid
    /// reset) before its connection is closed.
    #[arg(
        long,
        env = "TRIGGERFISH_HTTP2_MAX_PENDING_RESETS",
        default_value_t = 20
    )]
    pub http2_max_pending_resets: usize,
    /// Most HTTP/2 streams the server resets for a client's errors before its
    /// connection is closed.
    #[arg(
        long,
        env = "TRIGGERFISH_HTTP2_MAX_LOCAL_RESETS",
        default_value_t = 256
    )]
    pub http2_max_local_resets: usize,
    /// On shutdown, how long /readyz answers 503 while the ingress still accepts,
    /// so that load balancers stop sending first (ISO 8601).
    #[arg(long, env = "TRIGGERFISH_SHUTDOWN_DELAY", default_value = "PT2S")]
    pub shutdown_delay: String,
    /// On shutdown, how long requests in flight may take once the listener stopped
    /// accepting (ISO 8601); then their connections are closed.
    #[arg(long, env = "TRIGGERFISH_SHUTDOWN_TIMEOUT", default_value = "PT15S")]
    pub shutdown_timeout: String,
    /// Log format.
    #[arg(
        long,
        env = "TRIGGERFISH_LOG_FORMAT",
        value_enum,
        default_value = "human"
    )]
    pub log_format: LogFormat,
    /// Log filter (RUST_LOG syntax; RUST_LOG itself wins when set).
    #[arg(long, env = "TRIGGERFISH_LOG", default_value = "info")]
    pub log: String,
    #[command(flatten)]
    pub common: CommonConfig,
}

/// NATS JetStream settings (used with `--storage nats://...`).
#[derive(Debug, Args)]
pub struct NatsArgs {
    /// NATS credentials file (JWT and NKey seed, as `nsc` writes them).
    #[arg(long, env = "TRIGGERFISH_NATS_CREDS", value_name = "FILE", conflicts_with_all = ["nats_token", "nats_user"])]
    pub nats_creds: Option<PathBuf>,
    /// NATS token.
    #[arg(
        long,
        env = "TRIGGERFISH_NATS_TOKEN",
        hide_env_values = true,
        conflicts_with = "nats_user"
    )]
    pub nats_token: Option<String>,
    /// NATS user (with --nats-password).
    #[arg(long, env = "TRIGGERFISH_NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// NATS password.
    #[arg(
        long,
        env = "TRIGGERFISH_NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<String>,
    /// Require TLS (also implied by a tls:// URL).
    #[arg(long, env = "TRIGGERFISH_NATS_TLS")]
    pub nats_tls: bool,
    /// PEM file of root certificates to trust for the NATS servers.
    #[arg(long, env = "TRIGGERFISH_NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients (with --nats-tls-key).
    #[arg(
        long,
        env = "TRIGGERFISH_NATS_TLS_CERT",
        value_name = "FILE",
        requires = "nats_tls_key"
    )]
    pub nats_tls_cert: Option<PathBuf>,
    /// PEM key of the client certificate.
    #[arg(
        long,
        env = "TRIGGERFISH_NATS_TLS_KEY",
        value_name = "FILE",
        requires = "nats_tls_cert"
    )]
    pub nats_tls_key: Option<PathBuf>,
    /// Copies of each stream in a NATS cluster (1 to 5).
    #[arg(long, env = "TRIGGERFISH_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,
    /// Events older than this are removed from a broker's stream (ISO 8601; PT0S: never).
    #[arg(long, env = "TRIGGERFISH_NATS_MAX_AGE", default_value = "P7D")]
    pub nats_max_age: String,
    /// The oldest events are removed while a broker's stream is larger (0: no limit).
    #[arg(long, env = "TRIGGERFISH_NATS_MAX_BYTES", default_value_t = 4 << 30)]
    pub nats_max_bytes: u64,
    /// Largest stored event (headers and data) in bytes; a larger one gets 413.
    #[arg(long, env = "TRIGGERFISH_NATS_MAX_MSG_SIZE", default_value_t = 1 << 20)]
    pub nats_max_msg_size: u32,
    /// First part of every stream, subject and bucket name (several installations
    /// can share one NATS account); [a-z0-9-], up to 32.
    #[arg(long, env = "TRIGGERFISH_NATS_PREFIX", default_value = "triggerfish")]
    pub nats_prefix: String,
    /// Bound on each NATS request and on one append (ISO 8601).
    #[arg(long, env = "TRIGGERFISH_NATS_REQUEST_TIMEOUT", default_value = "PT5S")]
    pub nats_request_timeout: String,
    /// How long a dispatcher's partition lease lasts unrenewed (ISO 8601; renewed every
    /// third of it): a dead dispatcher's partitions move after this long. Use the same
    /// value in every process.
    #[arg(long, env = "TRIGGERFISH_NATS_LEASE_TTL", default_value = "PT9S")]
    pub nats_lease_ttl: String,
}

/// Kafka settings (used with `--storage kafka://...`).
#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// A librdkafka client setting KEY=VALUE for every Kafka client (SASL, TLS,
    /// tuning), e.g. security.protocol=SASL_SSL (repeatable; applied after
    /// --kafka-config, a later one wins).
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,
    /// A file of librdkafka settings, one KEY=VALUE per line (`#` comments), as in a
    /// Java client's client.properties. Keeps secrets off the command line.
    #[arg(long, env = "TRIGGERFISH_KAFKA_CONFIG", value_name = "FILE")]
    pub kafka_config: Option<PathBuf>,
    /// Name of each broker's topic; {namespace} and {name} are replaced.
    #[arg(
        long,
        env = "TRIGGERFISH_KAFKA_TOPIC_TEMPLATE",
        default_value = broker::channel::KAFKA_TOPIC_TEMPLATE
    )]
    pub kafka_topic_template: String,
    /// The compacted topic that holds every trigger's checkpoints (shared by all
    /// brokers; use one per installation).
    #[arg(
        long,
        env = "TRIGGERFISH_KAFKA_CHECKPOINT_TOPIC",
        default_value = broker::channel::KAFKA_CHECKPOINT_TOPIC
    )]
    pub kafka_checkpoint_topic: String,
    /// Replication factor of the topics Triggerfish creates (-1: the cluster default).
    #[arg(long, env = "TRIGGERFISH_KAFKA_REPLICATION_FACTOR", default_value_t = -1, allow_negative_numbers = true)]
    pub kafka_replication_factor: i32,
    /// How long an append may wait for Kafka's acknowledgement before the ingress
    /// answers 503, and the bound of every other request (ISO 8601).
    #[arg(
        long,
        env = "TRIGGERFISH_KAFKA_REQUEST_TIMEOUT",
        default_value = "PT10S"
    )]
    pub kafka_request_timeout: String,
    /// Session timeout of the dispatchers' consumer group: a dead dispatcher's
    /// partitions move after this long (ISO 8601; within the cluster's
    /// group.min/max.session.timeout.ms).
    #[arg(
        long,
        env = "TRIGGERFISH_KAFKA_SESSION_TIMEOUT",
        default_value = "PT10S"
    )]
    pub kafka_session_timeout: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    Binary,
    Structured,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// The broker URL, e.g. http://127.0.0.1:8080/default/default.
    #[arg(long, env = "TRIGGERFISH_SEND_TO")]
    pub to: String,
    /// Event id (default: a random one).
    #[arg(long)]
    pub id: Option<String>,
    /// Event source.
    #[arg(long, default_value = "triggerfish-cli")]
    pub source: String,
    /// Event type.
    #[arg(long = "type")]
    pub ty: String,
    /// Event subject.
    #[arg(long)]
    pub subject: Option<String>,
    /// Event time (RFC 3339; default: now).
    #[arg(long)]
    pub time: Option<String>,
    /// Data schema URI.
    #[arg(long)]
    pub dataschema: Option<String>,
    /// Extension attribute NAME=VALUE (repeatable).
    #[arg(long = "extension", short = 'e', value_name = "NAME=VALUE")]
    pub extensions: Vec<String>,
    /// Event data: a string, or @FILE to read a file, or @- for stdin.
    #[arg(long)]
    pub data: Option<String>,
    /// Content type of the data (default application/json when data is given).
    #[arg(long)]
    pub content_type: Option<String>,
    /// Content mode.
    #[arg(long, value_enum, default_value = "binary")]
    pub mode: Mode,
}
