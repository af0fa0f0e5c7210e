//! One server: the embedded channel, the dispatcher and the ingress, started in the
//! order that keeps the contracts, and stopped in the order that drains.
//!
//! Start: open every broker's log (recovering it), start the dispatcher (which stores
//! where new triggers begin before any event can be accepted), then bind the ingress.
//! Stop (when the cancellation token fires): the ingress stops accepting and finishes
//! requests in flight, lanes stop taking events and finish deliveries in flight within
//! the drain timeout, final checkpoints are written.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use broker::channel::embedded::{EmbeddedLog, EmbeddedOptions};
use broker::channel::EventLog;
use dispatcher::BrokerLogs;

use crate::admin;
use broker::config::Config;
use broker::telemetry::Metrics;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Everything a server needs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Brokers and triggers.
    pub config: Config,
    /// Ingress listen address (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Admin API address (dead-letter log); `None` disables it.
    pub admin_listen: Option<SocketAddr>,
    /// Embedded log directory.
    pub data_dir: PathBuf,
    /// Embedded log settings.
    pub embedded: EmbeddedOptions,
    /// Ingress settings.
    pub ingress: ingress::IngressOptions,
    /// Dispatcher settings.
    pub dispatcher: dispatcher::DispatcherOptions,
}

/// A running server.
pub struct Running {
    /// The address the ingress listens on.
    pub addr: SocketAddr,
    /// The address of the admin API, when enabled.
    pub admin_addr: Option<SocketAddr>,
    /// Metrics registry (also served at `/metrics`).
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Begins a graceful shutdown.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the server has stopped (after [`Running::shutdown`] or the token
    /// given to [`start`] fires).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task failed")?
    }
}

/// Starts a server; it runs until `shutdown` fires.
pub async fn start(opts: ServerOptions, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let log = EmbeddedLog::open(&opts.data_dir, opts.embedded.clone())?;
    let mut logs: HashMap<_, BrokerLogs> = HashMap::new();
    for b in &opts.config.brokers {
        let events = log
            .open(&b.id)
            .await
            .with_context(|| format!("opening broker {}", b.id))?;
        let dead_letters = log
            .open_dead_letters(&b.id)
            .await
            .with_context(|| format!("opening the dead-letter log of broker {}", b.id))?;
        logs.insert(
            b.id.clone(),
            BrokerLogs {
                events,
                dead_letters,
            },
        );
    }
    let metrics = Metrics::shared();
    let dispatcher = dispatcher::start(
        &opts.config,
        &logs,
        &metrics,
        &opts.dispatcher,
        shutdown.clone(),
    )
    .await?;
    let state = Arc::new(ingress::IngressState::new(
        logs.values().map(|l| l.events.clone()).collect(),
        metrics.clone(),
        opts.ingress.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let admin_addr = match opts.admin_listen {
        Some(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} (admin)"))?;
            let admin_addr = l.local_addr()?;
            let admin = Arc::new(admin::AdminState::new(
                opts.config.clone(),
                logs.clone(),
                metrics.clone(),
            ));
            let token = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = ingress::serve(l, admin::router(admin), token).await {
                    tracing::error!(error = %e, "admin server failed");
                }
            });
            Some(admin_addr)
        }
        None => None,
    };
    tracing::info!(%addr, storage = %log.describe(), brokers = opts.config.brokers.len(), "triggerfish is serving");
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        let served = ingress::serve(listener, ingress::router(state.clone()), token).await;
        state.set_ready(false);
        tracing::info!("ingress stopped; draining deliveries");
        dispatcher.wait().await;
        drop(logs);
        drop(log);
        tracing::info!("shutdown complete");
        served.context("ingress server failed")
    });
    Ok(Running {
        addr,
        admin_addr,
        metrics,
        shutdown,
        task,
    })
}
