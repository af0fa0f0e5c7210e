//! Child processes and what the harness reads about them.
//!
//! Every system under test and every baseline server runs in its own process, so the
//! load generator and null subscriber (in the harness process) never share a runtime or
//! an allocator with what they measure, and `/proc/<pid>` gives each one's RSS and CPU
//! time. A child prints `listening on http://ADDR` (`https://` with TLS) as its first stdout line (as
//! `triggerfish serve` does) and is killed when its handle drops; the harness's own
//! child roles also exit by themselves after [`MAX_LIFETIME_ENV`] seconds, so nothing
//! outlives a crashed harness for long.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use broker::channel::embedded::{EmbeddedLog, EmbeddedOptions, FsyncPolicy};
use broker::channel::EventLog;
use broker::config::BrokerId;

use crate::load::{stored_event, EVENT_TYPE};

/// Environment variable: seconds after which a harness child role exits by itself.
pub const MAX_LIFETIME_ENV: &str = "TRIGGERFISH_BENCH_MAX_SECS";

/// A child process serving on `addr`; killed on drop.
pub struct Child {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its process id.
    pub pid: u32,
    child: std::process::Child,
    _stdout: BufReader<ChildStdout>,
}

impl Child {
    /// Starts `program args...` and waits (up to 30 s) for its `listening on` line.
    pub async fn spawn(program: &Path, args: &[String]) -> anyhow::Result<Child> {
        let mut child = Command::new(program)
            .args(args)
            .env(MAX_LIFETIME_ENV, "900")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().context("child stdout")?;
        let read = tokio::task::spawn_blocking(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            r.read_line(&mut line).map(|_| (r, line))
        });
        let (reader, line) = match tokio::time::timeout(Duration::from_secs(30), read).await {
            Ok(Ok(Ok(x))) => x,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not report its address: {other:?}",
                    program.display()
                );
            }
        };
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .or_else(|| line.trim().strip_prefix("listening on https://"))
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("unexpected first line from {}: {line:?}", program.display());
        };
        Ok(Child {
            addr,
            pid,
            child,
            _stdout: reader,
        })
    }

    /// Resident set size now (KiB).
    pub fn rss_kib(&self) -> Option<u64> {
        status_kib(self.pid, "VmRSS:")
    }

    /// Peak resident set size (KiB).
    pub fn hwm_kib(&self) -> Option<u64> {
        status_kib(self.pid, "VmHWM:")
    }

    /// User + system CPU time so far.
    pub fn cpu(&self) -> Option<Duration> {
        cpu_time(self.pid)
    }

    /// Kills the process and waits for it to exit.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Clock ticks per second for `/proc/<pid>/stat` (from `getconf`, else the usual 100).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at "state".
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / clock_ticks() as f64,
    ))
}

/// CPU time of this process (the harness: load generator and null subscriber).
pub fn own_cpu() -> Option<Duration> {
    cpu_time(std::process::id())
}

/// How to start a Triggerfish server.
#[derive(Debug, Clone)]
pub struct ServerCmd {
    /// The program: the `triggerfish` binary, or this harness (its `serve` role runs
    /// the same `triggerfish::app::start`).
    pub program: PathBuf,
}

impl ServerCmd {
    /// Starts a server with `config_yaml` on `data_dir`.
    pub async fn start(&self, config_yaml: &str, data_dir: &Path) -> anyhow::Result<Child> {
        self.start_with(config_yaml, data_dir, &[]).await
    }

    /// [`ServerCmd::start`] with more `serve` flags.
    pub async fn start_with(
        &self,
        config_yaml: &str,
        data_dir: &Path,
        extra: &[String],
    ) -> anyhow::Result<Child> {
        let config = data_dir.with_extension("yaml");
        std::fs::write(&config, config_yaml)
            .with_context(|| format!("writing {}", config.display()))?;
        let args = [
            "serve",
            "--config",
            &config.to_string_lossy(),
            "--data-dir",
            &data_dir.to_string_lossy(),
            "--listen",
            "127.0.0.1:0",
            "--no-admin",
            "--log",
            "warn",
        ]
        .map(str::to_owned);
        let args: Vec<String> = args.into_iter().chain(extra.iter().cloned()).collect();
        Child::spawn(&self.program, &args).await
    }
}

/// Broker `default/default` and `triggers` triggers, all delivering to `subscriber`;
/// the first matches every bench event (exact `type`), the others never match.
pub fn config_yaml(subscriber: &str, triggers: usize) -> String {
    let mut y = String::from(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default, namespace: default}\n",
    );
    for i in 0..triggers {
        let ty = if i == 0 {
            EVENT_TYPE.to_owned()
        } else {
            format!("dev.triggerfish.other.{i}")
        };
        y.push_str(&format!(
            "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {{name: t{i}, namespace: default}}\nspec:\n  broker: default\n  filter:\n    attributes: {{type: {ty}}}\n  subscriber: {{uri: '{subscriber}'}}\n"
        ));
    }
    y
}

/// Appends `n` bench events (as the ingress would have stored them) to broker
/// `default/default` in `data_dir`, in batches spread round-robin over its partitions.
/// The server must not be running.
pub async fn prefill(data_dir: &Path, n: u64) -> anyhow::Result<()> {
    let log = EmbeddedLog::open(
        data_dir,
        EmbeddedOptions {
            fsync: FsyncPolicy::Never,
            ..EmbeddedOptions::default()
        },
    )
    .context("opening the log to pre-fill")?;
    let broker = log
        .open(
            &BrokerId::new("default", "default"),
            broker::channel::LogKind::Events,
        )
        .await
        .context("opening broker default/default")?;
    let mut next = 0u64;
    while next < n {
        let batch = (next..(next + 256).min(n))
            .map(|i| stored_event(&format!("pre-{i}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        next += batch.len() as u64;
        broker.append(&batch).await.context("pre-filling the log")?;
    }
    Ok(())
}

/// What one closed-loop ingress measurement saw.
pub struct IngressRate {
    /// Accepted events per second.
    pub accepted: f64,
    /// Failed requests per second.
    pub failed: f64,
    /// Server CPU per accepted event, in microseconds.
    pub cpu_us: f64,
}

/// Starts `bin` with `args` (a `serve` command), drives its ingress with `conns`
/// keep-alive connections POSTing the bench event for `warmup` then `measure`, and
/// stops it.
pub async fn ingress_rate(
    bin: &Path,
    args: &[String],
    conns: usize,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<IngressRate> {
    use crate::load::{Generator, Shape, Template};
    let server = Child::spawn(bin, args).await?;
    let g = Generator::start(
        server.addr,
        Template::ingress(server.addr),
        Shape {
            conns,
            rate: None,
            limit: None,
        },
        std::time::Instant::now(),
    );
    tokio::time::sleep(warmup).await;
    let (ok0, failed0, cpu0, t0) = (g.ok(), g.failed(), server.cpu(), std::time::Instant::now());
    tokio::time::sleep(measure).await;
    let dt = t0.elapsed().as_secs_f64();
    let (ok1, failed1, cpu1) = (g.ok(), g.failed(), server.cpu());
    g.finish().await;
    server.stop();
    let cpu_us = match (cpu0, cpu1) {
        (Some(x), Some(y)) if ok1 > ok0 => (y - x).as_secs_f64() * 1e6 / (ok1 - ok0) as f64,
        _ => f64::NAN,
    };
    Ok(IngressRate {
        accepted: (ok1 - ok0) as f64 / dt,
        failed: (failed1 - failed0) as f64 / dt,
        cpu_us,
    })
}

/// Flags shared by the channel comparisons (`nats`, `kafka`).
#[derive(Debug, clap::Args)]
pub struct ChannelLoad {
    /// Concurrent producers (connections / producing tasks).
    #[arg(long, default_value_t = 64)]
    pub conns: usize,
    /// Seconds per measurement, after 1 s of warm-up.
    #[arg(long, default_value_t = 5)]
    pub secs: u64,
    /// The `triggerfish` binary (default: next to this harness).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
}

impl ChannelLoad {
    /// The `triggerfish` binary to start.
    pub fn server_bin(&self) -> anyhow::Result<PathBuf> {
        match &self.server_bin {
            Some(b) => Ok(b.clone()),
            None => Ok(std::env::current_exe()?
                .parent()
                .context("harness directory")?
                .join("triggerfish")),
        }
    }

    /// One measurement window.
    pub fn measure(&self) -> Duration {
        Duration::from_secs(self.secs)
    }
}
