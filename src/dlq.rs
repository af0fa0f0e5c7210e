//! `triggerfish dlq`: the client of the admin API's dead-letter endpoints.

use std::process::ExitCode;

use anyhow::Context;

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

/// Runs one `dlq` subcommand; prints the server's JSON answer.
pub async fn run(cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::new();
    let req = match &cmd {
        DlqCommand::List { target, limit } => {
            client.get(format!("{}?limit={limit}", base(target)?))
        }
        DlqCommand::Show { target, offset } => client.get(format!("{}/{offset}", base(target)?)),
        DlqCommand::Redrive {
            target,
            to,
            trigger,
        } => {
            let to = match to {
                RedriveTo::Subscriber => "subscriber",
                RedriveTo::Broker => "broker",
            };
            let mut url = format!("{}/redrive?to={to}", base(target)?);
            if let Some(t) = trigger {
                url.push_str(&format!("&trigger={t}"));
            }
            client.post(url)
        }
    };
    let resp = req
        .send()
        .await
        .context("cannot reach the admin API (is `triggerfish serve` running?)")?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or(text)),
        Err(_) => println!("{text}"),
    }
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
