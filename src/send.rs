//! `triggerfish send`: post one CloudEvent, for the quickstart and for scripts.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use broker::event::{self, http as binding, AttrValue, DataKind, Event};
use bytes::Bytes;

use crate::cli::{Mode, SendArgs};

fn build(args: &SendArgs) -> anyhow::Result<Event> {
    let mut e = Event::new();
    e.set_str("specversion", "1.0");
    let id = args.id.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{nanos:x}-{:x}", std::process::id())
    });
    e.set_str("id", id);
    e.set_str("source", &args.source);
    e.set_str("type", &args.ty);
    if let Some(s) = &args.subject {
        e.set_str("subject", s);
    }
    e.set_str(
        "time",
        args.time
            .clone()
            .unwrap_or_else(|| jiff::Timestamp::now().to_string()),
    );
    if let Some(s) = &args.dataschema {
        e.set_str("dataschema", s);
    }
    for ext in &args.extensions {
        let (k, v) = ext
            .split_once('=')
            .with_context(|| format!("--extension '{ext}' must be NAME=VALUE"))?;
        e.set(k, AttrValue::String(v.into()));
    }
    if let Some(data) = &args.data {
        let bytes = match data.strip_prefix('@') {
            Some("-") => {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .context("reading stdin")?;
                buf
            }
            Some(path) => std::fs::read(path).with_context(|| format!("reading {path}"))?,
            None => data.as_bytes().to_vec(),
        };
        let ct = args.content_type.as_deref().unwrap_or("application/json");
        e.set_str("datacontenttype", ct);
        e.set_data(DataKind::Binary, Some(Bytes::from(bytes)));
    } else if let Some(ct) = &args.content_type {
        e.set_str("datacontenttype", ct);
    }
    event::validate(&e).context("the event would not be a valid CloudEvent")?;
    Ok(e)
}

/// Sends the event and prints the response; exits non-zero unless 2xx.
pub async fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let event = build(&args)?;
    let mut headers = http::HeaderMap::new();
    let body = match args.mode {
        Mode::Binary => binding::encode_binary(&event, &mut headers),
        Mode::Structured => binding::encode_structured(&event, &mut headers),
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let resp = client
        .post(&args.to)
        .headers(headers)
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {}", args.to))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    println!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    if !text.is_empty() {
        println!("{text}");
    }
    eprintln!("sent event id {}", event.id());
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
