//! `triggerfish dlq`: the client of the admin API's dead-letter endpoints.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use crate::cli::{DlqCommand, DlqTarget, RedriveTo};

fn base(t: &DlqTarget) -> anyhow::Result<String> {
    let (ns, name) = t
        .broker
        .split_once('/')
        .with_context(|| format!("--broker '{}' must be NAMESPACE/NAME", t.broker))?;
    Ok(format!(
        "{}/admin/dlq/{ns}/{name}",
        t.admin.trim_end_matches('/')
    ))
}

const UNREACHABLE: &str = "cannot reach the admin API (is `triggerfish serve` running?)";

/// Sends a request; the status and the answer as JSON (or as a JSON string).
async fn call(req: reqwest::RequestBuilder) -> anyhow::Result<(reqwest::StatusCode, Value)> {
    let resp = req.send().await.context(UNREACHABLE)?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, value))
}

fn print(v: &Value) {
    match v {
        Value::String(s) => println!("{s}"),
        v => println!(
            "{}",
            serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
        ),
    }
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Runs one `dlq` subcommand; prints the server's JSON answer (for `redrive`, the
/// final report, with progress on stderr meanwhile).
pub async fn run(cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    let client = triggerfish::admin_auth::client(
        target(&cmd).admin_token_file.as_deref(),
        target(&cmd).identity.files(),
    )?;
    let req = match &cmd {
        DlqCommand::List {
            target,
            limit,
            from,
        } => {
            let mut url = format!("{}?limit={limit}", base(target)?);
            if let Some(f) = from {
                url.push_str(&format!("&from={f}"));
            }
            client.get(url)
        }
        DlqCommand::Show { target, offset } => client.get(format!("{}/{offset}", base(target)?)),
        DlqCommand::Status { target } => client.get(format!("{}/redrive", base(target)?)),
        DlqCommand::Cancel { target } => client.delete(format!("{}/redrive", base(target)?)),
        DlqCommand::Redrive {
            target,
            to,
            trigger,
            batch,
            concurrency,
            background,
        } => {
            let to = match to {
                RedriveTo::Subscriber => "subscriber",
                RedriveTo::Broker => "broker",
            };
            let url = format!("{}/redrive", base(target)?);
            let mut query = vec![
                ("to", to.to_owned()),
                ("batch", batch.to_string()),
                ("concurrency", concurrency.to_string()),
            ];
            if let Some(t) = trigger {
                query.push(("trigger", t.clone()));
            }
            let (status, started) = call(client.post(&url).query(&query)).await?;
            if !status.is_success() || *background {
                print(&started);
                return Ok(exit(status.is_success()));
            }
            let report = follow(&client, &url, started).await?;
            print(&report);
            return Ok(exit(report["state"] == "done"));
        }
    };
    let (status, v) = call(req).await?;
    print(&v);
    Ok(exit(status.is_success()))
}

fn target(cmd: &DlqCommand) -> &DlqTarget {
    match cmd {
        DlqCommand::List { target, .. }
        | DlqCommand::Show { target, .. }
        | DlqCommand::Status { target }
        | DlqCommand::Cancel { target }
        | DlqCommand::Redrive { target, .. } => target,
    }
}

/// Polls a running redrive until it ends, drawing its progress on stderr; Ctrl-C
/// cancels it. Returns the final status.
async fn follow(client: &reqwest::Client, url: &str, first: Value) -> anyhow::Result<Value> {
    let id = first["id"].clone();
    let tty = std::io::stderr().is_terminal();
    let mut progress = Progress {
        tty,
        last_line: None,
    };
    let mut status = first;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut cancelled = false;
    loop {
        progress.show(&status);
        if status["state"] != "running" {
            break;
        }
        tokio::select! {
            _ = &mut ctrl_c, if !cancelled => {
                cancelled = true;
                eprintln!("\ncancelling the redrive (the cursor stays past every entry sent)…");
                let _ = call(client.delete(url)).await;
            }
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let (code, now) = call(client.get(url)).await?;
        if !code.is_success() {
            anyhow::bail!("lost track of the redrive: {now}");
        }
        if now["id"] != id {
            anyhow::bail!("another redrive replaced this one: {now}");
        }
        status = now;
    }
    progress.finish();
    Ok(status)
}

/// The progress line: a bar redrawn in place on a terminal, else a line every 2 s.
struct Progress {
    tty: bool,
    last_line: Option<Instant>,
}

impl Progress {
    fn show(&mut self, s: &Value) {
        let total = s["total"].as_u64().unwrap_or(0);
        let passed = s["passed"].as_u64().unwrap_or(0);
        let skipped = ["other_trigger", "trigger_gone", "undecodable"]
            .iter()
            .map(|k| s["skipped"][k].as_u64().unwrap_or(0))
            .sum::<u64>();
        let line = format!(
            "{passed}/{total} · sent {} · failed again {} · skipped {skipped}",
            s["sent"], s["failed_again"]
        );
        let running = s["state"] == "running";
        if self.tty {
            let width = 30usize;
            let filled = passed
                .saturating_mul(width as u64)
                .checked_div(total)
                .map_or(width, |f| usize::try_from(f).unwrap_or(width).min(width));
            let pct = passed.saturating_mul(100).checked_div(total).unwrap_or(100);
            let bar = format!("{}{}", "#".repeat(filled), "-".repeat(width - filled));
            eprint!("\r[{bar}] {pct:>3}% {line}   ");
            let _ = std::io::stderr().flush();
        } else if !running
            || self
                .last_line
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
        {
            eprintln!("redrive: {line}");
            self.last_line = Some(Instant::now());
        }
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
