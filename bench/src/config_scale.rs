//! `triggerfish-bench config-scale`: what a large config costs (issue 15).
//!
//! On the embedded log, with `--triggers N` (default 10,000) triggers of one broker
//! none of which matches the events (idle triggers):
//!
//! - **start**: a server started with N triggers, from spawn to its `listening on`
//!   line (every new trigger's start point stored), and its RSS once idle, against a
//!   server with one trigger: `(rss_N - rss_1) / (N - 1)` is the RSS per idle trigger;
//! - **reload** (a binary with live reload): a server started with one trigger gets
//!   N by `POST /admin/v1/reload`; then one trigger is added, then one changed. Each
//!   reload reports its load (parse and validate) and apply time; the apply of N new
//!   triggers includes storing their start points in one batch.
//!
//! `--start-only` measures only the start figures, which any `triggerfish` binary
//! has (the figures before live reload existed).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use crate::proc::Child;

#[derive(Debug, Args)]
pub struct ConfigScaleArgs {
    /// The `triggerfish` binary.
    #[arg(long, default_value = "target/release/triggerfish")]
    pub server_bin: PathBuf,
    /// Triggers of the large config.
    #[arg(long, default_value_t = 10_000)]
    pub triggers: usize,
    /// Only the start figures (for a binary without live reload).
    #[arg(long)]
    pub start_only: bool,
    /// How long a server idles before its RSS is read.
    #[arg(long, default_value_t = 3)]
    pub settle_secs: u64,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// `triggers` triggers of broker `default/default` (named `t<i>`, type filter
/// `type-<i>`, never matched); `changed` gives trigger `t<changed>` another filter.
fn config(triggers: usize, changed: Option<usize>) -> String {
    let mut y = String::with_capacity(triggers * 220 + 100);
    y.push_str("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default, namespace: default}\n");
    for i in 0..triggers {
        let ty = if changed == Some(i) {
            format!("changed-{i}")
        } else {
            format!("type-{i}")
        };
        y.push_str(&format!(
            "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: t{i}, namespace: default}}\nspec:\n  broker: default\n  filter: {{attributes: {{type: {ty}}}}}\n  subscriber: {{uri: 'http://127.0.0.1:9/'}}\n"
        ));
    }
    y
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

struct Server {
    child: Child,
    admin: SocketAddr,
    started: Duration,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

async fn start(bin: &Path, yaml: &str, reloadable: bool) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, yaml)?;
    let admin = free_port()?;
    let mut args: Vec<String> = [
        "serve",
        "--config",
        &config.to_string_lossy(),
        "--data-dir",
        &dir.path().join("data").to_string_lossy(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        &admin.to_string(),
        "--log",
        "warn",
    ]
    .map(str::to_owned)
    .to_vec();
    if reloadable {
        // Reloads come from the harness only.
        args.extend(["--config-watch".to_owned(), "false".to_owned()]);
    }
    let began = Instant::now();
    let child = Child::spawn(bin, &args).await?;
    Ok(Server {
        child,
        admin,
        started: began.elapsed(),
        config,
        _dir: dir,
    })
}

async fn idle_rss(s: &Server, settle: Duration) -> anyhow::Result<u64> {
    tokio::time::sleep(settle).await;
    s.child.rss_kib().context("reading RSS")
}

async fn reload(s: &Server, yaml: &str) -> anyhow::Result<Value> {
    std::fs::write(&s.config, yaml)?;
    let began = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("http://{}/admin/v1/reload", s.admin))
        .send()
        .await?;
    let took = began.elapsed();
    let status = r.status();
    let mut v: Value = r.json().await?;
    anyhow::ensure!(status.is_success(), "reload answered {status}: {v}");
    v["requestSeconds"] = json!(took.as_secs_f64());
    v["changes"] = json!(v["changes"].as_array().map_or(0, Vec::len));
    Ok(v)
}

/// Runs the figures and prints them.
pub async fn run(a: ConfigScaleArgs) -> anyhow::Result<()> {
    let n = a.triggers.max(2);
    let settle = Duration::from_secs(a.settle_secs);
    let bin = &a.server_bin;
    let reloadable = !a.start_only;
    let one = start(bin, &config(1, None), reloadable).await?;
    let rss_one = idle_rss(&one, settle).await?;
    let mut out = json!({
        "triggers": n,
        "server": bin.display().to_string(),
        "one_trigger": {"start_s": one.started.as_secs_f64(), "rss_kib": rss_one},
    });
    eprintln!(
        "1 trigger: started in {:.3} s, idle RSS {} KiB",
        one.started.as_secs_f64(),
        rss_one
    );
    if reloadable {
        let r = reload(&one, &config(n, None)).await?;
        let rss = idle_rss(&one, settle).await?;
        eprintln!(
            "reload 1 -> {n} triggers: load {:.3} s, apply {:.3} s; idle RSS {rss} KiB",
            r["loadSeconds"].as_f64().unwrap_or(0.0),
            r["applySeconds"].as_f64().unwrap_or(0.0)
        );
        out["reload_add_all"] = r;
        out["reload_add_all"]["rss_kib"] = json!(rss);
        let r = reload(&one, &config(n + 1, None)).await?;
        eprintln!(
            "reload: one trigger added to {n}: load {:.3} s, apply {:.1} ms",
            r["loadSeconds"].as_f64().unwrap_or(0.0),
            r["applySeconds"].as_f64().unwrap_or(0.0) * 1000.0
        );
        out["reload_add_one"] = r;
        let r = reload(&one, &config(n + 1, Some(n / 2))).await?;
        eprintln!(
            "reload: one trigger of {} changed: load {:.3} s, apply {:.1} ms",
            n + 1,
            r["loadSeconds"].as_f64().unwrap_or(0.0),
            r["applySeconds"].as_f64().unwrap_or(0.0) * 1000.0
        );
        out["reload_change_one"] = r;
        let r = reload(&one, &config(n, None)).await?;
        eprintln!(
            "reload: one trigger removed: apply {:.1} ms",
            r["applySeconds"].as_f64().unwrap_or(0.0) * 1000.0
        );
        out["reload_remove_one"] = r;
    }
    one.child.stop();
    let many = start(bin, &config(n, None), false).await?;
    let rss_many = idle_rss(&many, settle).await?;
    let per = (rss_many.saturating_sub(rss_one)) as f64 * 1024.0 / (n - 1) as f64;
    eprintln!(
        "{n} triggers: started in {:.3} s, idle RSS {rss_many} KiB: {per:.0} bytes per idle trigger",
        many.started.as_secs_f64()
    );
    out["many_triggers"] = json!({
        "start_s": many.started.as_secs_f64(),
        "rss_kib": rss_many,
        "rss_bytes_per_idle_trigger": per,
    });
    many.child.stop();
    println!("{}", serde_json::to_string_pretty(&out)?);
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
