//! `triggerfish status`: every broker and trigger of a running server, as an aligned
//! table (or the admin API's JSON).

use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use crate::cli::{StatusArgs, StatusOutput};

const UNREACHABLE: &str =
    "cannot reach the admin API (is `triggerfish serve` running? --admin URL)";

async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let resp = client.get(url).send().await.context(UNREACHABLE)?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let detail = value
            .get("detail")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        anyhow::bail!("{url}: {status}: {detail}");
    }
    Ok(value)
}

/// Runs `triggerfish status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client =
        triggerfish::admin_auth::client(args.admin_token_file.as_deref(), args.identity.files())?;
    let base = args.admin.trim_end_matches('/');
    let query = match &args.broker {
        Some(b) => format!("?broker={b}"),
        None => String::new(),
    };
    let brokers = get(&client, &format!("{base}/admin/v1/brokers{query}")).await?;
    let triggers = get(&client, &format!("{base}/admin/v1/triggers{query}")).await?;
    match args.output {
        StatusOutput::Json => {
            let all = serde_json::json!({
                "config": brokers.get("config"),
                "brokers": brokers.get("brokers"),
                "triggers": triggers.get("triggers"),
            });
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        StatusOutput::Table => print!("{}", render(&brokers, &triggers)),
    }
    Ok(ExitCode::SUCCESS)
}

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

/// The status of condition `ty`, with its reason when it is not `True`.
fn cond(v: &Value, ty: &str) -> String {
    let Some(c) = v
        .get("conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
        })
    else {
        return "-".to_owned();
    };
    let status = s(c, "status");
    if status == "True" {
        status
    } else {
        format!("{status} ({})", s(c, "reason"))
    }
}

fn age(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".to_owned(),
        Some(s) if s < 1.0 => format!("{}ms", (s * 1000.0) as u64),
        Some(s) if s < 120.0 => format!("{s:.1}s"),
        Some(s) if s < 7200.0 => format!("{}m", (s / 60.0) as u64),
        Some(s) => format!("{}h", (s / 3600.0) as u64),
    }
}

/// Columns padded to their widest cell (the last one left as is).
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|x| x.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The text `triggerfish status` prints.
pub fn render(brokers: &Value, triggers: &Value) -> String {
    let mut out = String::new();
    let config = brokers.get("config").cloned().unwrap_or(Value::Null);
    out.push_str(&format!(
        "config generation {}, Ready {}",
        s(&config, "generation"),
        cond(&config, "Ready")
    ));
    if let Some(r) = config.get("lastReload").filter(|r| !r.is_null()) {
        out.push_str(&format!(
            "; last reload {} ({}, {})",
            s(r, "outcome"),
            s(r, "cause"),
            s(r, "time")
        ));
        if let Some(errors) = r.get("errors").and_then(Value::as_array) {
            for e in errors {
                out.push_str(&format!("\n  {}", e.as_str().unwrap_or_default()));
            }
        }
    }
    out.push_str("\n\n");
    let mut rows = vec![[
        "BROKER",
        "READY",
        "TRIGGERS",
        "PARTITIONS",
        "DISPATCHER",
        "URL",
    ]
    .map(String::from)
    .to_vec()];
    for b in brokers
        .get("brokers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        rows.push(vec![
            format!("{}/{}", s(b, "namespace"), s(b, "name")),
            cond(b, "Ready"),
            s(b, "triggers"),
            s(b, "partitions"),
            cond(b, "DispatcherReady"),
            b.get("address").map_or("-".to_owned(), |a| s(a, "url")),
        ]);
    }
    out.push_str(&table(&rows));
    out.push('\n');
    let mut rows = vec![[
        "TRIGGER",
        "BROKER",
        "READY",
        "LAG",
        "OLDEST",
        "DELIVERED",
        "DEAD-LETTERED",
        "RETRIED",
        "LAST ERROR",
    ]
    .map(String::from)
    .to_vec()];
    for t in triggers
        .get("triggers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let lag = t.get("lag").cloned().unwrap_or(Value::Null);
        let last = match t.get("lastDeliveryError").filter(|e| !e.is_null()) {
            Some(e) => format!(
                "{} {} {}",
                s(e, "time"),
                e.get("status")
                    .filter(|v| !v.is_null())
                    .map_or("-".to_owned(), Value::to_string),
                s(e, "message")
            ),
            None => "-".to_owned(),
        };
        rows.push(vec![
            s(t, "name"),
            s(t, "broker"),
            cond(t, "Ready"),
            s(&lag, "events"),
            age(lag.get("oldestAgeSeconds").and_then(Value::as_f64)),
            s(t, "delivered"),
            s(t, "deadLettered"),
            s(t, "retried"),
            last,
        ]);
    }
    out.push_str(&table(&rows));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_missing_values_show_a_dash() {
        let brokers = serde_json::json!({
            "config": {"generation": 2, "conditions": [{"type": "Ready", "status": "True"}]},
            "brokers": [{"namespace": "default", "name": "orders", "triggers": 2, "partitions": 1,
                "address": {"url": "http://127.0.0.1:8080/default/orders"},
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "DispatcherReady", "status": "True"}]}],
        });
        let triggers = serde_json::json!({"triggers": [
            {"name": "audit", "broker": "default/orders", "conditions": [{"type": "Ready", "status": "True"}],
             "lag": {"events": 0, "oldestAgeSeconds": null}, "delivered": 12, "deadLettered": 0, "retried": 0,
             "lastDeliveryError": null},
            {"name": "gone-for-now", "broker": "default/orders",
             "conditions": [{"type": "Ready", "status": "False", "reason": "Removed"}],
             "lag": {"events": 3, "oldestAgeSeconds": 75.0}, "delivered": 1, "deadLettered": 1, "retried": 4,
             "lastDeliveryError": {"time": "2026-12-03T10:00:00Z", "status": 503, "message": "the subscriber answered 503"}},
        ]});
        let text = render(&brokers, &triggers);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "config generation 2, Ready True");
        let header = lines.iter().position(|l| l.starts_with("TRIGGER")).unwrap();
        let (h, a, g) = (lines[header], lines[header + 1], lines[header + 2]);
        // Every column starts at the same place in each row.
        for col in [
            "BROKER",
            "READY",
            "LAG",
            "OLDEST",
            "DELIVERED",
            "LAST ERROR",
        ] {
            let at = h.find(col).unwrap();
            assert_ne!(&a[at..at + 1], " ", "{col} in {a:?}");
            assert_ne!(&g[at..at + 1], " ", "{col} in {g:?}");
        }
        assert!(a.contains("True") && a.ends_with(" -"), "{a}");
        assert!(g.contains("False (Removed)") && g.contains("75.0s"), "{g}");
        assert!(
            g.ends_with("2026-12-03T10:00:00Z 503 the subscriber answered 503"),
            "{g}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("default/orders  True")),
            "{text}"
        );
    }
}
