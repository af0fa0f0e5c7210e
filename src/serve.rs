//! `triggerfish serve`, `ingress`, `dispatcher` and `config check`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use broker::channel::embedded::EmbeddedOptions;
#[cfg(feature = "kafka")]
use broker::channel::kafka::KafkaOptions;
#[cfg(feature = "nats")]
use broker::channel::nats::{NatsAuth, NatsOptions};
use broker::config::{self, Config, LoadOptions};
use broker::telemetry;
use tokio_util::sync::CancellationToken;
use triggerfish::app::{self, Role, ServerOptions, Storage};

#[cfg(any(feature = "nats", feature = "kafka"))]
use crate::cli::ServeArgs;
use crate::cli::{CheckArgs, LogFormat, ServeCommand, StorageArg};

fn load(path: &std::path::Path, cluster_domain: &str) -> anyhow::Result<Config> {
    let opts = LoadOptions {
        cluster_domain: cluster_domain.to_owned(),
    };
    Ok(config::load(path, &opts)?)
}

/// `config check`: validate and print what was understood.
pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let config = match load(&args.path, &args.common.cluster_domain) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    for n in &config.notices {
        println!("notice: {n}");
    }
    let auth = args.senders.auth()?;
    let oidc = !(args.senders.oidc_issuers.is_empty() && args.senders.oidc_jwks.is_empty());
    let mode = auth
        .default_mode
        .unwrap_or(ingress::auth::AuthorizationMode::default_for(oidc));
    for b in &config.brokers {
        println!("broker {}", b.id);
        println!("  delivery: {}", describe_delivery(&b.delivery));
        for line in describe_senders(b, mode, oidc, &auth) {
            println!("  {line}");
        }
        for t in &b.triggers {
            println!("  trigger {}", t.name);
            println!("    filter:     {}", t.filter.describe());
            match &t.subscriber_ca_certs {
                Some(ca) => println!(
                    "    subscriber: {} (trusting {} CA certificate(s) of its CACerts)",
                    t.subscriber,
                    ca.certificates().len()
                ),
                None => println!("    subscriber: {}", t.subscriber),
            }
            println!("    delivery:   {}", describe_delivery(&t.delivery));
            println!(
                "    order:      {:?}, up to {} in flight per partition",
                t.order, t.concurrency
            );
        }
    }
    let triggers: usize = config.brokers.iter().map(|b| b.triggers.len()).sum();
    println!(
        "ok: {} broker(s), {triggers} trigger(s)",
        config.brokers.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Whom a broker admits, as `config check` prints it.
fn describe_senders(
    b: &config::BrokerConfig,
    mode: ingress::auth::AuthorizationMode,
    oidc: bool,
    auth: &ingress::auth::AuthOptions,
) -> Vec<String> {
    use ingress::auth::AuthorizationMode as M;
    let mut lines = Vec::new();
    let how = if oidc {
        "a bearer token for audience"
    } else {
        "(no OIDC: only mTLS client certificates identify senders) audience"
    };
    lines.push(format!("senders: {how} {}", ingress::auth::audience(&b.id)));
    if b.policies.is_empty() {
        lines.push(format!(
            "  no EventPolicy; default mode {mode}: {}",
            match mode {
                M::AllowAll if oidc => "every authenticated sender".to_owned(),
                M::AllowAll => "everyone".to_owned(),
                M::DenyAll => "nobody".to_owned(),
                M::AllowSameNamespace => format!("system:serviceaccount:{}:*", b.id.namespace),
            }
        ));
    }
    for p in &b.policies {
        let from: Vec<String> = p.from.iter().map(|f| f.to_string()).collect();
        let events = p.filter.as_ref().map_or_else(
            || "any event".to_owned(),
            |f| format!("events matching {}", f.describe()),
        );
        lines.push(format!(
            "  EventPolicy {}: {} ({events})",
            p.id(),
            from.join(", ")
        ));
    }
    let broker_rate = b.rate_limit.effective(auth.rate_limit);
    let sender_rate = b.sender_rate_limit.effective(auth.sender_rate_limit);
    let show = |r: Option<broker::config::rate::RateLimit>| {
        r.map_or_else(|| "none".to_owned(), |r| r.to_string())
    };
    lines.push(format!(
        "rate limit: {} for the broker, {} per sender",
        show(broker_rate),
        show(sender_rate)
    ));
    lines
}

fn describe_delivery(d: &broker::delivery::DeliverySpec) -> String {
    let mut s = format!(
        "retry {} ({:?}, delay {:?}), timeout {:?}, format {:?}",
        d.retry, d.backoff_policy, d.backoff_delay, d.timeout, d.format
    );
    if let Some(dls) = &d.dead_letter_sink {
        s.push_str(&format!(", dead-letter sink {dls}"));
        if let Some(ca) = &d.dead_letter_sink_ca_certs {
            s.push_str(&format!(
                " (trusting {} CA certificate(s) of its CACerts)",
                ca.certificates().len()
            ));
        }
    }
    s
}

/// `serve`, `ingress` or `dispatcher`.
pub async fn run(command: ServeCommand) -> anyhow::Result<ExitCode> {
    let (args, role) = match command {
        ServeCommand::Serve(a) => (a, Role::Both),
        ServeCommand::Ingress(a) => (a, Role::Ingress),
        ServeCommand::Dispatcher(a) => (a, Role::Dispatcher),
    };
    telemetry::init_tracing(matches!(args.log_format, LogFormat::Json), &args.log);
    let config = match load(&args.config, &args.common.cluster_domain) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    for n in &config.notices {
        tracing::info!("{n}");
    }
    let duration = |flag: &str, v: &str| {
        config::parse_duration(v).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
    };
    let positive = |flag: &str, v: &str| match duration(flag, v) {
        Ok(d) if d.is_zero() => Err(anyhow::anyhow!("--{flag}: must be positive")),
        other => other,
    };
    // A request of the largest body (three times its size for the JSON formats)
    // must fit the budget with room to spare, or it would get 503 for ever.
    if args.memory_budget < args.max_body_bytes.saturating_mul(4) {
        anyhow::bail!(
            "--memory-budget {} is less than four times --max-body-bytes {}: the largest request could never be held",
            args.memory_budget,
            args.max_body_bytes
        );
    }
    let budget = broker::budget::MemoryBudget::new(args.memory_budget);
    let retention_age = duration("retention-age", &args.retention_age)?;
    let append_timeout = duration("append-timeout", &args.append_timeout)?;
    if append_timeout.is_zero() {
        anyhow::bail!("--append-timeout: must be positive");
    }
    let storage = match &args.storage {
        StorageArg::Embedded => Storage::Embedded {
            data_dir: args.data_dir.clone(),
            options: EmbeddedOptions {
                partitions: args.partitions.unwrap_or(1),
                fsync: args.fsync,
                retention_age: (!retention_age.is_zero()).then_some(retention_age),
                retention_bytes: (args.retention_bytes > 0).then_some(args.retention_bytes),
                delete_undelivered: args.retention_delete_undelivered,
                ..EmbeddedOptions::default()
            },
        },
        #[cfg(feature = "nats")]
        StorageArg::Nats(url) => Storage::Nats(nats_options(url, &args)?),
        #[cfg(feature = "kafka")]
        StorageArg::Kafka(url) => Storage::Kafka(kafka_options(url, &args)?),
    };
    let limits = broker::event::EventLimits {
        max_attributes: args.max_attributes,
        max_name_bytes: args.max_attribute_name_bytes,
        max_attribute_bytes: args.max_attribute_bytes,
    };
    let mut dispatcher_opts = dispatcher::DispatcherOptions {
        drain_timeout: Duration::from_secs(args.drain_seconds),
        max_ttl: args.max_ttl,
        // Replies are events from outside too: the ingress's limits hold for them.
        reply_limits: limits,
        max_reply_bytes: args.max_body_bytes,
        // One account for the whole process.
        budget: budget.clone(),
        removed_trigger_grace: duration("removed-trigger-grace", &args.removed_trigger_grace)?,
        ..Default::default()
    };
    if let Some(path) = &args.delivery_token_file {
        dispatcher_opts.delivery_token =
            Some(dispatcher::identity::BearerToken::load(path).map_err(anyhow::Error::msg)?);
    }
    if let Some(path) = &args.ca_bundle {
        dispatcher_opts.ca_bundle =
            Some(dispatcher::trust::read_bundle(path).map_err(anyhow::Error::msg)?);
    }
    if let Some(name) = &args.dispatcher_name {
        if name.is_empty() {
            anyhow::bail!("--dispatcher-name: must not be empty");
        }
        dispatcher_opts.owner = name.clone();
    }
    if let Some(u) = &args.advertise_url {
        reqwest::Url::parse(u).map_err(|e| anyhow::anyhow!("--advertise-url {u}: {e}"))?;
    }
    if args.admin_tls_client_ca.is_some()
        && args.admin_tls_cert.is_none()
        && args.tls_cert.is_none()
    {
        anyhow::bail!("--admin-tls-client-ca needs the admin listener's TLS: --admin-tls-cert and --admin-tls-key, or --tls-cert and --tls-key");
    }
    let tls_on = args.tls_cert.is_some();
    let admin_tls_on = args.admin_tls_cert.is_some() || tls_on;
    let opts = ServerOptions {
        config,
        config_path: Some(args.config.clone()),
        load_options: LoadOptions {
            cluster_domain: args.common.cluster_domain.clone(),
        },
        watch_config: args.config_watch,
        advertise_url: args.advertise_url.clone(),
        listen: args.listen,
        admin_listen: (!args.no_admin).then_some(args.admin_listen),
        tls: tls_files(
            args.tls_cert.as_ref(),
            args.tls_key.as_ref(),
            args.tls_client_ca.as_ref(),
            &args.tls_client_trust_domain,
        ),
        admin_tls: tls_files(
            args.admin_tls_cert.as_ref().or(args.tls_cert.as_ref()),
            args.admin_tls_key.as_ref().or(args.tls_key.as_ref()),
            args.admin_tls_client_ca.as_ref(),
            &args.tls_client_trust_domain,
        ),
        admin_auth: triggerfish::admin_auth::AdminAuthOptions {
            token_file: args.admin_token_file.clone(),
            client_certificates: args.admin_tls_client_ca.is_some(),
            allowed_hosts: args.admin_allowed_hosts.clone(),
            allowed_origins: args.admin_allowed_origins.clone(),
        },
        storage,
        role,
        ingress: ingress::IngressOptions {
            max_body_bytes: args.max_body_bytes,
            append_timeout,
            limits,
            body_read_timeout: positive("body-read-timeout", &args.body_read_timeout)?,
            min_body_rate: args.min_body_rate,
            max_discard_bytes: args.max_discard_bytes,
            budget: budget.clone(),
            server: ingress::ServerLimits {
                max_connections: args.max_connections,
                header_read_timeout: positive("header-read-timeout", &args.header_read_timeout)?,
                idle_timeout: positive("idle-timeout", &args.idle_timeout)?,
                http2_max_streams: args.http2_max_streams,
                http2_max_pending_resets: args.http2_max_pending_resets,
                http2_max_local_resets: args.http2_max_local_resets,
                shutdown_timeout: positive("shutdown-timeout", &args.shutdown_timeout)?,
            },
            shutdown_delay: duration("shutdown-delay", &args.shutdown_delay)?,
            auth: args.senders.auth()?,
        },
        oidc: args.senders.oidc(args.ca_bundle.as_deref())?,
        dispatcher: dispatcher_opts,
    };
    let shutdown = CancellationToken::new();
    let mut hups = spawn_signal_handler(shutdown.clone());
    let running = app::start(opts, shutdown).await?;
    // SIGHUP reloads (one at a time; those that came during one run once after it).
    let reloader = running.reloader.clone();
    tokio::spawn(async move {
        while hups.recv().await.is_some() {
            while hups.try_recv().is_ok() {}
            reloader.reload("signal").await;
        }
    });
    // Scripts read these lines; a closed stdout must not take the server down.
    let scheme = |tls: bool| if tls { "https" } else { "http" };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {}://{}", scheme(tls_on), running.addr);
    if let Some(a) = running.admin_addr {
        let _ = writeln!(out, "admin API on {}://{a}", scheme(admin_tls_on));
    }
    let _ = out.flush();
    drop(out);
    running.wait().await?;
    Ok(ExitCode::SUCCESS)
}

/// The NATS flags, validated into [`NatsOptions`].
#[cfg(feature = "nats")]
fn nats_options(url: &str, args: &ServeArgs) -> anyhow::Result<NatsOptions> {
    let n = &args.nats;
    let mut o = NatsOptions::from_url(url)?;
    o.auth = match (&n.nats_creds, &n.nats_token, &n.nats_user, &n.nats_password) {
        (Some(path), _, _, _) => NatsAuth::CredentialsFile(path.clone()),
        (_, Some(token), _, _) => NatsAuth::Token(token.clone()),
        (_, _, Some(user), Some(password)) => NatsAuth::UserPassword {
            user: user.clone(),
            password: password.clone(),
        },
        _ => NatsAuth::None,
    };
    o.tls.require |= n.nats_tls;
    o.tls.ca_file = n.nats_tls_ca.clone();
    o.tls.client_cert = n.nats_tls_cert.clone().zip(n.nats_tls_key.clone());
    o.limits.replicas = n.nats_replicas;
    let max_age = config::parse_duration(&n.nats_max_age)
        .map_err(|e| anyhow::anyhow!("--nats-max-age: {e}"))?;
    o.limits.max_age = (!max_age.is_zero()).then_some(max_age);
    if let Some(age) = o.limits.max_age {
        // JetStream requires the de-duplication window within the max age.
        o.limits.duplicate_window = o.limits.duplicate_window.min(age);
    }
    o.limits.max_bytes = (n.nats_max_bytes > 0).then_some(n.nats_max_bytes);
    o.limits.max_message_bytes = n.nats_max_msg_size;
    if let Some(p) = args.partitions {
        o.partitions = p;
    }
    o.prefix = n.nats_prefix.clone();
    o.request_timeout = config::parse_duration(&n.nats_request_timeout)
        .map_err(|e| anyhow::anyhow!("--nats-request-timeout: {e}"))?;
    o.lease_ttl = config::parse_duration(&n.nats_lease_ttl)
        .map_err(|e| anyhow::anyhow!("--nats-lease-ttl: {e}"))?;
    o.validate()?;
    Ok(o)
}

/// The Kafka flags, validated into [`KafkaOptions`].
#[cfg(feature = "kafka")]
fn kafka_options(url: &str, args: &ServeArgs) -> anyhow::Result<KafkaOptions> {
    let k = &args.kafka;
    let mut o = KafkaOptions::from_url(url)?;
    if let Some(path) = &k.kafka_config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--kafka-config {}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            o.add_option(line)
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?;
        }
    }
    for kv in &k.kafka_options {
        o.add_option(kv)
            .map_err(|e| anyhow::anyhow!("--kafka-option: {e}"))?;
    }
    o.topic_template = k.kafka_topic_template.clone();
    o.checkpoint_topic = k.kafka_checkpoint_topic.clone();
    if let Some(p) = args.partitions {
        o.partitions = p;
    }
    o.replication_factor = k.kafka_replication_factor;
    o.request_timeout = config::parse_duration(&k.kafka_request_timeout)
        .map_err(|e| anyhow::anyhow!("--kafka-request-timeout: {e}"))?;
    o.lease_ttl = config::parse_duration(&k.kafka_session_timeout)
        .map_err(|e| anyhow::anyhow!("--kafka-session-timeout: {e}"))?;
    o.validate()?;
    Ok(o)
}

/// First SIGTERM or SIGINT drains; a second one exits at once. SIGHUP (whose
/// default action would end the process) asks for a config reload: each one is
/// sent on the returned channel, handled once the server runs.
fn spawn_signal_handler(shutdown: CancellationToken) -> tokio::sync::mpsc::UnboundedReceiver<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (hups, asked) = tokio::sync::mpsc::unbounded_channel();
    let (mut term, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(h)) => (t, h),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install the signal handlers");
            return asked;
        }
    };
    tokio::spawn(async move {
        let mut stops = 0;
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received: reloading the config");
                    let _ = hups.send(());
                    continue;
                }
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            stops += 1;
            if stops == 1 {
                tracing::info!("shutdown requested; draining (signal again to abort)");
                shutdown.cancel();
            } else {
                tracing::warn!("second signal: aborting without draining");
                std::process::exit(130);
            }
        }
    });
    asked
}

/// A listener's TLS files, when its certificate and key are given (clap requires
/// both or neither).
fn tls_files(
    cert: Option<&std::path::PathBuf>,
    key: Option<&std::path::PathBuf>,
    client_ca: Option<&std::path::PathBuf>,
    trust_domain: &str,
) -> Option<ingress::tls::TlsOptions> {
    let mut o = ingress::tls::TlsOptions::new(cert?.clone(), key?.clone(), client_ca.cloned());
    o.trust_domain = trust_domain.to_owned();
    Some(o)
}
