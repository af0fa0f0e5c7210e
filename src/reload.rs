//! Live configuration: the one owner of the config a process runs, and of changing
//! it.
//!
//! A reload is asked for by a change of the config file or directory (watched with
//! `notify`, [`watch`]), by SIGHUP, or by `POST /admin/v1/reload`; reloads run one at
//! a time ([`Reloader::reload`]). Each one:
//!
//! 1. loads and validates the whole config; an invalid one changes nothing: the
//!    previous config keeps running, and the located problems are logged, counted
//!    (`triggerfish_config_reloads_total{outcome="invalid"}`) and shown in status;
//! 2. compares it with the running one; unchanged (a touch, a comment), it stops here;
//! 3. opens the logs of new brokers;
//! 4. in a dispatcher, applies the difference ([`dispatcher::Dispatcher::apply`]: new
//!    triggers' start points stored in one batch, changed triggers switched from
//!    their next event, removed ones kept for their grace period); in an ingress-only
//!    process, stores the start points of new triggers (so that whichever process
//!    reloads first, no event it accepts after can precede a trigger's start);
//! 5. serves the new brokers at the ingress (removed ones answer 404);
//! 6. publishes the new generation ([`Live`]), which the admin API reads.
//!
//! A removed broker's logs stay open (and its data on disk) until the process ends:
//! re-added, it is served again from the same logs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use broker::channel::{EventLog, LogKind};
use broker::config::{BrokerId, Config, LoadOptions};
use broker::telemetry::{Metrics, ReloadOutcome};
use dispatcher::{BrokerLogs, Dispatcher};
use tokio::sync::watch;

/// The config a process runs now, as the admin API reads it.
pub struct Live {
    /// Brokers and triggers.
    pub config: Config,
    /// The config's generation: 1 at start, one more per applied change.
    pub generation: u64,
    /// Every configured broker's opened logs.
    pub logs: HashMap<BrokerId, BrokerLogs>,
}

/// How the last reload went, for status.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    /// When it ran.
    pub at: SystemTime,
    /// What asked for it: `file`, `signal`, `api`.
    pub cause: &'static str,
    /// How it ended.
    pub outcome: ReloadOutcome,
    /// The problems of an invalid config, or why applying failed.
    pub errors: Vec<String>,
    /// The generation running after it.
    pub generation: u64,
    /// What changed (`added ns/b/t`, ...), when it applied.
    pub changes: Vec<String>,
    /// How long loading and validating took.
    pub load: Duration,
    /// How long applying took.
    pub apply: Duration,
}

/// What a reload does to the parts of a process.
pub struct Parts {
    /// The channel (new brokers' logs are opened here).
    pub channel: Arc<dyn EventLog>,
    /// The dispatcher, in a process that dispatches.
    pub dispatcher: Option<Arc<tokio::sync::Mutex<Dispatcher>>>,
    /// The ingress, in a process that accepts events.
    pub ingress: Option<Arc<ingress::IngressState>>,
}

/// The one owner of the running config; see the module docs.
pub struct Reloader {
    path: Option<PathBuf>,
    load_options: LoadOptions,
    parts: Parts,
    metrics: Arc<Metrics>,
    /// Serialises reloads; holds every broker's logs ever opened (removed ones too).
    opened: tokio::sync::Mutex<HashMap<BrokerId, BrokerLogs>>,
    live: watch::Sender<Arc<Live>>,
    last: Mutex<Option<ReloadStatus>>,
    closed: std::sync::atomic::AtomicBool,
}

impl Reloader {
    /// The reloader of a process started with `live` (generation 1), read from
    /// `path` (`None`: the config was given in memory and cannot be reloaded).
    pub fn new(
        path: Option<PathBuf>,
        load_options: LoadOptions,
        live: Live,
        parts: Parts,
        metrics: Arc<Metrics>,
    ) -> Arc<Reloader> {
        metrics.config_generation.set(live.generation as i64);
        let opened = live.logs.clone();
        Arc::new(Reloader {
            path,
            load_options,
            parts,
            metrics,
            opened: tokio::sync::Mutex::new(opened),
            live: watch::channel(Arc::new(live)).0,
            last: Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The config running now.
    pub fn live(&self) -> Arc<Live> {
        self.live.borrow().clone()
    }

    /// How the last reload went.
    pub fn last(&self) -> Option<ReloadStatus> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The dispatcher, in a process that dispatches.
    pub fn dispatcher(&self) -> Option<&Arc<tokio::sync::Mutex<Dispatcher>>> {
        self.parts.dispatcher.as_ref()
    }

    /// Refuses reloads from now on (shutdown began); waits for one running.
    pub async fn close(&self) {
        let _running = self.opened.lock().await;
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Reloads the config (see the module docs); `cause` is what asked for it.
    pub async fn reload(&self, cause: &'static str) -> ReloadStatus {
        let mut opened = self.opened.lock().await;
        let began = std::time::Instant::now();
        let current = self.live();
        let mut status = ReloadStatus {
            at: SystemTime::now(),
            cause,
            outcome: ReloadOutcome::unchanged,
            errors: Vec::new(),
            generation: current.generation,
            changes: Vec::new(),
            load: Duration::ZERO,
            apply: Duration::ZERO,
        };
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            status.outcome = ReloadOutcome::failed;
            status.errors = vec!["shutting down".into()];
            return self.finish(status);
        }
        let Some(path) = &self.path else {
            status.outcome = ReloadOutcome::failed;
            status.errors = vec![
                "this process was given its config in memory; there is no file to reload".into(),
            ];
            return self.finish(status);
        };
        let load_options = self.load_options.clone();
        let path_owned = path.clone();
        let loaded =
            tokio::task::spawn_blocking(move || broker::config::load(&path_owned, &load_options))
                .await;
        status.load = began.elapsed();
        let config = match loaded {
            Ok(Ok(c)) => c,
            Ok(Err(errors)) => {
                status.outcome = ReloadOutcome::invalid;
                status.errors = errors.0.iter().map(ToString::to_string).collect();
                tracing::error!(path = %path.display(), cause, "{errors}; the previous config keeps running");
                return self.finish(status);
            }
            Err(e) => {
                status.outcome = ReloadOutcome::failed;
                status.errors = vec![format!("loading task failed: {e}")];
                return self.finish(status);
            }
        };
        if same_config(&current.config, &config) {
            tracing::info!(path = %path.display(), cause, "config reloaded: unchanged");
            return self.finish(status);
        }
        for n in &config.notices {
            tracing::info!("{n}");
        }
        let generation = current.generation + 1;
        let applying = std::time::Instant::now();
        match self
            .apply(&config, &current.config, generation, &mut opened)
            .await
        {
            Ok((logs, changes)) => {
                status.apply = applying.elapsed();
                status.outcome = ReloadOutcome::applied;
                status.generation = generation;
                status.changes = changes;
                self.metrics
                    .config_apply_seconds
                    .set(status.apply.as_secs_f64());
                self.metrics.config_generation.set(generation as i64);
                tracing::info!(path = %path.display(), cause, generation, load = ?status.load, apply = ?status.apply,
                    changes = status.changes.len(), "config reloaded and applied");
                for c in status.changes.iter().take(100) {
                    tracing::info!(generation, "{c}");
                }
                self.live.send_replace(Arc::new(Live {
                    config,
                    generation,
                    logs,
                }));
            }
            Err(e) => {
                status.apply = applying.elapsed();
                status.outcome = ReloadOutcome::failed;
                status.errors = vec![format!("{e:#}")];
                tracing::error!(path = %path.display(), cause, error = %format!("{e:#}"),
                    "cannot apply the new config; the next reload tries again");
            }
        }
        self.finish(status)
    }

    fn finish(&self, status: ReloadStatus) -> ReloadStatus {
        self.metrics.config_reload(status.outcome);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(status.clone());
        status
    }

    async fn apply(
        &self,
        config: &Config,
        previous: &Config,
        generation: u64,
        opened: &mut HashMap<BrokerId, BrokerLogs>,
    ) -> anyhow::Result<(HashMap<BrokerId, BrokerLogs>, Vec<String>)> {
        use anyhow::Context;
        let mut logs = HashMap::new();
        let mut changes = Vec::new();
        for b in &config.brokers {
            if !opened.contains_key(&b.id) {
                let l = open_logs(self.parts.channel.as_ref(), &b.id).await?;
                opened.insert(b.id.clone(), l);
            }
            logs.insert(b.id.clone(), opened[&b.id].clone());
        }
        match &self.parts.dispatcher {
            Some(d) => {
                let applied = d
                    .lock()
                    .await
                    .apply(config, &logs, generation)
                    .await
                    .context("applying the config to the dispatcher")?;
                let t = &applied.triggers;
                let lines = [
                    ("broker added", &applied.brokers_added),
                    ("broker removed", &applied.brokers_removed),
                    ("trigger added", &t.added),
                    ("trigger changed", &t.changed),
                    ("trigger removed", &t.removed),
                    ("trigger resumed", &t.resumed),
                ];
                for (what, names) in lines {
                    changes.extend(names.iter().map(|n| format!("{what}: {n}")));
                }
            }
            None => {
                // Only the new triggers' start points (every other one is stored).
                for b in &config.brokers {
                    let before = previous.broker(&b.id.namespace, &b.id.name);
                    let mut fresh = b.clone();
                    fresh.triggers.retain(|t| {
                        before.is_none_or(|p| !p.triggers.iter().any(|o| o.name == t.name))
                    });
                    if fresh.triggers.is_empty() {
                        continue;
                    }
                    dispatcher::init_checkpoints(&fresh, logs[&b.id].events.as_ref())
                        .await
                        .with_context(|| {
                            format!("storing where new triggers of broker {} start", b.id)
                        })?;
                    changes.extend(
                        fresh
                            .triggers
                            .iter()
                            .map(|t| format!("trigger added: {}/{}", b.id, t.name)),
                    );
                }
                for b in &config.brokers {
                    if previous.broker(&b.id.namespace, &b.id.name).is_none() {
                        changes.push(format!("broker added: {}", b.id));
                    }
                }
                for b in &previous.brokers {
                    if config.broker(&b.id.namespace, &b.id.name).is_none() {
                        changes.push(format!("broker removed: {}", b.id));
                    }
                }
            }
        }
        changes.extend(policy_changes(previous, config));
        for b in &config.brokers {
            let labels_or_limits_changed = previous
                .broker(&b.id.namespace, &b.id.name)
                .is_some_and(|p| {
                    p.labels != b.labels
                        || p.rate_limit != b.rate_limit
                        || p.sender_rate_limit != b.sender_rate_limit
                });
            if labels_or_limits_changed {
                changes.push(format!("broker changed: {} (labels or rate limits)", b.id));
            }
        }
        if let Some(ingress) = &self.parts.ingress {
            ingress.set_brokers(
                config
                    .brokers
                    .iter()
                    .map(|b| (logs[&b.id].events.clone(), b))
                    .collect(),
            );
        }
        Ok((logs, changes))
    }
}

/// `event policy added|changed|removed: ns/name` lines for a reload's report.
fn policy_changes(before: &Config, after: &Config) -> Vec<String> {
    let find = |c: &Config, p: &broker::config::EventPolicy| {
        c.policies
            .iter()
            .find(|q| q.namespace == p.namespace && q.name == p.name)
            .cloned()
    };
    let mut lines = Vec::new();
    for p in &after.policies {
        match find(before, p) {
            None => lines.push(format!("event policy added: {}", p.id())),
            Some(q) if q.spec_hash != p.spec_hash => {
                lines.push(format!("event policy changed: {}", p.id()))
            }
            Some(_) => {}
        }
    }
    for p in &before.policies {
        if find(after, p).is_none() {
            lines.push(format!("event policy removed: {}", p.id()));
        }
    }
    lines
}

/// Opens (creating if needed) a broker's event log and dead-letter log.
pub async fn open_logs(channel: &dyn EventLog, id: &BrokerId) -> anyhow::Result<BrokerLogs> {
    use anyhow::Context;
    let events = channel
        .open(id, LogKind::Events)
        .await
        .with_context(|| format!("opening broker {id}"))?;
    let dead_letters = channel
        .open(id, LogKind::DeadLetters)
        .await
        .with_context(|| format!("opening the dead-letter log of broker {id}"))?;
    Ok(BrokerLogs {
        events,
        dead_letters,
    })
}

/// Whether two configs run alike: the same EventPolicies, the same brokers
/// (delivery, annotations, labels) with the same triggers ([`broker::config::TriggerConfig::same_as`]).
fn same_config(a: &Config, b: &Config) -> bool {
    let same_policy = |p: &std::sync::Arc<broker::config::EventPolicy>,
                       q: &std::sync::Arc<broker::config::EventPolicy>| {
        p.namespace == q.namespace && p.name == q.name && p.spec_hash == q.spec_hash
    };
    a.policies.len() == b.policies.len()
        && a.policies
            .iter()
            .zip(&b.policies)
            .all(|(p, q)| same_policy(p, q))
        && a.brokers.len() == b.brokers.len()
        && a.brokers.iter().zip(&b.brokers).all(|(x, y)| {
            x.id == y.id
                && x.delivery == y.delivery
                && x.annotations == y.annotations
                && x.labels == y.labels
                && x.triggers.len() == y.triggers.len()
                && x.triggers
                    .iter()
                    .zip(&y.triggers)
                    .all(|(s, t)| s.same_as(t))
        })
}

/// How long the watcher waits for writes to settle before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Watches the config at `path` and reloads when it changes, until `stop`. A file is
/// watched through its directory, which also sees it replaced by a rename (editors,
/// `kubectl cp`) and a mounted ConfigMap's `..data` symlink swap; a directory is
/// watched itself. Events are debounced by [`DEBOUNCE`]. A watcher that cannot
/// start is logged; SIGHUP and the admin API still reload.
pub fn watch(reloader: Arc<Reloader>, path: &Path, stop: tokio_util::sync::CancellationToken) {
    use notify::Watcher;
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    };
    // A file: events naming it, or a `..data`-style swap; a directory: its YAML
    // files and swaps. Others (a neighbour's edits) are ignored.
    let file = (!path.is_dir())
        .then(|| path.file_name().map(|n| n.to_os_string()))
        .flatten();
    let relevant = move |p: &Path| {
        let Some(name) = p.file_name() else {
            return false;
        };
        let text = name.to_string_lossy();
        if text.starts_with("..") {
            return true;
        }
        match &file {
            Some(f) => name == f.as_os_str(),
            None => {
                let lower = text.to_ascii_lowercase();
                lower.ends_with(".yaml") || lower.ends_with(".yml")
            }
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(e) if e.kind.is_access() => {}
            Ok(e) if e.paths.iter().any(|p| relevant(p)) => {
                let _ = tx.send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "config watcher error"),
        });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the config; reload with SIGHUP or POST /admin/v1/reload");
            return;
        }
    };
    if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
        tracing::error!(dir = %dir.display(), error = %e, "cannot watch the config directory; reload with SIGHUP or POST /admin/v1/reload");
        return;
    }
    tracing::info!(dir = %dir.display(), "watching the config for changes");
    tokio::spawn(async move {
        // Owned here: dropping it stops the watch.
        let _watcher = watcher;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                got = rx.recv() => if got.is_none() { return },
            }
            // Writes come in bursts (a truncate then a write, a ConfigMap's swap).
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(DEBOUNCE) => break,
                    got = rx.recv() => if got.is_none() { return },
                }
            }
            reloader.reload("file").await;
        }
    });
}
