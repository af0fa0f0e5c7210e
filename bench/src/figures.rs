//! The figures of issue 7, each beside its baseline from the same run.
//!
//! Placement: Triggerfish and the baseline servers run as child processes; the load
//! generator and the null subscriber run in the harness process. The R4 baseline's
//! client loop runs as a child process too, so in R4 both sides send from a child and
//! the same null subscriber in the harness receives. No CPU pinning: both cores are
//! shared by everything, the same way for a figure and its baseline.
//!
//! Each window: warm-up, then a count over the measurement time, with the child's CPU
//! time over the same window (µs of CPU per event).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::load::{Generator, Shape, Template};
use crate::proc::{config_yaml, own_cpu, prefill, Child, ServerCmd};
use crate::report::{percentiles, Report, Row, Target};
use crate::sink::{self, Sink};

/// Deliveries in flight the dispatcher allows one trigger: 1 partition (the embedded
/// default) ×
/// 100 per partition (`triggerfish.dev/delivery.concurrency` default).
pub const DISPATCH_CONCURRENCY: usize = 100;
/// Triggers in the R5/R9 configuration.
pub const MANY_TRIGGERS: usize = 1000;

/// Run settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Warm-up before each measurement.
    pub warmup: Duration,
    /// Length of each measurement.
    pub measure: Duration,
    /// Producer connections.
    pub conns: usize,
    /// How Triggerfish is started.
    pub server: ServerCmd,
    /// This harness (for its child roles).
    pub me: PathBuf,
}

/// One measurement window.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    /// Events per second of the primary counter.
    rate: f64,
    /// Events per second of the secondary counter.
    rate2: f64,
    /// CPU µs per (primary) event in the measured child.
    child_cpu_us: Option<f64>,
    /// Share of one core the harness used (generator and subscriber).
    harness_cores: Option<f64>,
}

impl Window {
    fn json(&self) -> Value {
        json!({
            "rate": self.rate,
            "rate2": self.rate2,
            "child_cpu_us_per_event": self.child_cpu_us,
            "harness_cores": self.harness_cores,
        })
    }
}

/// Warm-up, then counts over the window; `record` is switched on for the window.
async fn measure(
    s: &Settings,
    count: &dyn Fn() -> [u64; 2],
    child: Option<&Child>,
    record: &dyn Fn(bool),
) -> Window {
    tokio::time::sleep(s.warmup).await;
    let c0 = count();
    let cpu0 = child.and_then(Child::cpu);
    let own0 = own_cpu();
    let t0 = Instant::now();
    record(true);
    tokio::time::sleep(s.measure).await;
    record(false);
    let c1 = count();
    let dt = t0.elapsed().as_secs_f64();
    let n = c1[0].saturating_sub(c0[0]) as f64;
    let cpu = match (cpu0, child.and_then(Child::cpu)) {
        (Some(a), Some(b)) if n > 0.0 => Some((b - a).as_secs_f64() * 1e6 / n),
        _ => None,
    };
    let own = match (own0, own_cpu()) {
        (Some(a), Some(b)) => Some((b - a).as_secs_f64() / dt),
        _ => None,
    };
    Window {
        rate: n / dt,
        rate2: c1[1].saturating_sub(c0[1]) as f64 / dt,
        child_cpu_us: cpu,
        harness_cores: own,
    }
}

fn mib(kib: Option<u64>) -> f64 {
    kib.map_or(f64::NAN, |k| k as f64 / 1024.0)
}

/// The harness: a shared null subscriber and a temp dir for data.
pub struct Harness {
    s: Settings,
    epoch: Instant,
    sink: Arc<Sink>,
    sink_addr: SocketAddr,
    stop: CancellationToken,
    tmp: tempfile::TempDir,
    /// What the run found.
    pub report: Report,
}

impl Harness {
    /// Starts the null subscriber.
    pub async fn new(s: Settings) -> anyhow::Result<Harness> {
        let epoch = Instant::now();
        let sink = Sink::new(epoch);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let sink_addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        tokio::spawn(sink::serve(listener, sink.clone(), stop.clone()));
        let tmp = tempfile::Builder::new()
            .prefix("triggerfish-bench-")
            .tempdir()
            .context("creating a temp dir")?;
        Ok(Harness {
            s,
            epoch,
            sink,
            sink_addr,
            stop,
            tmp,
            report: Report::default(),
        })
    }

    fn data_dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn subscriber(&self, path: &str) -> String {
        format!("http://{}{path}", self.sink_addr)
    }

    fn closed(&self) -> Shape {
        Shape {
            conns: self.s.conns,
            rate: None,
            limit: None,
        }
    }

    /// Drives `target` with the producer request; returns the window (primary:
    /// 2xx responses) and the response times (µs) recorded in it.
    async fn drive_ingress(&self, target: &Child, shape: Shape) -> (Window, Vec<u32>) {
        let g = Generator::start(
            target.addr,
            Template::ingress(target.addr),
            shape,
            self.epoch,
        );
        let w = measure(&self.s, &|| [g.ok(), g.failed()], Some(target), &|on| {
            g.record(on)
        })
        .await;
        (w, g.finish().await)
    }

    /// R1: ingress accept rate vs a bare hyper server answering 202.
    pub async fn r1(&mut self) -> anyhow::Result<f64> {
        let bare = Child::spawn(&self.s.me, &["null-server".to_owned()]).await?;
        let (base, base_lat) = self.drive_ingress(&bare, self.closed()).await;
        let bare_rss = bare.hwm_kib();
        bare.stop();
        let server = self
            .s
            .server
            .start(&config_yaml("", 0), &self.data_dir("r1"))
            .await?;
        let (sut, sut_lat) = self.drive_ingress(&server, self.closed()).await;
        server.stop();
        self.report.rows.push(Row {
            id: "R1",
            what: format!(
                "ingress accepted events/s (embedded log, fsync always, {} conns)",
                self.s.conns
            ),
            figure: sut.rate,
            baseline: Some(base.rate),
            baseline_what: "bare hyper server answering 202".into(),
            unit: "ev/s",
            target: Target::RatioAtLeast(0.7),
        });
        self.report.detail(
            "r1",
            json!({
                "triggerfish": sut.json(), "baseline": base.json(),
                "triggerfish_response_ms": percentiles(sut_lat),
                "baseline_response_ms": percentiles(base_lat),
                "failed_per_s": {"triggerfish": sut.rate2, "baseline": base.rate2},
                "baseline_peak_rss_mib": mib(bare_rss),
            }),
        );
        self.report.rows.push(Row {
            id: "ceiling",
            what: format!(
                "load generator ceiling: generator → bare 202 server, {} conns",
                self.s.conns
            ),
            figure: base.rate,
            baseline: None,
            baseline_what: String::new(),
            unit: "ev/s",
            target: Target::None,
        });
        Ok(sut.rate)
    }

    /// R1s: R1 with TLS and OIDC on ([`crate::secure`]); the baseline is `r1` of
    /// the same run (measured here when not given).
    pub async fn r1_secure(&mut self, r1: Option<f64>) -> anyhow::Result<f64> {
        let plain = match r1 {
            Some(r) => r,
            None => {
                let server = self
                    .s
                    .server
                    .start(&config_yaml("", 0), &self.data_dir("r1s-plain"))
                    .await?;
                let (w, _) = self.drive_ingress(&server, self.closed()).await;
                server.stop();
                w.rate
            }
        };
        let secured = crate::secure::prepare(&self.data_dir("r1s-files"))?;
        let server = self
            .s
            .server
            .start_with(&config_yaml("", 0), &self.data_dir("r1s"), &secured.args)
            .await?;
        let (name, value) = secured.authorization.clone();
        let g = Generator::start_with(
            server.addr,
            Template::ingress(server.addr).with_header(name, value),
            self.closed(),
            self.epoch,
            Some(secured.tls.clone()),
        );
        let w = measure(&self.s, &|| [g.ok(), g.failed()], Some(&server), &|on| {
            g.record(on)
        })
        .await;
        let lat = g.finish().await;
        server.stop();
        if w.rate2 > 0.0 {
            anyhow::bail!(
                "R1s: {:.0} requests/s failed (TLS or token refused?)",
                w.rate2
            );
        }
        self.report.rows.push(Row {
            id: "R1s",
            what: format!(
                "R1 with TLS and OIDC on (ES256 token per request, keep-alive, {} conns)",
                self.s.conns
            ),
            figure: w.rate,
            baseline: Some(plain),
            baseline_what: "R1 of this run (no TLS, no OIDC)".into(),
            unit: "ev/s",
            target: Target::RatioAtLeast(0.8),
        });
        self.report.detail(
            "r1s",
            json!({"triggerfish": w.json(), "response_ms": percentiles(lat), "r1": plain}),
        );
        Ok(w.rate)
    }

    /// R4: dispatcher delivery rate from a pre-filled log vs a plain client loop.
    pub async fn r4(&mut self) -> anyhow::Result<f64> {
        // Baseline: the client loop in a child process, at the dispatcher's concurrency.
        let args = [
            "client-loop".to_owned(),
            "--addr".to_owned(),
            self.sink_addr.to_string(),
            "--path".to_owned(),
            "/r4-baseline".to_owned(),
            "--conns".to_owned(),
            DISPATCH_CONCURRENCY.to_string(),
            "--secs".to_owned(),
            (self.s.warmup + self.s.measure + Duration::from_secs(5))
                .as_secs()
                .to_string(),
        ];
        let client = Child::spawn(&self.s.me, &args).await?;
        let sink = self.sink.clone();
        let base = measure(&self.s, &|| [sink.received(), 0], Some(&client), &|_| {}).await;
        client.stop();

        // Triggerfish: start once so the trigger's checkpoint sits at the (empty) end,
        // stop, pre-fill while stopped, restart and time the catch-up.
        let data = self.data_dir("r4");
        let yaml = config_yaml(&self.subscriber("/r4"), 1);
        self.s.server.start(&yaml, &data).await?.stop();
        let n = ((base.rate * self.s.measure.as_secs_f64()) as u64).clamp(20_000, 500_000);
        let t = Instant::now();
        prefill(&data, n).await?;
        let prefill_s = t.elapsed().as_secs_f64();
        let before = self.sink.received();
        let conns_before = self.sink.connections();
        let started = Instant::now();
        let server = self.s.server.start(&yaml, &data).await?;
        let (lo, hi) = (n / 20, n - n / 20);
        let mut mark_lo = None;
        let mut mark_hi = None;
        let deadline = started + (self.s.measure * 10).max(Duration::from_secs(60));
        while Instant::now() < deadline {
            let got = self.sink.received() - before;
            if mark_lo.is_none() && got >= lo {
                mark_lo = Some((Instant::now(), got, server.cpu()));
            }
            if got >= hi {
                mark_hi = Some((Instant::now(), got, server.cpu()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let rss = server.hwm_kib();
        server.stop();
        let conns_opened = self.sink.connections() - conns_before;
        let (rate, cpu_us) = match (mark_lo, mark_hi) {
            (Some((t0, n0, c0)), Some((t1, n1, c1))) => {
                let events = (n1 - n0) as f64;
                let cpu = match (c0, c1) {
                    (Some(a), Some(b)) => Some((b - a).as_secs_f64() * 1e6 / events),
                    _ => None,
                };
                (events / (t1 - t0).as_secs_f64(), cpu)
            }
            _ => {
                let got = self.sink.received() - before;
                self.report.notes.push(format!(
                    "R4: only {got} of {n} pre-filled events were delivered before the deadline"
                ));
                (got as f64 / started.elapsed().as_secs_f64(), None)
            }
        };
        self.report.rows.push(Row {
            id: "R4",
            what: format!(
                "dispatcher deliveries/s from a pre-filled log ({n} events, 1 trigger, {DISPATCH_CONCURRENCY} in flight = 1 partition × 100)"
            ),
            figure: rate,
            baseline: Some(base.rate),
            baseline_what: format!("plain hyper client loop, {DISPATCH_CONCURRENCY} conns, same requests"),
            unit: "ev/s",
            target: Target::RatioAtLeast(0.7),
        });
        self.report.detail(
            "r4",
            json!({
                "events": n, "prefill_s": prefill_s,
                "measured_between": "5 % and 95 % of the events delivered",
                "triggerfish": {"rate": rate, "child_cpu_us_per_event": cpu_us,
                    "total_s_from_process_start": started.elapsed().as_secs_f64(),
                    "subscriber_connections_opened": conns_opened,
                    "peak_rss_mib": mib(rss)},
                "baseline": base.json(),
            }),
        );
        self.report.rows.push(Row {
            id: "ceiling",
            what: format!(
                "null subscriber ceiling: plain client loop → subscriber, {DISPATCH_CONCURRENCY} conns"
            ),
            figure: base.rate,
            baseline: None,
            baseline_what: String::new(),
            unit: "ev/s",
            target: Target::None,
        });
        Ok(base.rate)
    }

    /// A server with `triggers` triggers driven in a closed loop; returns the window
    /// (primary: deliveries at the subscriber; secondary: accepted by the ingress),
    /// idle RSS before load and peak RSS after (MiB).
    async fn e2e(&self, name: &str, triggers: usize) -> anyhow::Result<(Window, f64, f64)> {
        let yaml = config_yaml(&self.subscriber(&format!("/{name}")), triggers);
        let server = self.s.server.start(&yaml, &self.data_dir(name)).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = mib(server.rss_kib());
        let g = Generator::start(
            server.addr,
            Template::ingress(server.addr),
            self.closed(),
            self.epoch,
        );
        let sink = self.sink.clone();
        let w = measure(
            &self.s,
            &|| [sink.received(), g.ok()],
            Some(&server),
            &|_| {},
        )
        .await;
        g.finish().await;
        let peak = mib(server.hwm_kib());
        server.stop();
        Ok((w, idle, peak))
    }

    /// R3: end-to-end rate with one trigger, then latency at half that rate.
    pub async fn r3(&mut self, r1: Option<f64>, r4_base: Option<f64>) -> anyhow::Result<f64> {
        let (w, idle, peak) = self.e2e("r3", 1).await?;
        // Latency on a fresh server (no backlog from the closed loop), paced at 50 %.
        let yaml = config_yaml(&self.subscriber("/r3-latency"), 1);
        let server = self
            .s
            .server
            .start(&yaml, &self.data_dir("r3-latency"))
            .await?;
        let rate = (w.rate * 0.5).max(1.0);
        let g = Generator::start(
            server.addr,
            Template::ingress(server.addr),
            Shape {
                conns: self.s.conns,
                rate: Some(rate),
                limit: None,
            },
            self.epoch,
        );
        let sink = self.sink.clone();
        let paced = measure(
            &self.s,
            &|| [sink.received(), g.ok()],
            Some(&server),
            &|on| {
                sink.record(on);
                g.record(on);
            },
        )
        .await;
        let ingress_lat = g.finish().await;
        server.stop();
        let lat = percentiles(self.sink.take_latencies());
        let baseline = match (r1, r4_base) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.report.rows.push(Row {
            id: "R3",
            what: format!(
                "end-to-end deliveries/s, 1 trigger, null subscriber, {} producer conns",
                self.s.conns
            ),
            figure: w.rate,
            baseline,
            baseline_what: "min(R1 Triggerfish, R4 baseline)".into(),
            unit: "ev/s",
            target: Target::RatioAtLeast(0.6),
        });
        self.report.detail(
            "r3",
            json!({
                "closed_loop": w.json(),
                "ingress_accepted_per_s": w.rate2,
                "idle_rss_mib": idle, "peak_rss_mib": peak,
                "paced_rate": rate, "paced": paced.json(),
                "e2e_latency_ms": lat,
                "ingress_response_ms_at_paced_rate": percentiles(ingress_lat),
            }),
        );
        Ok(w.rate)
    }

    /// R5 and R9: 1000 triggers of which one matches, against R3; RSS idle and peak.
    pub async fn r5(&mut self, r3: Option<f64>) -> anyhow::Result<()> {
        let (w, idle, peak) = self.e2e("r5", MANY_TRIGGERS).await?;
        self.report.rows.push(Row {
            id: "R5",
            what: format!(
                "end-to-end deliveries/s, {MANY_TRIGGERS} triggers (1 matches, exact type filters)"
            ),
            figure: w.rate,
            baseline: r3,
            baseline_what: "R3 (the same with 1 trigger)".into(),
            unit: "ev/s",
            target: Target::RatioAtLeast(0.8),
        });
        self.report.rows.push(Row {
            id: "R9",
            what: format!("peak RSS, {MANY_TRIGGERS} triggers, under R5 load"),
            figure: peak,
            baseline: None,
            baseline_what: String::new(),
            unit: "MiB",
            target: Target::Below(64.0),
        });
        self.report.rows.push(Row {
            id: "R9",
            what: format!("idle RSS, {MANY_TRIGGERS} triggers (1 s after start)"),
            figure: idle,
            baseline: None,
            baseline_what: String::new(),
            unit: "MiB",
            target: Target::Below(20.0),
        });
        self.report.detail(
            "r5",
            json!({"window": w.json(), "ingress_accepted_per_s": w.rate2,
                "idle_rss_mib": idle, "peak_rss_mib": peak}),
        );
        Ok(())
    }

    /// Stops the null subscriber and removes the temp dir.
    pub fn close(self) -> Report {
        self.stop.cancel();
        self.report
    }
}
