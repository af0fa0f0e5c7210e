//! `triggerfish-bench`: the load harness of issue 7. One run measures each Triggerfish
//! figure beside a baseline doing the same substrate work on this machine, with the
//! same load generator, the same 1 KiB binary-mode CloudEvent and the same
//! concurrency, and prints a table of figures and ratios (and writes it as JSON).
//!
//! Layout:
//! - `load`: the event, the request templates and the load generator (closed loop or
//!   paced, one keep-alive connection per task);
//! - `sink`: the null subscriber, also the bare 202 baseline server;
//! - `proc`: child processes (`/proc` RSS and CPU), configs, pre-filling a log;
//! - `figures`: R1, R3, R4, R5 and R9, each with its baseline;
//! - `report`: the table and the JSON.
//!
//! The same binary also plays the child roles (hidden subcommands): `serve` (runs
//! `triggerfish::app::start` with `triggerfish serve`'s defaults, so one `cargo run`
//! builds everything), `null-server` (the bare baseline server) and `client-loop` (the
//! R4 baseline). `--server-bin target/release/triggerfish` measures the real binary
//! instead of the `serve` role. `triggerfish-bench nats --url nats://...` compares the
//! ingress on NATS JetStream with raw JetStream publishing (`nats`);
//! `triggerfish-bench kafka --bootstrap HOST:PORT` the ingress on Kafka with a raw
//! rdkafka producer loop (`kafka`). `triggerfish-bench config-scale` measures what a
//! large config costs: start, RSS per idle trigger, reload apply times
//! (`config_scale`).

mod config_scale;
mod figures;
mod kafka;
mod load;
mod nats;
mod proc;
mod report;
mod secure;
mod sink;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::figures::{Harness, Settings};
use crate::load::{Generator, Shape, Template};
use crate::proc::{ServerCmd, MAX_LIFETIME_ENV};

/// Triggerfish load harness: figures and ratios against same-run baselines.
#[derive(Debug, Parser)]
#[command(name = "triggerfish-bench")]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Short run: 2 s per measurement after 1 s of warm-up.
    #[arg(long)]
    quick: bool,
    /// Seconds per measurement (default 5, or 2 with --quick).
    #[arg(long)]
    secs: Option<u64>,
    /// Producer connections (concurrent requests) for R1, R3 and R5.
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Measure this `triggerfish` binary instead of the harness's own `serve` role
    /// (which runs the same library code).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Repetitions of the whole run; the table shows medians (default 3, or 1 with
    /// --quick).
    #[arg(long)]
    repeat: Option<usize>,
    /// Only these figures (comma-separated: r1,r3,r4,r5); R3 uses R1 and R4 for its
    /// baseline and R5 uses R3.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// What a large config costs: start with N triggers, RSS per idle trigger, and
    /// the load and apply time of reloads adding N triggers, one, and changing one
    /// (needs a built `triggerfish` binary).
    ConfigScale(config_scale::ConfigScaleArgs),
    /// Ingress accepted events/s on NATS JetStream beside raw JetStream publishing of
    /// the same payload (needs a nats-server and a built `triggerfish` binary).
    Nats(nats::NatsArgs),
    /// Ingress accepted events/s on Kafka beside a raw rdkafka producer loop of the
    /// same records (needs a Kafka-protocol broker and a built `triggerfish` binary).
    Kafka(kafka::KafkaArgs),
    /// (child role) Triggerfish's server, as `triggerfish serve` runs it.
    #[command(hide = true)]
    Serve(ServeArgs),
    /// (child role) A bare hyper server answering 202.
    #[command(hide = true)]
    NullServer,
    /// (child role) A plain hyper client loop POSTing delivery requests.
    #[command(hide = true)]
    ClientLoop {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        path: String,
        #[arg(long)]
        conns: usize,
        #[arg(long)]
        secs: u64,
    },
    /// (profiling) Sends exactly `--requests` producer requests to an ingress at
    /// `--addr` over `--conns` connections, then prints the rate. With a server under
    /// `perf` or `valgrind --tool=callgrind`, this is a fixed amount of R1 work.
    #[command(hide = true)]
    Load {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 64)]
        conns: usize,
        #[arg(long)]
        requests: u64,
        /// Send the dispatcher's delivery request (to `--path`) instead of the
        /// producer's: the R4 baseline's work, for a fixed request count.
        #[arg(long)]
        delivery_path: Option<String>,
    },
    /// (profiling) Writes the R1/R4 config for `--subscriber` and pre-fills
    /// `--data-dir` with `--events` events, as R4 does before it restarts the server.
    #[command(hide = true)]
    Prefill {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        subscriber: String,
        /// Triggers in the config (0 for R1, 1 for R4).
        #[arg(long, default_value_t = 1)]
        triggers: usize,
        #[arg(long)]
        events: u64,
    },
}

/// The subset of `triggerfish serve`'s flags the harness passes.
#[derive(Debug, Args)]
struct ServeArgs {
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    no_admin: bool,
    #[arg(long, default_value = "warn")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.role {
            None => run(cli.run).await,
            Some(role) => {
                exit_after_max_lifetime();
                match role {
                    Role::ConfigScale(a) => config_scale::run(a).await,
                    Role::Nats(a) => nats::run(a).await,
                    Role::Kafka(a) => kafka::run(a).await,
                    Role::Serve(a) => serve(a).await,
                    Role::NullServer => null_server().await,
                    Role::ClientLoop {
                        addr,
                        path,
                        conns,
                        secs,
                    } => client_loop(addr, &path, conns, secs).await,
                    Role::Load {
                        addr,
                        conns,
                        requests,
                        delivery_path,
                    } => load(addr, conns, requests, delivery_path.as_deref()).await,
                    Role::Prefill {
                        data_dir,
                        subscriber,
                        triggers,
                        events,
                    } => {
                        let yaml = proc::config_yaml(&subscriber, triggers);
                        let config = data_dir.with_extension("yaml");
                        std::fs::write(&config, yaml)
                            .with_context(|| format!("writing {}", config.display()))?;
                        proc::prefill(&data_dir, events).await?;
                        println!("config {}", config.display());
                        Ok(())
                    }
                }
            }
        }
    })
}

/// A child role ends by itself, so nothing outlives a harness that crashed.
fn exit_after_max_lifetime() {
    let secs = std::env::var(MAX_LIFETIME_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(900);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        std::process::exit(3);
    });
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let secs = args.secs.unwrap_or(if args.quick { 2 } else { 5 });
    let me = std::env::current_exe().context("locating the harness binary")?;
    let settings = Settings {
        warmup: Duration::from_secs(1),
        measure: Duration::from_secs(secs),
        conns: args.conns,
        server: ServerCmd {
            program: args.server_bin.clone().unwrap_or_else(|| me.clone()),
        },
        me,
    };
    let want = |id: &str| args.only.is_empty() || args.only.iter().any(|o| o == id);
    eprintln!(
        "triggerfish-bench: {} s per measurement after {} s warm-up, {} producer conns, server: {}",
        secs,
        settings.warmup.as_secs(),
        settings.conns,
        settings.server.program.display()
    );
    let started = Instant::now();
    let repeat = args.repeat.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let mut runs = Vec::with_capacity(repeat);
    for i in 0..repeat {
        eprintln!("run {} of {repeat}", i + 1);
        let r = run_once(&settings, &want).await?;
        eprintln!("{}", r.table());
        runs.push(r);
    }
    let mut report = report::combine(runs);
    report.detail("run_s", json!(started.elapsed().as_secs_f64()));
    println!("{}", report.table());
    if let Some(serde_json::Value::Array(runs)) = report.details.get("runs") {
        for (i, run) in runs.iter().enumerate() {
            println!("run {}: {run}", i + 1);
        }
    }
    for n in &report.notes {
        println!("note: {n}");
    }
    if let Some(path) = &args.json {
        let settings = json!({
            "warmup_s": settings.warmup.as_secs(), "measure_s": secs, "repeat": repeat,
            "producer_conns": settings.conns,
            "dispatch_concurrency": figures::DISPATCH_CONCURRENCY,
            "server": settings.server.program.display().to_string(),
            "payload": "1 KiB binary-mode CloudEvent",
            "placement": "server and baseline servers as child processes; generator and null subscriber in the harness; no pinning",
        });
        let text = serde_json::to_string_pretty(&report.json(settings))?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// One pass over the selected figures.
async fn run_once(
    settings: &Settings,
    want: &dyn Fn(&str) -> bool,
) -> anyhow::Result<report::Report> {
    let mut h = Harness::new(settings.clone()).await?;
    let r1 = if want("r1") {
        eprintln!("R1: ingress vs bare hyper server ...");
        Some(h.r1().await?)
    } else {
        None
    };
    if want("r1s") {
        eprintln!("R1s: R1 with TLS and OIDC on, vs R1 ...");
        h.r1_secure(r1).await?;
    }
    let r4_base = if want("r4") {
        eprintln!("R4: dispatcher from a pre-filled log vs plain client loop ...");
        Some(h.r4().await?)
    } else {
        None
    };
    let r3 = if want("r3") {
        eprintln!("R3: end-to-end, 1 trigger; latency at 50 % ...");
        Some(h.r3(r1, r4_base).await?)
    } else {
        None
    };
    if want("r5") {
        eprintln!("R5/R9: end-to-end, {} triggers ...", figures::MANY_TRIGGERS);
        h.r5(r3).await?;
    }
    Ok(h.close())
}

/// The `serve` role: `triggerfish serve` with its defaults (embedded log, 4
/// partitions, fsync always, 7 d / 4 GiB retention, 1 MiB bodies).
async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    use triggerfish::app::{self, ServerOptions};
    broker::telemetry::init_tracing(false, &a.log);
    let config = broker::config::load(&a.config, &broker::config::LoadOptions::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let opts = ServerOptions {
        config,
        config_path: Some(a.config.clone()),
        load_options: Default::default(),
        watch_config: true,
        advertise_url: None,
        listen: a.listen,
        admin_listen: (!a.no_admin).then(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        admin_auth: Default::default(),
        tls: None,
        admin_tls: None,
        storage: app::Storage::embedded(a.data_dir),
        role: app::Role::Both,
        ingress: Default::default(),
        oidc: None,
        dispatcher: Default::default(),
    };
    let running = app::start(opts, CancellationToken::new()).await?;
    println!("listening on http://{}", running.addr);
    running.wait().await
}

async fn null_server() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on http://{}", listener.local_addr()?);
    let sink = sink::Sink::new(Instant::now());
    sink::serve(listener, sink, CancellationToken::new()).await;
    Ok(())
}

async fn client_loop(addr: SocketAddr, path: &str, conns: usize, secs: u64) -> anyhow::Result<()> {
    // Reports no address of its own; the harness only waits for this line.
    println!("listening on http://{addr}");
    let template = Template::delivery(addr, path)?;
    let g = Generator::start(
        addr,
        template,
        Shape {
            conns,
            rate: None,
            limit: None,
        },
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(secs)).await;
    g.finish().await;
    Ok(())
}

async fn load(
    addr: SocketAddr,
    conns: usize,
    requests: u64,
    delivery_path: Option<&str>,
) -> anyhow::Result<()> {
    let template = match delivery_path {
        Some(path) => Template::delivery(addr, path)?,
        None => Template::ingress(addr),
    };
    let shape = Shape {
        conns,
        rate: None,
        limit: Some(requests),
    };
    let t = Instant::now();
    let g = Generator::start(addr, template, shape, t);
    let stats = g.stats.clone();
    g.join().await;
    let dt = t.elapsed().as_secs_f64();
    let ok = stats.ok.load(std::sync::atomic::Ordering::Relaxed);
    let failed = stats.failed.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{ok} ok, {failed} failed in {dt:.3} s: {:.0} req/s",
        ok as f64 / dt
    );
    Ok(())
}
