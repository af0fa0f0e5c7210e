//! `triggerfish serve` and `triggerfish config check`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use broker::channel::embedded::EmbeddedOptions;
use broker::config::{self, Config, LoadOptions};
use broker::telemetry;
use tokio_util::sync::CancellationToken;
use triggerfish::app::{self, ServerOptions};

use crate::cli::{CheckArgs, LogFormat, ServeArgs};

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
    for b in &config.brokers {
        println!("broker {}", b.id);
        println!("  delivery: {}", describe_delivery(&b.delivery));
        for t in &b.triggers {
            println!("  trigger {}", t.name);
            println!("    filter:     {}", t.filter.describe());
            println!("    subscriber: {}", t.subscriber);
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

fn describe_delivery(d: &broker::delivery::DeliverySpec) -> String {
    let mut s = format!(
        "retry {} ({:?}, delay {:?}), timeout {:?}, format {:?}",
        d.retry, d.backoff_policy, d.backoff_delay, d.timeout, d.format
    );
    if let Some(dls) = &d.dead_letter_sink {
        s.push_str(&format!(", dead-letter sink {dls}"));
    }
    s
}

/// `serve`: ingress and dispatcher in one process.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
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
    let retention_age = config::parse_duration(&args.retention_age)
        .map_err(|e| anyhow::anyhow!("--retention-age: {e}"))?;
    let opts = ServerOptions {
        config,
        listen: args.listen,
        admin_listen: (!args.no_admin).then_some(args.admin_listen),
        data_dir: args.data_dir,
        embedded: EmbeddedOptions {
            partitions: args.partitions,
            fsync: args.fsync,
            retention_age: (!retention_age.is_zero()).then_some(retention_age),
            retention_bytes: (args.retention_bytes > 0).then_some(args.retention_bytes),
            ..EmbeddedOptions::default()
        },
        ingress: ingress::IngressOptions {
            max_body_bytes: args.max_body_bytes,
            ..Default::default()
        },
        dispatcher: dispatcher::DispatcherOptions {
            drain_timeout: Duration::from_secs(args.drain_seconds),
            max_ttl: args.max_ttl,
            ..Default::default()
        },
    };
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let running = app::start(opts, shutdown).await?;
    // Scripts read these lines; a closed stdout must not take the server down.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{}", running.addr);
    if let Some(a) = running.admin_addr {
        let _ = writeln!(out, "admin API on http://{a}");
    }
    let _ = out.flush();
    drop(out);
    running.wait().await?;
    Ok(ExitCode::SUCCESS)
}

/// First SIGTERM or SIGINT drains; a second one exits at once.
fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot install the SIGTERM handler");
                    return;
                }
            };
        for n in 0..2 {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            if n == 0 {
                tracing::info!("shutdown requested; draining (signal again to abort)");
                shutdown.cancel();
            } else {
                tracing::warn!("second signal: aborting without draining");
                std::process::exit(130);
            }
        }
    });
}
