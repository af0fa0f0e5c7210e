//! One server: a channel (the embedded log or NATS JetStream), the dispatcher and/or
//! the ingress, started in the order that keeps the contracts, and stopped in the
//! order that drains.
//!
//! [`Role`]: `serve` runs both in one process ([`Role::Both`]); on a shared channel
//! (NATS) `ingress` and `dispatcher` run them as separate processes, any number of
//! each. The embedded log belongs to one process, so it only runs [`Role::Both`].
//!
//! Start: connect the channel and open every broker's log (recovering it), store
//! where new triggers begin (the dispatcher does this when it starts; an ingress-only
//! process does it too, so that no event it accepts can precede a new trigger's start
//! whatever order the processes start in), start the dispatcher, then bind the
//! ingress, or for a dispatcher-only process a listener with `/healthz`, `/readyz` and
//! `/metrics`. Stop (when the cancellation token fires), in order and bounded:
//! `/readyz` answers 503 at once; after `--shutdown-delay` (load balancers have
//! noticed) the listeners stop accepting and requests in flight finish within
//! `--shutdown-timeout` (then their connections are dropped: a producer without a
//! 202 retries); then lanes stop taking events and finish deliveries in flight
//! within the drain timeout; final checkpoints are written, leases released.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use broker::channel::EventLog;
use dispatcher::BrokerLogs;

use crate::admin;
use crate::reload::{self, Live, Parts, Reloader};
use broker::config::{Config, LoadOptions};
use broker::telemetry::Metrics;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where brokers are stored: [`broker::channel::ChannelOptions`], chosen by
/// [`broker::channel::connect`].
pub type Storage = broker::channel::ChannelOptions;

/// What a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Ingress and dispatcher (`triggerfish serve`).
    Both,
    /// Only the ingress (`triggerfish ingress`).
    Ingress,
    /// Only the dispatcher (`triggerfish dispatcher`).
    Dispatcher,
}

impl Role {
    fn ingress(self) -> bool {
        matches!(self, Role::Both | Role::Ingress)
    }

    fn dispatcher(self) -> bool {
        matches!(self, Role::Both | Role::Dispatcher)
    }
}

/// Everything a server needs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Brokers and triggers.
    pub config: Config,
    /// Where `config` was read from, for reloads (`None`: it cannot be reloaded).
    pub config_path: Option<std::path::PathBuf>,
    /// How the config is read.
    pub load_options: LoadOptions,
    /// Reload when the config file or directory changes (`--config-watch`).
    pub watch_config: bool,
    /// Ingress listen address (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Admin API address (dead-letter log); `None` disables it.
    pub admin_listen: Option<SocketAddr>,
    /// Who may use the admin API (token, allowed hosts and origins).
    pub admin_auth: crate::admin_auth::AdminAuthOptions,
    /// TLS on the ingress listener (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
    pub tls: Option<ingress::tls::TlsOptions>,
    /// TLS on the admin listener (`--admin-tls-*`, by default the ingress's).
    pub admin_tls: Option<ingress::tls::TlsOptions>,
    /// The URL brokers are addressed at, as status shows it (`--advertise-url`);
    /// `None`: `http://` and the ingress's listening address.
    pub advertise_url: Option<String>,
    /// Where brokers are stored.
    pub storage: Storage,
    /// What this process runs.
    pub role: Role,
    /// Ingress settings.
    pub ingress: ingress::IngressOptions,
    /// OIDC sender authentication (`--oidc-issuer`, `--oidc-jwks`); the verifier
    /// is built (its keys fetched) when the server starts.
    pub oidc: Option<ingress::auth::oidc::OidcOptions>,
    /// Dispatcher settings.
    pub dispatcher: dispatcher::DispatcherOptions,
}

/// A running server.
pub struct Running {
    /// The address the ingress (or, for a dispatcher-only process, the health and
    /// metrics endpoints) listens on.
    pub addr: SocketAddr,
    /// The address of the admin API, when enabled.
    pub admin_addr: Option<SocketAddr>,
    /// Metrics registry (also served at `/metrics`).
    pub metrics: Arc<Metrics>,
    /// The running config, and reloading it.
    pub reloader: Arc<Reloader>,
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

/// Connects the configured channel.
async fn connect(storage: &Storage, role: Role) -> anyhow::Result<Arc<dyn EventLog>> {
    if !storage.shared() && role != Role::Both {
        anyhow::bail!(
            "the embedded log belongs to one process: `triggerfish ingress` and `triggerfish dispatcher` \
             need a shared channel (--storage nats://HOST:PORT or kafka://HOST:PORT); run `triggerfish serve` for both in one process"
        );
    }
    broker::channel::connect(storage)
        .await
        .context("opening the channel")
}

/// Starts a server; it runs until `shutdown` fires.
pub async fn start(opts: ServerOptions, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let shutdown_token = shutdown.clone();
    let metrics = Metrics::shared();
    metrics.audit.set_rate(
        opts.ingress
            .auth
            .audit_log_rate
            .unwrap_or(broker::audit::DEFAULT_AUDIT_LINES_PER_SECOND),
    );
    // Before anything starts: an admin API off loopback without a token is refused.
    let admin_auth = match opts.admin_listen {
        Some(a) => Some(Arc::new(crate::admin_auth::AdminAuth::new(
            &opts.admin_auth,
            a,
            metrics.clone(),
        )?)),
        None => None,
    };
    // The TLS files too: a listener whose certificate does not load does not start.
    let load_tls = |o: &Option<ingress::tls::TlsOptions>| {
        o.clone()
            .map(ingress::tls::Tls::load)
            .transpose()
            .map_err(anyhow::Error::from)
    };
    let tls = load_tls(&opts.tls)?;
    let admin_tls = match opts.admin_listen {
        Some(_) => load_tls(&opts.admin_tls)?,
        None => None,
    };
    let mut opts = opts;
    if let Some(oidc) = opts.oidc.take().filter(|_| opts.role.ingress()) {
        let verifier = ingress::auth::oidc::Verifier::new(oidc, metrics.clone())
            .await
            .map_err(anyhow::Error::msg)?;
        opts.ingress.auth.oidc = Some(verifier);
    }
    opts.ingress.auth.client_certificates =
        opts.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    let log = connect(&opts.storage, opts.role).await?;
    let mut logs: HashMap<_, BrokerLogs> = HashMap::new();
    for b in &opts.config.brokers {
        logs.insert(b.id.clone(), reload::open_logs(log.as_ref(), &b.id).await?);
    }
    opts.ingress
        .budget
        .report(metrics.memory_used.clone(), metrics.memory_budget.clone());
    // Shutdown runs in order (see the module docs): these stop the listeners and
    // the dispatcher when their turn comes.
    let stop_listeners = CancellationToken::new();
    let stop_dispatch = CancellationToken::new();
    let dispatcher = if opts.role.dispatcher() {
        Some(Arc::new(tokio::sync::Mutex::new(
            dispatcher::start(
                &opts.config,
                &logs,
                &metrics,
                &opts.dispatcher,
                stop_dispatch.clone(),
            )
            .await?,
        )))
    } else {
        for b in &opts.config.brokers {
            if let Some(l) = logs.get(&b.id) {
                dispatcher::init_checkpoints(b, l.events.as_ref())
                    .await
                    .with_context(|| {
                        format!("storing where new triggers of broker {} start", b.id)
                    })?;
            }
        }
        None
    };
    let ready = Arc::new(AtomicBool::new(true));
    let (router, ingress_state) = if opts.role.ingress() {
        let state = Arc::new(ingress::IngressState::new(
            opts.config
                .brokers
                .iter()
                .filter_map(|b| Some((logs.get(&b.id)?.events.clone(), b)))
                .collect(),
            metrics.clone(),
            opts.ingress.clone(),
        ));
        (ingress::router(state.clone()), Some(state))
    } else {
        (health_router(metrics.clone(), ready.clone()), None)
    };
    let reloader = Reloader::new(
        opts.config_path.clone(),
        opts.load_options.clone(),
        Live {
            config: opts.config.clone(),
            generation: 1,
            logs: logs.clone(),
        },
        Parts {
            channel: log.clone(),
            dispatcher: dispatcher.clone(),
            ingress: ingress_state.clone(),
        },
        metrics.clone(),
    );
    if let (true, Some(path)) = (opts.watch_config, &opts.config_path) {
        reload::watch(reloader.clone(), path, stop_listeners.clone());
    }
    if let Some(d) = &dispatcher {
        spawn_expiry(
            d.clone(),
            opts.dispatcher.removed_trigger_grace,
            stop_listeners.clone(),
        );
    }
    if let Some(t) = &opts.dispatcher.delivery_token {
        t.clone().watch(stop_listeners.clone());
    }
    if let Some(v) = &opts.ingress.auth.oidc {
        v.clone().watch(stop_listeners.clone());
    }
    for t in tls.iter().chain(&admin_tls) {
        t.clone().watch(metrics.clone(), stop_listeners.clone());
    }
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let limits = opts.ingress.server.clone();
    let admin = match opts.admin_listen.zip(admin_auth) {
        Some((a, auth)) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} (admin)"))?;
            let admin_addr = l.local_addr()?;
            let admin = Arc::new(admin::AdminState::new(
                reloader.clone(),
                admin::Addresses {
                    ingress: addr,
                    advertise: opts.advertise_url.clone(),
                    https: tls.is_some(),
                },
                metrics.clone(),
                &opts.dispatcher.owner,
                dispatcher::trust::Trust::new(
                    opts.dispatcher.ca_bundle.as_ref(),
                    opts.dispatcher.delivery_token.clone(),
                ),
                stop_dispatch.clone(),
            ));
            let token = stop_listeners.clone();
            let limits = limits.clone();
            let task = tokio::spawn(async move {
                if let Err(e) = ingress::serve(
                    l,
                    admin::router(admin, auth),
                    limits,
                    None,
                    admin_tls,
                    true,
                    token,
                )
                .await
                {
                    tracing::error!(error = %e, "admin server failed");
                }
            });
            Some((admin_addr, task))
        }
        None => None,
    };
    let admin_addr = admin.as_ref().map(|(a, _)| *a);
    tracing::info!(%addr, role = ?opts.role, storage = %log.describe(), brokers = opts.config.brokers.len(), "triggerfish is serving");
    let served = tokio::spawn(ingress::serve(
        listener,
        router,
        limits,
        Some(metrics.clone()),
        tls,
        false,
        stop_listeners.clone(),
    ));
    let delay = opts.ingress.shutdown_delay;
    let closing = reloader.clone();
    let task = tokio::spawn(async move {
        shutdown.cancelled().await;
        // No reload starts from now on (one running finishes first).
        closing.close().await;
        // 1. Not ready, while still serving: load balancers take us out first.
        if let Some(state) = &ingress_state {
            state.set_ready(false);
        }
        ready.store(false, Ordering::Relaxed);
        if !delay.is_zero() {
            tracing::info!(
                ?delay,
                "shutdown: /readyz answers 503; still accepting for --shutdown-delay"
            );
            tokio::time::sleep(delay).await;
        }
        // 2. Stop accepting; requests in flight finish within --shutdown-timeout.
        stop_listeners.cancel();
        // Not `?`: the dispatcher below drains and writes its checkpoints whatever
        // happened to the listener.
        let served = served.await.context("ingress task failed");
        if let Some((_, task)) = admin {
            let _ = task.await;
        }
        // 3. Lanes stop taking events and finish deliveries within the drain
        //    timeout; 4. final checkpoints, leases released.
        stop_dispatch.cancel();
        if let Some(dispatcher) = dispatcher {
            tracing::info!("draining deliveries");
            dispatcher.lock().await.wait().await;
        }
        drop(logs);
        drop(log);
        tracing::info!("shutdown complete");
        served?.context("server failed")
    });
    Ok(Running {
        addr,
        admin_addr,
        metrics,
        reloader,
        shutdown: shutdown_token,
        task,
    })
}

/// Deletes removed triggers' slots and checkpoints once their grace period is over,
/// checking every tenth of it (between 100 ms and 30 s).
fn spawn_expiry(
    dispatcher: Arc<tokio::sync::Mutex<dispatcher::Dispatcher>>,
    grace: std::time::Duration,
    stop: CancellationToken,
) {
    let every = (grace / 10).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(30),
    );
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let gone = dispatcher.lock().await.expire().await;
            for t in gone {
                tracing::info!(trigger = %t, "grace period over: checkpoint deleted");
            }
        }
    });
}

/// `/healthz`, `/readyz` and `/metrics` of a dispatcher-only process.
fn health_router(metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(ready): State<Arc<AtomicBool>>| async move {
                if ready.load(Ordering::Relaxed) {
                    "ready".into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
                }
            }),
        )
        .with_state(ready)
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
}
