//! The result of a run: rows of figure, baseline and ratio against a target, printed
//! as a table and written as JSON for tracking.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// How a figure is judged against its target.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// Ratio to the baseline at least this.
    RatioAtLeast(f64),
    /// Figure below this (MiB).
    Below(f64),
    /// Informational.
    None,
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// R1, R3, ...
    pub id: &'static str,
    /// What is measured.
    pub what: String,
    /// Triggerfish's figure.
    pub figure: f64,
    /// Baseline figure, when there is one.
    pub baseline: Option<f64>,
    /// What the baseline is.
    pub baseline_what: String,
    /// Unit of figure and baseline.
    pub unit: &'static str,
    /// Target.
    pub target: Target,
}

impl Row {
    /// Figure ÷ baseline.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b > 0.0).map(|b| self.figure / b)
    }

    /// Whether the target is met (`None` when there is no target).
    pub fn met(&self) -> Option<bool> {
        match self.target {
            Target::RatioAtLeast(t) => self.ratio().map(|r| r >= t),
            Target::Below(t) => Some(self.figure < t),
            Target::None => None,
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::RatioAtLeast(t) => format!("≥ {t}"),
            Target::Below(t) => format!("< {t} {}", self.unit),
            Target::None => "—".into(),
        }
    }
}

/// Everything a run produced.
#[derive(Debug, Default)]
pub struct Report {
    /// The table.
    pub rows: Vec<Row>,
    /// Further figures (latencies, CPU per event, ceilings), by name.
    pub details: serde_json::Map<String, Value>,
    /// Remarks printed under the table.
    pub notes: Vec<String>,
    /// Per row, the lowest and highest ratio over repeated runs.
    pub ratio_ranges: Vec<Option<(f64, f64)>>,
}

fn num(x: f64, unit: &str) -> String {
    if unit == "ev/s" {
        format!("{:.0}", x)
    } else {
        format!("{x:.1}")
    }
}

impl Report {
    /// Records a detail.
    pub fn detail(&mut self, name: &str, v: Value) {
        self.details.insert(name.to_owned(), v);
    }

    /// The table as Markdown.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| id | Triggerfish figure | value | baseline (same run) | value | ratio | ratio range | target | met |\n|---|---|---:|---|---:|---:|---|---|---|\n",
        );
        for (i, r) in self.rows.iter().enumerate() {
            let range = match self.ratio_ranges.get(i) {
                Some(Some((lo, hi))) => format!("{lo:.2}–{hi:.2}"),
                _ => "—".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} {} | {} | {} | {} | {range} | {} | {} |",
                r.id,
                r.what,
                num(r.figure, r.unit),
                r.unit,
                if r.baseline_what.is_empty() {
                    "—"
                } else {
                    &r.baseline_what
                },
                r.baseline
                    .map_or("—".into(), |b| format!("{} {}", num(b, r.unit), r.unit)),
                r.ratio().map_or("—".into(), |x| format!("{x:.2}")),
                r.target_text(),
                match r.met() {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "—",
                }
            );
        }
        s
    }

    /// Everything as JSON.
    pub fn json(&self, settings: Value) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                json!({
                    "id": r.id,
                    "what": r.what,
                    "figure": r.figure,
                    "unit": r.unit,
                    "baseline": r.baseline,
                    "baseline_what": r.baseline_what,
                    "ratio": r.ratio(),
                    "target": r.target_text(),
                    "met": r.met(),
                    "ratio_range": self.ratio_ranges.get(i).copied().flatten(),
                })
            })
            .collect();
        json!({
            "settings": settings,
            "machine": machine(),
            "rows": rows,
            "details": self.details,
            "notes": self.notes,
        })
    }
}

/// CPU count and model, for reading results later.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned());
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "model": model,
    })
}

/// p50, p99 and max of samples (µs), in ms.
pub fn percentiles(mut us: Vec<u32>) -> Value {
    if us.is_empty() {
        return json!(null);
    }
    us.sort_unstable();
    let at = |q: f64| {
        let i = ((us.len() as f64 - 1.0) * q).round() as usize;
        f64::from(us[i.min(us.len() - 1)]) / 1000.0
    };
    json!({
        "samples": us.len(),
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "max_ms": at(1.0),
    })
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Several runs as one: each row's median figure and median baseline, the range of
/// its ratio, and every run's details under `runs`.
pub fn combine(runs: Vec<Report>) -> Report {
    let mut out = Report::default();
    let Some(first) = runs.first() else {
        return out;
    };
    for (i, row) in first.rows.iter().enumerate() {
        let same: Vec<&Row> = runs.iter().filter_map(|r| r.rows.get(i)).collect();
        let mut row = row.clone();
        row.figure = median(same.iter().map(|r| r.figure).collect()).unwrap_or(f64::NAN);
        row.baseline = median(same.iter().filter_map(|r| r.baseline).collect());
        let ratios: Vec<f64> = same.iter().filter_map(|r| r.ratio()).collect();
        let range = (runs.len() > 1 && !ratios.is_empty()).then(|| {
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        });
        out.rows.push(row);
        out.ratio_ranges.push(range);
    }
    let details: Vec<Value> = runs
        .iter()
        .map(|r| Value::Object(r.details.clone()))
        .collect();
    out.detail("runs", Value::Array(details));
    out.notes = runs.into_iter().flat_map(|r| r.notes).collect();
    out
}
